#!/usr/bin/env python3
"""The benchmark driver behind scripts/perf/bench (run that, not this).

For each scenario: runs a k6 script against the target, samples RSS and CPU of every process of
the stack (gateways, consumers, nginx, RabbitMQ, PostgreSQL, k6) twice a second, reconciles the
run with scripts/reconcile, and collects HTTP latency and event rates. Writes
bench/results/<date>.json and .md, the k6 HTML report of each scenario, and a latency-versus-rate
SVG chart of the spike run.
"""
import argparse
import csv
import datetime
import gzip
import json
import os
import pathlib
import platform
import subprocess
import sys
import threading
import time

import reconcile  # scripts/lib/reconcile.py, beside this file: the one accepted-versus-stored check

ROOT = pathlib.Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")
# Which PostgreSQL the run used; scripts/perf/bench sets it for --postgres compose.
POSTGRES = os.environ.get("WARREN_BENCH_POSTGRES", "the machine's server, as it is configured")
PAGE = os.sysconf("SC_PAGE_SIZE")

SCENARIOS = {
    # name: (script, k6 env, events per request, target)
    "batch": ("ingest-batch.js", {"RATE": "400", "BATCH": "100", "VUS": "200"}, 100,
              "≥ 40 000 events/s, p99 < 50 ms, no errors"),
    # The lag target at half the rate: < 100 ms at 20 000 events/s.
    "batch-half": ("ingest-batch.js", {"RATE": "200", "BATCH": "100", "VUS": "100"}, 100,
                   "lag p99 < 100 ms at half the batch target (20 000 events/s)"),
    "single": ("ingest.js", {"RATE": "15000", "VUS": "1500"}, 1, "≥ 15 000 events/s, p99 < 20 ms"),
    "mixed": ("mixed.js", {"RATE": "2000", "VUS": "400"}, 0.9, "90% ingest / 10% queries"),
    "spike": ("spike.js", {"START": "500", "PEAK": "8000", "STEPS": "5", "VUS": "800"}, 1, "find the knee"),
    # Needs the synthetic events of scripts/perf/prefill (scripts/perf/bench --prefill N) for its filters.
    "queries": ("queries.js", {"QUERY_RATE": "500", "INGEST_RATE": "200", "BATCH": "100", "VUS": "200"}, 100,
                "queries p99 < 20 ms at 500 req/s while ingesting 20 000 events/s"),
    # Closed-loop ceilings with wrk (lighter than k6, so more of the 2 cores go to Warren).
    "wrk-single": ("wrk", {"BATCH": "1"}, 1, "≥ 9 000 events/s stored (step), ≥ 15 000 (target), p99 < 20 ms"),
    # The same closed loop with the k6 scenario's events (four types, a subject, three data
    # fields): what single events of several types cost, which coalesce into shared messages.
    "wrk-single-types": ("wrk", {"BATCH": "1", "SHAPE": "k6"}, 1,
                         "single events of four types: compare with wrk-single"),
    "wrk-batch": ("wrk", {"BATCH": "100"}, 100, "≥ 40 000 events/s stored, queue not growing"),
    # The batch target with the light generator: wrk paced at 400 requests/s of 100 events shaped
    # like the k6 batch scenario's (four types, a subject), an open loop like k6's.
    "wrk-batch-rate": ("wrk", {"BATCH": "100", "RATE": "400", "SHAPE": "k6"}, 100,
                       "≥ 40 000 events/s stored, lag p99 < 250 ms, queue not growing"),
    # The queries scenario with wrk as the generator: k6 took 0.4 of the two cores there, more
    # than any one process of Warren. 500 queries/s (one paced wrk per filter shape, so each shape
    # has its own latency) beside 20 000 events/s in batches of 100. Needs --prefill.
    "wrk-queries": ("wrk", {"BATCH": "100", "RATE": "200", "SHAPE": "k6", "QUERY_RATE": "500"}, 100,
                    "queries p99 < 20 ms per shape at 500 req/s, none late, while ingesting 20 000 events/s"),
}

# The filter shapes of loadtest/wrk/queries.lua (and loadtest/queries.js).
QUERY_KINDS = ["type", "type_prefix", "source", "subject", "window", "type_window"]
# Connections of each shape's wrk: enough that a paced request always finds one free.
WRK_QUERY_CONNECTIONS = 16

# Events/s that batch and wrk-batch-rate offer instead of their 40 000 (--batch-rate), to find
# the rate storage sustains; set by main().
BATCH_RATE = None
# Single events/s wrk-single offers, paced, instead of its closed loop (--single-rate); set by main().
SINGLE_RATE = None

# wrk's connections for the ingest scenarios (--wrk-connections): a closed loop at 64 connections
# is bounded by its latency (64 requests in flight), not by the stack's capacity.
WRK_CONNECTIONS = 64
WRK_THREADS = 2

# The wrk scripts (Lua), beside the k6 ones.
WRK_DIR = ROOT / "loadtest" / "wrk"


def stack_groups(stack_dir, k6_pids):
    """Process groups to watch: name -> list of pids (re-read every sample for new backends)."""
    groups = {}
    table = process_table()
    processes = pathlib.Path(stack_dir) / "processes"
    if processes.exists():
        for line in processes.read_text().split("\n"):
            if line.strip():
                name, pid, _ = line.split()
                kind = name.split("-")[0]
                groups.setdefault(kind, []).append(int(pid))
                if kind == "nginx":
                    groups["nginx"] += [child for child, (parent, _) in table.items() if parent == int(pid)]
    groups["rabbitmq"] = matching(table, "beam.smp")
    # scripts/perf/bench --postgres compose names its private cluster's processes warren-bench.
    groups["postgres"] = matching(table, os.environ.get("WARREN_BENCH_PG_PATTERN", "postgres"))
    if k6_pids:
        groups["k6"] = list(k6_pids)
    return groups


def process_table():
    """pid -> (parent pid, command line) of every process, read from /proc in this process: the
    sampler runs every half second on the cores it measures, and three pgrep processes per sample
    cost about 3% of the machine (seen in `perf record -a` during a bench run)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = pathlib.Path(entry.path, "stat").read_text()
            command = pathlib.Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(entry.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), command)
    return table


def matching(table, pattern):
    """Pids whose command line contains `pattern` (what `pgrep -f` matched, for a plain word)."""
    return [pid for pid, (_, command) in table.items() if pattern in command and pid != os.getpid()]


def read_proc(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        rss = int(pathlib.Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        return cpu, rss
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu():
    """The whole machine's CPU seconds so far (/proc/stat, summed over cores): busy (user, nice,
    system, interrupts), steal (taken by the hypervisor for other guests) and idle (with iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return {"busy": (user + nice + system + irq + softirq) / TICK, "steal": steal / TICK, "idle": (idle + iowait) / TICK}


def cpu_probe_ms():
    """Milliseconds a fixed single-threaded loop takes (the best of three), run just before a
    scenario while the stack is idle: how fast this VM's core is at that moment, since a shared
    VM's speed drifts between runs minutes apart and the tail latencies follow it."""
    best = None
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i * i % 7
        elapsed = (time.perf_counter() - started) * 1000
        best = elapsed if best is None else min(best, elapsed)
    return round(best, 1)


WAL_SQL = ("SELECT wal_records, wal_fpi, wal_bytes, checkpoints_timed + checkpoints_req "
           "FROM pg_stat_wal, pg_stat_bgwriter")


def postgres_wal(db_url):
    """PostgreSQL's WAL counters so far (the whole server's): records, full-page images, bytes and
    checkpoints; None when they cannot be read."""
    value = psql_value(db_url, WAL_SQL) if db_url else None
    try:
        records, images, written, checkpoints = (int(part) for part in value.split("|"))
    except (AttributeError, ValueError):
        return None
    return {"records": records, "full_page_images": images, "bytes": written, "checkpoints": checkpoints}


class Sampler(threading.Thread):
    """Peak RSS (summed over a group's processes) and CPU seconds used during the run, the whole
    machine's busy, steal and idle seconds over the same time, PostgreSQL's WAL written over it,
    and the CPU probe taken when it is made (before the load starts)."""

    def __init__(self, stack_dir, db_url=None):
        super().__init__(daemon=True)
        self.probe_ms = cpu_probe_ms()
        self.stack_dir = stack_dir
        self.db_url = db_url
        self.wal_start = None
        self.wal_end = None
        self.k6_pids = []  # the load generator's processes
        self.stop = threading.Event()
        self.first_cpu = {}
        self.last_cpu = {}
        self.peak_rss = {}
        self.machine_start = None
        self.machine_end = None

    def run(self):
        self.machine_start = machine_cpu()
        self.wal_start = postgres_wal(self.db_url)
        while not self.stop.is_set():
            for group, pids in stack_groups(self.stack_dir, self.k6_pids).items():
                total_rss = 0
                for pid in pids:
                    sample = read_proc(pid)
                    if sample is None:
                        continue
                    cpu, rss = sample
                    total_rss += rss
                    key = (group, pid)
                    self.first_cpu.setdefault(key, cpu if group != "k6" else 0.0)
                    self.last_cpu[key] = cpu
                self.peak_rss[group] = max(self.peak_rss.get(group, 0), total_rss)
            time.sleep(0.5)
        self.machine_end = machine_cpu()
        self.wal_end = postgres_wal(self.db_url)

    def report(self):
        cpu = {}
        for (group, pid), last in self.last_cpu.items():
            cpu[group] = cpu.get(group, 0.0) + last - self.first_cpu[(group, pid)]
        return {group: {"peak_rss_mib": round(self.peak_rss.get(group, 0) / 2**20, 1),
                        "cpu_seconds": round(cpu.get(group, 0.0), 1)}
                for group in sorted(set(self.peak_rss) | set(cpu))}

    def machine(self):
        """The results' `machine_cpu_s` (busy, steal and idle CPU seconds between start and stop),
        `cpu_probe_ms` and `postgres_wal` (what the server's WAL counters grew by)."""
        spent = {}
        if self.machine_start and self.machine_end:
            spent = {kind: round(self.machine_end[kind] - self.machine_start[kind], 1) for kind in self.machine_start}
        wal = None
        if self.wal_start and self.wal_end:
            wal = {key: self.wal_end[key] - self.wal_start[key] for key in self.wal_start}
        return {"machine_cpu_s": spent, "cpu_probe_ms": self.probe_ms, "postgres_wal": wal}


def psql_value(db_url, sql):
    done = subprocess.run(["psql", db_url, "-AtXqc", sql], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def last_stored_at(db_url, source):
    """When the last event of `source` was written (Unix seconds, PostgreSQL's clock), or None."""
    value = psql_value(db_url, f"SELECT extract(epoch FROM max(stored_at)) FROM events WHERE source_id = (SELECT id FROM event_sources WHERE source = '{source}')")
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def wrk_ms(text, label):
    """A latency from wrk's output (`99% 12.34ms`, `Max 1.2s`) in milliseconds."""
    import re
    match = re.search(rf"{re.escape(label)}\s+([0-9.]+)(us|ms|s)\b", text)
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2)
    return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)


def wrk_max_ms(text):
    """The Max column of wrk's `Latency  avg  stdev  max  +/-` line, in milliseconds."""
    import re
    match = re.search(r"Latency\s+\S+\s+\S+\s+([0-9.]+)(us|ms|s)\b", text)
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2)
    return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)


def run_wrk(name, env, target, duration, stack_dir, out_dir, env_extra, db_url):
    """wrk at WRK_CONNECTIONS connections for `duration` seconds (paced when `env` has a RATE),
    then the stored events of the run counted until the count stops growing (the consumers
    caught up)."""
    import re
    per_request = SCENARIOS[name][2]
    tag = f"bench-{name}-{int(time.time())}"
    env = {**os.environ, **env_extra, "RUN_TAG": tag, "WRK_BATCH": env["BATCH"], "WRK_THREADS": str(WRK_THREADS),
           "WRK_RATE": env.get("RATE", "0"), "WRK_SHAPE": env.get("SHAPE", "")}
    source = f"/wrk/{tag}"
    count_sql = f"SELECT count(*) FROM events WHERE source_id = (SELECT id FROM event_sources WHERE source = '{source}')"
    rows_before = int(psql_value(db_url, "SELECT count(*) FROM events") or 0) if env_query_rate(name) else None
    sampler = Sampler(stack_dir, db_url)
    sampler.start()
    started = time.time()
    process = subprocess.Popen(["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration}s", "--latency",
                                "-s", str(WRK_DIR / "ingest.lua"), f"{target}/v1/events"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    readers = start_query_wrks(env_query_rate(name), target, duration, env_extra) if env_query_rate(name) else []
    sampler.k6_pids = [process.pid] + [reader.pid for reader in readers]
    output, _ = process.communicate()
    query_outputs = [reader.communicate()[0] for reader in readers]
    load_seconds = time.time() - started
    # Stored: poll until the count has not grown for 3 s (at most 180 s after the load).
    stored, last_growth, still = 0, time.time(), 0
    while time.time() - last_growth < 3 and time.time() - started < load_seconds + 180:
        now = int(psql_value(db_url, count_sql) or 0)
        if now > stored:
            stored, last_growth = now, time.time()
        time.sleep(0.5)
    sampler.stop.set()
    sampler.join()
    (out_dir / f"{name}-wrk.txt").write_text(output + "".join(query_outputs))
    requests = int(re.search(r"(\d+) requests in", output).group(1)) if re.search(r"(\d+) requests in", output) else 0
    non_2xx = int(re.search(r"Non-2xx or 3xx responses: (\d+)", output).group(1)) if "Non-2xx" in output else 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(n) for n in socket.groups()) if socket else 0
    accepted = (requests - non_2xx) * per_request
    rows, distinct = reconcile.stored_totals(db_url, source)
    lag = reconcile.lag_ms(db_url, source)
    stored_seconds = max((last_stored_at(db_url, source) or last_growth) - started, 1)
    queries = query_results(query_outputs)
    return {
        "scenario": name, "run_tag": tag, "seconds": round(load_seconds, 1), "tool": "wrk",
        "connections": WRK_CONNECTIONS, "requests": requests,
        "failed_requests": non_2xx + socket_errors + queries.get("query_errors", 0),
        "refused_by_status": {label: count for label, count in (("non-2xx", non_2xx), ("socket errors", socket_errors),
                                                                ("query errors", queries.get("query_errors", 0))) if count},
        # For wrk-queries: queries sent behind their slot (k6 would have dropped or delayed them).
        "dropped_iterations": queries.get("queries_late", "-"),
        "http_ms": {"med": wrk_ms(output, "50%"), "p(95)": "-", "p(99)": wrk_ms(output, "99%"),
                    "max": wrk_max_ms(output)},
        "query_ms": queries.get("query_ms"), "queries": queries.get("queries"),
        "query_kinds_ms": queries.get("query_kinds_ms", {}), "query_errors": queries.get("query_errors"),
        "processes": sampler.report(), **sampler.machine(), "k6_exit": process.returncode, "rows_before": rows_before,
        "events_per_s_offered": int(env["WRK_RATE"]) * per_request if env["WRK_RATE"] != "0" else "closed loop",
        "events_per_s_accepted": round(accepted / max(load_seconds, 1)),
        "events_per_s_stored": round(stored / stored_seconds), "events_stored": stored,
        "drain_after_load_s": round(max(stored_seconds - load_seconds, 0), 1),
        "reconcile": {**reconcile.by_count(accepted, rows, distinct), "lag_ms": lag},
        "lag_p99_ms_by_5s": reconcile.lag_by_window(db_url, source),
    }


def env_query_rate(name):
    """Queries/s a wrk scenario offers beside its ingest (0: none)."""
    return int(SCENARIOS[name][1].get("QUERY_RATE", "0"))


def start_query_wrks(rate, target, duration, env_extra):
    """One paced wrk per filter shape, `rate` queries/s over all of them."""
    readers = []
    for index, kind in enumerate(QUERY_KINDS):
        share = rate // len(QUERY_KINDS) + (1 if index < rate % len(QUERY_KINDS) else 0)
        env = {**os.environ, **env_extra, "WRK_KIND": kind, "WRK_RATE": str(share), "WRK_THREADS": "1"}
        readers.append(subprocess.Popen(
            ["wrk", "-t1", f"-c{WRK_QUERY_CONNECTIONS}", f"-d{duration}s", "--latency",
             "-s", str(WRK_DIR / "queries.lua"), f"{target}/v1/events"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return readers


def query_results(outputs):
    """The RESULT lines of loadtest/wrk/queries.lua: per shape, and over all shapes (the worst
    shape's p99 and max; the median of the shapes' medians, as wrk keeps no shared histogram)."""
    import re
    kinds = {}
    for output in outputs:
        match = re.search(r"^RESULT (.*)$", output, re.M)
        if not match:
            kinds[f"unreported ({output.strip()[-200:]})"] = None
            continue
        fields = dict(pair.split("=", 1) for pair in match.group(1).split())
        kinds[fields["kind"]] = {"med": float(fields["p50"]), "p(95)": "-", "p(99)": float(fields["p99"]),
                                 "max": float(fields["max"]), "requests": int(fields["requests"]),
                                 "late": int(fields["late"]), "behind_max_ms": float(fields["behind_max_ms"]),
                                 "errors": int(fields["errors"])}
    if not kinds:
        return {}
    reported = [k for k in kinds.values() if k]
    if len(reported) < len(kinds):
        return {"query_kinds_ms": kinds, "queries": sum(k["requests"] for k in reported),
                "query_ms": {"med": "-", "p(95)": "-", "p(99)": "unreported", "max": "-"}}
    medians = sorted(k["med"] for k in reported)
    return {
        "query_kinds_ms": kinds,
        "queries": sum(k["requests"] for k in reported),
        "queries_late": sum(k["late"] for k in reported),
        "query_errors": sum(k["errors"] for k in reported),
        "query_ms": {"med": medians[len(medians) // 2], "p(95)": "-",
                     "p(99)": max(k["p(99)"] for k in reported), "max": max(k["max"] for k in reported)},
    }


def run_scenario(name, target, duration, stack_dir, out_dir, env_extra, db_url):
    script, env, per_request, _ = SCENARIOS[name]
    if name in ("batch", "wrk-batch-rate") and BATCH_RATE:
        env = {**env, "RATE": str(BATCH_RATE // 100)}
    if name == "wrk-single" and SINGLE_RATE:
        env = {**env, "RATE": str(SINGLE_RATE)}
    if script == "wrk":
        return run_wrk(name, env, target, duration, stack_dir, out_dir, env_extra, db_url)
    tag = f"bench-{name}-{int(time.time())}"
    log = out_dir / f"{tag}.log"
    summary = out_dir / f"{tag}-summary.json"
    env = {**os.environ, **env, **env_extra, "BASE_URL": target, "RUN_TAG": tag,
           "K6_WEB_DASHBOARD": "true", "K6_WEB_DASHBOARD_PORT": "-1",
           "K6_WEB_DASHBOARD_EXPORT": str(out_dir / f"{name}-report.html")}
    if name == "spike":
        env["STAGE"] = f"{max(2, duration // 5)}s"
    else:
        env["DURATION"] = f"{duration}s"
    command = ["k6", "run", "-q", "--no-color", f"--log-output=file={log}", "--log-format=raw",
               "--summary-trend-stats=avg,med,p(95),p(99),max", f"--summary-export={summary}",
               str(ROOT / "loadtest" / script)]
    if name == "spike":
        command[3:3] = [f"--out=csv={out_dir / 'spike.csv.gz'}"]
    rows_before = None
    if db_url:
        count = subprocess.run(["psql", db_url, "-Atc", "SELECT count(*) FROM events"], capture_output=True, text=True)
        rows_before = int(count.stdout) if count.returncode == 0 and count.stdout.strip().isdigit() else None
    log_offsets = {path: path.stat().st_size for path in (pathlib.Path(stack_dir) / "logs").glob("*.log")}
    sampler = Sampler(stack_dir, db_url)
    sampler.start()
    started = time.time()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler.k6_pids = [process.pid]
    _, stderr = process.communicate()
    elapsed = time.time() - started
    time.sleep(3)  # let the consumers drain before sampling stops and reconciling starts
    sampler.stop.set()
    sampler.join()
    metrics = json.loads(summary.read_text())["metrics"] if summary.exists() else {}

    def metric(key, field, default=0):
        return metrics.get(key, {}).get(field, default)

    requests = metric("http_reqs", "count")
    failed = metric("http_req_failed", "value", 0) * requests if "http_req_failed" in metrics else 0
    duration_key = "http_req_duration{name:ingest}" if "http_req_duration{name:ingest}" in metrics else "http_req_duration"
    result = {
        "scenario": name, "run_tag": tag, "seconds": round(elapsed, 1),
        "requests": requests, "failed_requests": round(failed),
        "refused_by_status": refused_by_status(log),
        "dropped_iterations": metric("dropped_iterations", "count"),
        "http_ms": {k: round(metric(duration_key, k), 2) for k in ("med", "p(95)", "p(99)", "max")},
        "query_ms": {k: round(metric("http_req_duration{name:query}", k), 2) for k in ("med", "p(95)", "p(99)", "max")}
        if "http_req_duration{name:query}" in metrics else None,
        "queries": metric("http_reqs{name:query}", "count") if "http_reqs{name:query}" in metrics else None,
        # Per filter shape (queries.js tags each request with its kind).
        "query_kinds_ms": {key[len("http_req_duration{kind:"):-1]: {k: round(metric(key, k), 2) for k in ("med", "p(95)", "p(99)", "max")}
                           for key in sorted(metrics) if key.startswith("http_req_duration{kind:")},
        "processes": sampler.report(), **sampler.machine(),
        "k6_exit": process.returncode,
        "rows_before": rows_before,
    }
    # Ingest scenarios pace RATE requests/s; the queries scenario paces INGEST_RATE batches/s
    # beside its queries. Neither key is in every scenario's settings.
    if "RATE" in env:
        offered_rate = int(env["RATE"]) * per_request
    elif "INGEST_RATE" in env:
        offered_rate = int(env["INGEST_RATE"]) * int(env.get("BATCH", "1"))
    else:
        offered_rate = None
    result["events_per_s_offered"] = offered_rate
    if db_url:
        checked = subprocess.run([str(ROOT / "scripts" / "reconcile"), tag, "--log", str(log), "--db", db_url, "--json", "--wait", "60"],
                                   capture_output=True, text=True)
        try:
            reconciled = json.loads(checked.stdout)
        except json.JSONDecodeError:
            reconciled = {"error": (checked.stderr or checked.stdout).strip()[:300]}
        result["reconcile"] = reconciled
        if "accepted" in reconciled:
            # Stored rate: everything stored, over the time from the first request until the
            # last row of the run was written (reconcile waited for the consumers to finish).
            last_stored = last_stored_at(db_url, f"/loadtest/{tag}")
            stored_after = (last_stored or time.time()) - started
            result["events_per_s_accepted"] = round(reconciled["accepted"] / max(elapsed, 1))
            result["events_per_s_stored"] = round(reconciled["stored"] / max(stored_after, 1))
            result["events_stored"] = reconciled["stored"]
            result["drain_after_load_s"] = round(max(stored_after - elapsed, 0), 1)
    else:
        accepted = sum(int(line.split()[-1]) for line in log.read_text(errors="replace").splitlines()
                       if "ACCEPTED " in line) if log.exists() else 0
        result["events_per_s_accepted"] = round(accepted / max(elapsed, 1))
    warnings = stack_warnings(stack_dir, log_offsets)
    if warnings:
        (out_dir / f"{name}-warnings.txt").write_text(warnings)
        result["warnings_log"] = f"{out_dir.name}/{name}-warnings.txt"
    if process.returncode not in (0, 99):  # 99: thresholds crossed, which the table shows anyway
        result["k6_error"] = stderr.strip()[-400:]
    return result


def failed_cell(result):
    """Failed requests, with their statuses when any: `6 (503: 6)`."""
    statuses = result.get("refused_by_status") or {}
    detail = ", ".join(f"{status}: {count}" for status, count in statuses.items())
    return f"{result['failed_requests']} ({detail})" if detail else str(result["failed_requests"])


def refused_by_status(log):
    """How many ingest requests got each non-202 status (lib.js logs `REFUSED <status> ...`)."""
    counts = {}
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if "REFUSED " in line:
                status = line.split("REFUSED ", 1)[1].split()[0]
                counts[status] = counts.get(status, 0) + 1
    return dict(sorted(counts.items()))


def stack_warnings(stack_dir, offsets, limit=200):
    """The WARN and ERROR lines every stack process logged during the scenario (at most `limit`
    per process), so a failed request can be explained after the stack is gone."""
    kept = []
    for path in sorted((pathlib.Path(stack_dir) / "logs").glob("*.log")):
        with path.open(errors="replace") as handle:
            handle.seek(offsets.get(path, 0))
            lines = [line for line in handle.read().splitlines()
                     if '"level":"WARN"' in line or '"level":"ERROR"' in line or "[error]" in line or "[warn]" in line]
        kept += [f"{path.name}: {line}" for line in lines[:limit]]
        if len(lines) > limit:
            kept.append(f"{path.name}: ... {len(lines) - limit} more")
    return "\n".join(kept) + ("\n" if kept else "")


def spike_chart(csv_path, svg_path):
    """Latency p99 and p50 against the request rate, one point per second of the spike run."""
    per_second = {}
    with gzip.open(csv_path, "rt") as handle:
        for row in csv.DictReader(handle):
            if row.get("metric_name") != "http_req_duration":
                continue
            second = int(float(row["timestamp"]))
            per_second.setdefault(second, []).append(float(row["metric_value"]))
    points = []
    for second in sorted(per_second)[1:-1]:
        values = sorted(per_second[second])
        points.append((len(values), values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))]))
    if not points:
        return None
    width, height, margin = 720, 400, 60
    max_rate = max(p[0] for p in points) * 1.05
    max_ms = max(p[2] for p in points) * 1.1
    x = lambda rate: margin + (width - 2 * margin) * rate / max_rate
    y = lambda ms: height - margin - (height - 2 * margin) * ms / max_ms
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">Spike: latency versus request rate (one point per second)</text>',
             f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>',
             f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">requests per second answered</text>',
             f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" text-anchor="middle">latency (ms)</text>']
    for tick in range(6):
        rate, ms = max_rate * tick / 5, max_ms * tick / 5
        parts.append(f'<text x="{x(rate)}" y="{height - margin + 15}" text-anchor="middle">{rate:.0f}</text>')
        parts.append(f'<text x="{margin - 5}" y="{y(ms) + 4}" text-anchor="end">{ms:.0f}</text>')
    for index, color, label in ((2, "crimson", "p99"), (1, "steelblue", "p50")):
        for rate, *latencies in points:
            parts.append(f'<circle cx="{x(rate):.1f}" cy="{y(latencies[index - 1]):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{width - margin - 40}" y="{margin + 15 * index}" fill="{color}">● {label}</text>')
    parts.append("</svg>")
    svg_path.write_text("\n".join(parts))
    return svg_path


def markdown(results, peer_results, machine, date, note=""):
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    # A results file must say when the code measured was not the commit it names.
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
                             capture_output=True, text=True).stdout.rstrip()
    if commit and changed:
        commit += " with uncommitted changes to " + ", ".join(line[3:] for line in changed.splitlines())
    # Settings the caller exported pass through scripts/stack to every gateway and consumer.
    own = {"WARREN_STACK_DIR", "WARREN_DATABASE_URL", "WARREN_AMQP_PREFIX", "WARREN_LOG"}
    settings = sorted(f"{name}={value}" for name, value in os.environ.items()
                      if name.startswith("WARREN_") and name not in own and not name.startswith("WARREN_BENCH_")
                      and not name.endswith(("_KEY", "_KEYS")))
    if settings:
        note = (note + "; " if note else "") + "set for every gateway and consumer: " + ", ".join(settings)
    lines = [f"# Warren benchmark, {date}", "", f"Machine: {machine}", "", f"Commit: {commit or 'unknown'}", "",
             *([f"Run: {note}.", ""] if note else []),
             "Every process (gateways, consumers, nginx, RabbitMQ, PostgreSQL and the k6 load generator) shares this machine.",
             f"PostgreSQL: {POSTGRES}.",
             "Figures from k6 (HTTP) and scripts/reconcile (events, lag).", "",
             "| scenario | target | events/s offered | events/s accepted | events/s stored | HTTP p50 / p95 / p99 (ms) | lag p50 / p99 (ms) | failed requests | dropped iterations | missing | duplicates |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        reconciled = result.get("reconcile", {})
        lag = reconciled.get("lag_ms", {})
        http = result["http_ms"]
        lines.append(
            f"| {result['scenario']} | {SCENARIOS[result['scenario']][3]} | {result.get('events_per_s_offered') or 'ramp'} | "
            f"{result.get('events_per_s_accepted', '?')} | {result.get('events_per_s_stored', '?')} | "
            f"{http['med']} / {http['p(95)']} / {http['p(99)']} | {lag.get('p50')} / {lag.get('p99')} | "
            f"{failed_cell(result)} | {result['dropped_iterations']} | {reconciled.get('missing', '?')} | {reconciled.get('duplicates', '?')} |")
    wrk_runs = [r for r in results if r.get("tool") == "wrk"]
    if wrk_runs:
        lines += ["", f"wrk runs: {WRK_THREADS} threads, {WRK_CONNECTIONS} connections, unique events, a closed loop "
                      "unless an offered rate is shown (then paced to it, an open loop); "
                      "stored counted in PostgreSQL until it stopped growing; the \"k6\" column below is wrk."]
        if any(r.get("query_kinds_ms") for r in wrk_runs):
            lines += ["", f"wrk-queries: beside the ingest wrk, one wrk per filter shape ({WRK_QUERY_CONNECTIONS} "
                          "connections, paced); its \"dropped iterations\" are the queries sent behind their slot, "
                          "and its query p99 is the worst shape's."]
    drained = [r for r in results if "drain_after_load_s" in r]
    if drained:
        lines += ["", "Stored rate: the run's events over the time from its first request to its last row's `stored_at`. "
                      "Drain after the load (last row stored minus end of load): "
                  + ", ".join(f"{r['scenario']} {r['drain_after_load_s']} s" for r in drained)
                  + " (a drain of more than a second or two means the queue grew: accepted faster than stored)."]
    windows = [r for r in results if r.get("lag_p99_ms_by_5s")]
    if windows:
        lines += ["", "Lag p99 (ms) by 5 seconds of receive time, first to last (a tail from a few of them is a "
                      "pause, one spread over all of them is the load): "
                  + "; ".join(f"{r['scenario']} " + " / ".join(str(v) for v in r["lag_p99_ms_by_5s"]) for r in windows)
                  + "."]
    lines += ["", "Peak RSS (MiB) and CPU seconds per process group, per scenario; then the whole machine's "
                  "CPU seconds over the same time (busy / taken by the hypervisor / idle) and the CPU probe: "
                  "milliseconds a fixed single-threaded loop took just before the scenario, with the stack idle "
                  "(higher is a slower core at that moment):", "",
              "| scenario | " + " | ".join(["gateway", "consumer", "nginx", "rabbitmq", "postgres", "k6"])
              + " | machine busy / steal / idle (s) | probe (ms) |",
              "|---|" + "---|" * 8]
    for result in results:
        cells = []
        for group in ["gateway", "consumer", "nginx", "rabbitmq", "postgres", "k6"]:
            process = result["processes"].get(group, {})
            cells.append(f"{process.get('peak_rss_mib', '-')} MiB / {process.get('cpu_seconds', '-')} s")
        machine_cpu = result.get("machine_cpu_s") or {}
        cells.append(" / ".join(str(machine_cpu.get(kind, "-")) for kind in ("busy", "steal", "idle")))
        cells.append(str(result.get("cpu_probe_ms", "-")))
        lines.append(f"| {result['scenario']} | " + " | ".join(cells) + " |")
    with_wal = [r for r in results if r.get("postgres_wal")]
    if with_wal:
        lines += ["", "PostgreSQL's WAL over each scenario (the server's counters, every database: the benchmark's "
                      "is the only one writing); full-page images are the first change to a page after a checkpoint:", "",
                  "| scenario | WAL written (MB) | records | full-page images | checkpoints | WAL bytes per event stored |",
                  "|---|---|---|---|---|---|"]
        for result in with_wal:
            wal = result["postgres_wal"]
            stored = result.get("events_stored") or 0
            per_event = round(wal["bytes"] / stored) if stored else "-"
            lines.append(f"| {result['scenario']} | {wal['bytes'] / 1e6:.1f} | {wal['records']} | {wal['full_page_images']} | "
                         f"{wal['checkpoints']} | {per_event} |")
    with_queries = [r for r in results if r.get("query_ms")]
    if with_queries:
        lines += ["", "Read API (`GET /v1/events` with a filter, limit 50) during the run:", "",
                  "| scenario | rows in the table at the start | queries | query p50 / p95 / p99 / max (ms) |",
                  "|---|---|---|---|"]
        for result in with_queries:
            q = result["query_ms"]
            lines.append(f"| {result['scenario']} | {result.get('rows_before', '?')} | {result['queries']} | "
                         f"{q['med']} / {q['p(95)']} / {q['p(99)']} / {q['max']} |")
        for result in with_queries:
            kinds = result.get("query_kinds_ms") or {}
            if kinds:
                lines += ["", f"By filter shape ({result['scenario']}):", "",
                          "| filter | p50 / p95 / p99 / max (ms) |", "|---|---|"]
                for kind, q in kinds.items():
                    lines.append(f"| {kind} | {q['med']} / {q['p(95)']} / {q['p(99)']} / {q['max']} |" if q
                                 else f"| {kind} | no result |")
    if peer_results:
        lines += ["", "Side by side with the peer (same scenarios, same machine):", "",
                  "| scenario | Warren events/s accepted | peer events/s accepted | ratio | Warren p99 ms | peer p99 ms |",
                  "|---|---|---|---|---|---|"]
        for mine, theirs in zip(results, peer_results):
            ours, other = mine.get("events_per_s_accepted", 0), theirs.get("events_per_s_accepted", 0)
            ratio = f"{ours / other:.2f}×" if other else "n/a"
            lines.append(f"| {mine['scenario']} | {ours} | {other} | {ratio} | {mine['http_ms']['p(99)']} | {theirs['http_ms']['p(99)']} |")
    return "\n".join(lines) + "\n"


def main():
    global BATCH_RATE, SINGLE_RATE, WRK_CONNECTIONS
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--peer")
    parser.add_argument("--stack-dir", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--scenarios", default="batch,single,mixed,spike")
    parser.add_argument("--note", default="", help="what sets this run apart, written into the results")
    parser.add_argument("--batch-rate", type=int, help="events/s batch and wrk-batch-rate offer (a multiple of 100)")
    parser.add_argument("--single-rate", type=int, help="single events/s wrk-single offers, paced")
    parser.add_argument("--wrk-connections", type=int, default=WRK_CONNECTIONS, help="wrk's connections for ingest")
    args = parser.parse_args()
    if args.single_rate is not None:
        if not 100 <= args.single_rate <= 200_000:
            sys.exit("--single-rate is 100 to 200000 events/s")
        SINGLE_RATE = args.single_rate
    if not 2 <= args.wrk_connections <= 1024:
        sys.exit("--wrk-connections is 2 to 1024")
    WRK_CONNECTIONS = args.wrk_connections
    if args.batch_rate is not None:
        if not (100 <= args.batch_rate <= 200_000 and args.batch_rate % 100 == 0):
            sys.exit("--batch-rate is a multiple of 100 from 100 to 200000 events/s")
        BATCH_RATE = args.batch_rate
    if not 5 <= args.duration <= 60:
        sys.exit("--duration is 5 to 60 seconds")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    out_dir = ROOT / "bench" / "results" / date
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = {k: v for k, v in os.environ.items() if k in ("WARREN_INGEST_KEY", "WARREN_READ_KEY")}
    names = [name for name in args.scenarios.split(",") if name]
    results = []
    for name in names:
        print(f"[bench] {name} against {args.target}", file=sys.stderr)
        results.append(run_scenario(name, args.target, args.duration, args.stack_dir, out_dir, keys, args.db))
        print(json.dumps(results[-1]), file=sys.stderr)
    peer_results = []
    if args.peer:
        for name in names:
            print(f"[bench] {name} against the peer {args.peer}", file=sys.stderr)
            peer_results.append(run_scenario(name, args.peer, args.duration, "/nonexistent", out_dir, {}, None))
    chart = None
    if (out_dir / "spike.csv.gz").exists():
        chart = spike_chart(out_dir / "spike.csv.gz", out_dir / "spike-latency-vs-rate.svg")
        (out_dir / "spike.csv.gz").unlink()
    for log in out_dir.glob("*.log"):
        log.unlink()
    for summary in out_dir.glob("*-summary.json"):
        summary.unlink()
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    machine = f"{os.cpu_count()} cores ({cpu}), {round(os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30)} GiB, {platform.system()} {platform.release()}"
    report = {"date": date, "machine": machine, "duration_s": args.duration, "results": results,
              "note": args.note,
              "postgres": POSTGRES,
              "peer": args.peer, "peer_results": peer_results,
              "chart": str(chart.relative_to(ROOT)) if chart else None}
    (ROOT / "bench" / "results" / f"{date}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(results, peer_results, machine, date, args.note)
    if chart:
        text += f"\n![latency versus rate]({date}/{chart.name})\n\nk6 HTML reports: `{date}/<scenario>-report.html` (local only: per-run output is not kept in git).\n"
    logged = [r for r in results if r.get("warnings_log")]
    if logged:
        text += "\nWarnings and errors the stack logged during a scenario: " + ", ".join(
            f"[{r['scenario']}]({r['warnings_log']})" for r in logged) + ".\n"
    (ROOT / "bench" / "results" / f"{date}.md").write_text(text)
    print(text)
    print(f"written: bench/results/{date}.md and .json", file=sys.stderr)
    # A query generator that reported nothing is a broken benchmark, not a slow one.
    broken = [f"{r['scenario']}: {kind}" for r in results if r.get("tool") == "wrk"
              for kind, figures in (r.get("query_kinds_ms") or {}).items() if not figures or not figures["requests"]]
    if broken:
        sys.exit("bench: query generators that answered no query: " + "; ".join(broken))


if __name__ == "__main__":
    main()
