#!/usr/bin/env python3
"""Prepare: splits the selected users into two cohorts, the global one
(every user, for the Spark model) and one file per region (for the R
models). Outputs the cohorts' paths and the list of regions, which the
pipeline's foreach fans out over.

Usage: prepare.py TABLE RUN_DIR
"""
import csv
import json
import os
import sys


def main():
    table, run_dir = sys.argv[1], sys.argv[2]
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"no users in {table}")
    fields = ["age", "tenure_months", "watch_hours", "engagement"]
    global_cohort = os.path.join(run_dir, "global.csv")
    with open(global_cohort, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    region_dir = os.path.join(run_dir, "regions")
    os.makedirs(region_dir, exist_ok=True)
    regions = sorted({r["region"] for r in rows})
    for region in regions:
        with open(os.path.join(region_dir, f"{region}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(r for r in rows if r["region"] == region)
    print(f"{len(rows)} users: global cohort and {len(regions)} regions {regions}")
    with open(os.environ["KAON_OUTPUTS_FILE"], "w") as f:
        json.dump({"global_cohort": global_cohort, "region_dir": region_dir, "regions": regions}, f)


if __name__ == "__main__":
    main()
