#!/usr/bin/env python3
"""Side-by-side table of one bench/run_all.sh run (stdlib only).

usage: compare.py RESULTS_DIR
Reads kaon.jsonl and kaon_wf.jsonl (kaon-cluster-bench) and peers/*.jsonl
(../shared/bench/peers harnesses) and prints markdown tables with the
issue-4 goals and whether this run met them.
"""
import json
import os
import statistics
import sys


def rows(path):
    if not os.path.exists(path):
        return []
    return [json.loads(l) for l in open(path) if l.strip().startswith("{")]


def med(rs, k):
    xs = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
    return statistics.median(xs) if xs else float("nan")


def yes(ok):
    return "**met**" if ok else "**not met**"


def main():
    d = sys.argv[1]
    k = rows(os.path.join(d, "kaon.jsonl"))
    e = rows(os.path.join(d, "peers", "etcd3.jsonl"))
    get = lambda rs, t: [r for r in rs if r.get("test") == t]
    out = []
    thr, seq, fo = get(k, "throughput"), get(k, "seq_submit"), get(k, "failover_summary")
    econc, eperf, eseq = get(e, "conc"), get(e, "check_perf"), get(e, "seq_leader")
    efo = [r["seconds_to_first_write"] * 1e3 for r in get(e, "failover") if r.get("seconds_to_first_write")]
    out.append("| metric | kaon (3 nodes) | etcd (3 members) | goal | |")
    out.append("|---|---|---|---|---|")
    if thr:
        t = thr[0]
        etcd_best = max([r["ops_per_s"] for r in econc] + [r["writes_per_s"] or 0 for r in eperf] or [float("nan")])
        etcd_txt = "; ".join([f"{r['ops_per_s']:,.0f} puts/s (Python client, 64 in flight)" for r in econc] +
                             [f"{r['writes_per_s']:,} writes/s (etcdctl check perf --load={r['load']})" for r in eperf])
        goal = 2 * etcd_best
        out.append(f"| committed writes/s, 64 concurrent submitters | {t['events_per_s']:,.0f} events/s "
                   f"({t['submits_per_s']:,.0f} submits/s x {t['events_per_submit']:.1f} events) | {etcd_txt or 'n/a'} | "
                   f">= 2 x etcd's best = {goal:,.0f}/s | {yes(t['events_per_s'] >= goal)} |")
        el = "; ".join(f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms" for r in econc)
        out.append(f"| write latency under that load | p50 {t['p50_ms']:.1f} / p99 {t['p99_ms']:.1f} ms | {el or 'n/a'} | - | |")
    if seq:
        s = seq[0]
        el = "; ".join(f"p50 {r['p50_ms']:.2f} / p99 {r['p99_ms']:.2f} ms ({r['ops_per_s']:.0f}/s)" for r in eseq)
        out.append(f"| sequential write latency, one client -> leader | p50 {s['p50_ms']:.2f} / p99 {s['p99_ms']:.2f} ms "
                   f"({s['submits_per_s']:.0f} submits/s) | {el or 'n/a'} | - | |")
    if fo:
        f = fo[0]
        c, l = f["to_commit"], f["to_task_running"]
        ef = (f"median {statistics.median(efo):,.0f} ms (min {min(efo):,.0f}, max {max(efo):,.0f}, n={len(efo)})"
              if efo else "n/a")
        out.append(f"| kill -9 leader -> next commit | median {c['median_ms']:.0f} / p99 {c['p99_ms']:.0f} ms "
                   f"(min {c['min_ms']:.0f}, max {c['max_ms']:.0f}, n={c['n']}) | {ef} | median < 500, p99 < 1,000 ms | "
                   f"{yes(c['median_ms'] < 500 and c['p99_ms'] < 1000)} |")
        if l["n"]:
            out.append(f"| kill -9 leader -> next task launch (TASK_RUNNING recorded) | median {l['median_ms']:.0f} / p99 "
                       f"{l['p99_ms']:.0f} ms (min {l['min_ms']:.0f}, max {l['max_ms']:.0f}, n={l['n']}) | - | "
                       f"median < 1,000, p99 < 2,000 ms | {yes(l['median_ms'] < 1000 and l['p99_ms'] < 2000)} |")
        if "kills_with_relaunched_step" in f:
            out.append(f"| kills whose step needed a second launch attempt | {f['kills_with_relaunched_step']} of "
                       f"{f['kills']} | - | - | |")
    out.append("")
    engines = [("kaon", rows(os.path.join(d, "kaon_wf.jsonl")))]
    for p in ("luigi", "prefect", "airflow"):
        rs = rows(os.path.join(d, "peers", p + ".jsonl"))
        if rs:
            engines.append((p, rs))
    out.append("| engine | chain 100: wall | tasks/s | per-task | link handoff (median) | "
               "fan 1->200->1: wall | tasks/s | per-task | fan-out / fan-in handoff |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    summ = {}
    for name, rs in engines:
        rs = [r for r in rs if not r.get("warmup") and "shape" in r]
        c = [r for r in rs if r["shape"] == "chain"]
        f = [r for r in rs if r["shape"] == "fan"]
        summ[name] = (med(f, "per_task_ms"), med(c, "handoff_ms"))
        out.append(f"| {name} (median of {len(c)}/{len(f)}) | {med(c, 'wall_s'):.2f} s | {med(c, 'tasks_per_s'):.0f} | "
                   f"{med(c, 'per_task_ms'):.1f} ms | {med(c, 'handoff_ms'):.1f} ms | {med(f, 'wall_s'):.2f} s | "
                   f"{med(f, 'tasks_per_s'):.0f} | {med(f, 'per_task_ms'):.1f} ms | "
                   f"{med(f, 'fan_out_handoff_ms'):.0f} / {med(f, 'fan_in_handoff_ms'):.0f} ms |")
    peers = {n: v for n, v in summ.items() if n != "kaon"}
    if "kaon" in summ and peers:
        kf, kc = summ["kaon"]
        best_f = min(v[0] for v in peers.values())
        best_c = min(v[1] for v in peers.values())
        out.append("")
        out.append(f"- fan per-task overhead: kaon {kf:.1f} ms vs fastest peer {best_f:.1f} ms "
                   f"({best_f / kf:.1f}x lower); goal >= 10x lower: {yes(kf * 10 <= best_f)}")
        out.append(f"- chain link handoff: kaon {kc:.1f} ms vs fastest peer {best_c:.1f} ms; "
                   f"goal below the fastest: {yes(kc < best_c)}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
