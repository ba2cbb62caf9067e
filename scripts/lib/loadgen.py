#!/usr/bin/env python3
"""Steady, bounded load of uniquely identified events, and reconciliation against `events`.

  loadgen.py load --url URL --source SOURCE --rate N --duration S [--stop-file F] --out FILE.csv
      POSTs single structured events at about N requests/s for at most S seconds, or until F
      exists (threads with keep-alive connections, 15 s timeout each), and writes one line per
      event: id,status,t_sent,t_done,retried (status 0 = no HTTP answer: refused, reset, timeout).
      Like browsers and HTTP client libraries, it resends a request once on a fresh connection
      when a reused keep-alive connection was closed before any answer; that is safe here because
      ingest deduplicates on (source, id). Such resends are counted, not hidden.
  loadgen.py reconcile --csv FILE --source SOURCE --db URL --name NAME [--heal T] [--drained S]
      Compares the responses with the rows stored for SOURCE and prints one JSON line.
Standard library only, so it runs wherever python3 does.
"""
import argparse
import csv
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
from collections import Counter

import reconcile  # scripts/lib/reconcile.py, beside this file: the one accepted-versus-stored check


def load(args):
    target = urllib.parse.urlsplit(args.url)
    deadline = time.time() + args.duration
    threads = max(1, min(args.threads, args.rate))
    interval = threads / float(args.rate)
    lock = threading.Lock()
    rows = []

    def worker(number):
        connection = None
        sequence = 0
        next_send = time.time() + (number * interval / threads)
        while True:
            now = time.time()
            if now >= deadline or (args.stop_file and os.path.exists(args.stop_file)):
                break
            if now < next_send:
                time.sleep(next_send - now)
            next_send += interval
            event_id = f"{number}-{sequence}"
            sequence += 1
            body = json.dumps({"specversion": "1.0", "id": event_id, "source": args.source,
                               "type": "faults.load", "data": {"n": sequence}})
            sent = time.time()
            status = 0
            retried = 0
            for attempt in (0, 1):
                reused = connection is not None
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=15)
                    headers = {"content-type": "application/cloudevents+json"}
                    if args.key:
                        headers["authorization"] = f"Bearer {args.key}"
                    connection.request("POST", "/v1/events", body, headers)
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                    if response.getheader("connection", "").lower() == "close":
                        connection.close()
                        connection = None
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
                    if connection is not None:
                        connection.close()
                    connection = None
                    if not reused or attempt == 1:
                        break
                    retried = 1
                except (OSError, http.client.HTTPException):
                    if connection is not None:
                        connection.close()
                    connection = None
                    break
            with lock:
                rows.append((event_id, status, sent, time.time(), retried))

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    with open(args.out, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "status", "t_sent", "t_done", "retried"])
        writer.writerows(rows)


def reconcile_run(args):
    with open(args.csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    stored = reconcile.stored_counts(args.db, args.source)
    accepted = {row["id"] for row in rows if row["status"] == "202"}
    errored = {row["id"] for row in rows if row["status"] != "202"}
    counted = reconcile.by_ids(accepted, stored, errored)
    errors = Counter("conn" if row["status"] == "0" else row["status"]
                     for row in rows if row["status"] != "202")
    first_202 = None
    if args.heal is not None:
        after = [float(row["t_done"]) for row in rows
                 if row["status"] == "202" and float(row["t_sent"]) >= args.heal]
        if after:
            first_202 = round(max(0.0, min(after) - args.heal), 2)
    latencies = sorted(float(row["t_done"]) - float(row["t_sent"])
                       for row in rows if row["status"] == "202")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None
    result = {
        "scenario": args.name,
        "sent": len(rows),
        "accepted": len(accepted),
        "errors": dict(sorted(errors.items())),
        "keepalive_resends": sum(int(row["retried"]) for row in rows),
        "stored": counted["stored"],
        "duplicates": counted["duplicates"],
        "lost": counted["missing"],
        "stored_but_errored": counted["stored_but_errored"],
        "unknown_stored": counted["stored_not_accepted"],
        "heal_to_first_202_s": first_202,
        "heal_to_empty_queue_s": args.drained,
        "accepted_p99_ms": round(p99 * 1000) if p99 is not None else None,
        "storage_lag_ms": reconcile.lag_ms(args.db, args.source),
        "accepted_max_ms": round(latencies[-1] * 1000) if latencies else None,
        "leader_moved_s": args.leader_moved,
    }
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("load")
    run.add_argument("--url", required=True)
    run.add_argument("--source", required=True)
    run.add_argument("--rate", type=int, default=200)
    run.add_argument("--duration", type=float, required=True)
    run.add_argument("--threads", type=int, default=24)
    run.add_argument("--stop-file")
    run.add_argument("--key", default=os.environ.get("WARREN_INGEST_KEY"),
                     help="ingest API key (default: $WARREN_INGEST_KEY)")
    run.add_argument("--out", required=True)
    check = commands.add_parser("reconcile")
    check.add_argument("--csv", required=True)
    check.add_argument("--source", required=True)
    check.add_argument("--db", required=True)
    check.add_argument("--name", required=True)
    check.add_argument("--heal", type=float)
    check.add_argument("--drained", type=float)
    check.add_argument("--leader-moved", type=lambda v: float(v) if v else None, default=None,
                       help="seconds from the fault until the store queue had a leader elsewhere")
    args = parser.parse_args()
    if args.command == "load":
        if args.rate <= 0 or args.duration <= 0:
            sys.exit("rate and duration must be positive")
        load(args)
    else:
        reconcile_run(args)


if __name__ == "__main__":
    main()
