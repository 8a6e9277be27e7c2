#!/usr/bin/env python3
"""User selection: the seed's Hive query, over a generated users table.

The first run creates `users.db` (SQLite) in the work directory with a
deterministic users table (the same seed gives the same users); every run
then selects the active adult users with their features and writes them
as CSV to the run's directory. Outputs: the table's path and its rows.

Usage: select_users.py WORK_DIR RUN_DIR USERS
"""
import csv
import json
import os
import random
import sqlite3
import sys

REGIONS = ["eu", "us", "apac"]

QUERY = """
SELECT id, region, age, tenure_months, watch_hours, engagement
FROM users
WHERE active = 1 AND age BETWEEN 18 AND 80
ORDER BY id
LIMIT ?
"""


def create(db, users):
    rng = random.Random(7)
    db.execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, region TEXT, age INTEGER,"
        " tenure_months INTEGER, watch_hours REAL, active INTEGER, engagement REAL)"
    )
    rows = []
    for i in range(users):
        region = REGIONS[i % len(REGIONS)]
        age = rng.randint(14, 90)
        tenure = rng.randint(1, 120)
        hours = round(rng.uniform(0, 60), 2)
        # Engagement depends on the features, differently per region.
        bias = {"eu": 1.0, "us": 2.0, "apac": 0.5}[region]
        engagement = round(bias + 0.02 * tenure + 0.3 * hours - 0.01 * age + rng.gauss(0, 0.5), 3)
        rows.append((i, region, age, tenure, hours, int(rng.random() < 0.8), engagement))
    db.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()


def main():
    work, run_dir, users = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(work, "users.db")
    fresh = not os.path.exists(path)
    tmp = path + ".tmp"
    if fresh:
        if os.path.exists(tmp):
            os.remove(tmp)
        db = sqlite3.connect(tmp)
        create(db, users)
        db.close()
        os.replace(tmp, path)
    db = sqlite3.connect(path)
    rows = db.execute(QUERY, (users,)).fetchall()
    table = os.path.join(run_dir, "selected.csv")
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "region", "age", "tenure_months", "watch_hours", "engagement"])
        w.writerows(rows)
    print(f"selected {len(rows)} users into {table}")
    with open(os.environ["KAON_OUTPUTS_FILE"], "w") as f:
        json.dump({"table": table, "rows": len(rows)}, f)


if __name__ == "__main__":
    main()
