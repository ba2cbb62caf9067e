#!/usr/bin/env python3
"""Split each process group's CPU into a part per second and a part per event, from benchmark
runs of one scenario at different rates (scripts/perf/marginal-cost).

usage: scripts/lib/cost_fit.py RESULTS.json ...   (each a scripts/perf/bench results file; the
       first scenario of each is used)

For every group, a least-squares fit of its CPU-seconds over each run's window as
`floor × window + per_event × events stored`: the floor (in cores) is what the group spends
while busy whatever the rate (timers, polling, fsync cycles, batches that fill with time rather
than events), the per-event figure what one more event costs. The machine's busy time gets the
same fit, and from it the rate at which the machine's cores would be full. The window is the
machine's CPU-seconds (busy, stolen and idle) over the scenario divided by its core count (from
the results' machine line).

Only sustained runs are fitted: a run whose queue drained for more than DRAIN_LIMIT_S after the
load was storing slower than it accepted, and a machine that full runs its processes at a cost
(contention, larger backlogs) the slower runs do not have; it is listed, not fitted.
"""
import json
import os
import re
import sys

GROUPS = ("postgres", "rabbitmq", "gateway", "consumer", "nginx", "k6")
LABELS = {"k6": "load generator"}
DRAIN_LIMIT_S = 2.0


def machine_cores(data):
    """The cores of the machine that ran the results (their `machine` line), else this one's."""
    found = re.match(r"(\d+) cores", data.get("machine", ""))
    return int(found.group(1)) if found else os.cpu_count() or 1


def load(path):
    with open(path) as results:
        data = json.load(results)
    result = data["results"][0]
    machine = result["machine_cpu_s"]
    cores = machine_cores(data)
    return {
        "file": os.path.basename(path).removesuffix(".json"),
        "scenario": result["scenario"],
        "offered": result["events_per_s_offered"],
        "stored_rate": result["events_per_s_stored"],
        "events": result["events_stored"],
        "drain": result["drain_after_load_s"],
        "probe": result.get("cpu_probe_ms"),
        "cores": cores,
        "window": (machine["busy"] + machine["steal"] + machine["idle"]) / cores,
        "cpu": {**{group: result["processes"].get(group, {}).get("cpu_seconds", 0.0) for group in GROUPS},
                "machine busy": machine["busy"]},
    }


def fit(runs, group):
    """Least squares for cpu = floor * window + per_event * events (two unknowns, no intercept)."""
    ww = sum(run["window"] ** 2 for run in runs)
    we = sum(run["window"] * run["events"] for run in runs)
    ee = sum(run["events"] ** 2 for run in runs)
    wy = sum(run["window"] * run["cpu"][group] for run in runs)
    ey = sum(run["events"] * run["cpu"][group] for run in runs)
    determinant = ww * ee - we * we
    if determinant == 0:
        raise SystemExit("the runs must differ in events per second of window to separate the two parts")
    floor = (wy * ee - ey * we) / determinant
    per_event = (ww * ey - we * wy) / determinant
    worst = max(abs(floor * run["window"] + per_event * run["events"] - run["cpu"][group]) for run in runs)
    return floor, per_event, worst


def main(paths):
    if len(paths) < 2:
        raise SystemExit(__doc__.split("\n\n")[1])
    runs = [load(path) for path in paths]
    if len({run["scenario"] for run in runs}) != 1:
        raise SystemExit("every results file must hold the same scenario")
    if len({run["cores"] for run in runs}) != 1:
        raise SystemExit("every results file must come from a machine with the same number of cores")
    sustained = [run for run in runs if run["drain"] <= DRAIN_LIMIT_S]
    if len(sustained) < 2:
        raise SystemExit(f"fewer than two runs drained within {DRAIN_LIMIT_S} s: nothing sustained to fit")
    print(f"| results file | offered / stored (events/s) | drain (s) | probe (ms) | window (s) | CPU-seconds: "
          f"{' / '.join(LABELS.get(group, group) for group in GROUPS)} / machine busy |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        cpu = " / ".join(f"{run['cpu'][group]:.1f}" for group in (*GROUPS, "machine busy"))
        fitted = "" if run in sustained else " (not sustained: not fitted)"
        print(f"| {run['file']}{fitted} | {run['offered']} / {run['stored_rate']} | {run['drain']} | {run['probe']} | "
              f"{run['window']:.1f} | {cpu} |")
    print()
    print("| process group | floor (cores) | per event stored (µs) | largest miss of the fit (CPU-s) |")
    print("|---|---|---|---|")
    fits = {}
    for group in (*GROUPS, "machine busy"):
        floor, per_event, worst = fit(sustained, group)
        fits[group] = (floor, per_event)
        print(f"| {LABELS.get(group, group)} | {floor:.3f} | {per_event * 1e6:.1f} | {worst:.2f} |")
    cores = runs[0]["cores"]
    floor, per_event = fits["machine busy"]
    print()
    print(f"The machine's {cores} cores are full at about {(cores - floor) / per_event:,.0f} events/s "
          f"(({cores} − {floor:.2f}) / {per_event * 1e6:.1f} µs); 50 000 events/s would need at most "
          f"{(cores - floor) / 50_000 * 1e6:.1f} µs per event with the same floor.")


if __name__ == "__main__":
    main(sys.argv[1:])
