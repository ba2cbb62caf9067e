#!/usr/bin/env python3
"""A webhook sink for trying subscriptions, the delivery fault suite and the bench: it records what
it receives, answers 204 (or what it is told), and checks Standard Webhooks signatures.

  sink.py serve --port P [--out FILE.jsonl] [--secret whsec_...] [--status CODE] [--delay PATH=MS]...
      Listens on 127.0.0.1:P. Each request is printed (one line) and, with --out, appended to FILE
      as JSON: time, path, webhook-id/-timestamp/-signature, ce-id, ce-source, ce-type, whether
      it is a replay, the answer's status, and the body (base64), so signatures can be checked
      afterwards. With --secret each line also says whether the signature verifies. --delay
      answers requests to PATH after MS milliseconds (a slow sink; requests stay in flight).
  sink.py reconcile --csv LOAD.csv --records FILE.jsonl --path /P --secret whsec_... --name NAME
                    [--heal T]
      Compares the events a loadgen.py run got a 202 for with what reached path /P: delivered,
      lost, duplicates (2xx answers beyond the first per webhook-id), bad signatures, and how long
      after T (epoch seconds, the heal) the last event accepted before T arrived: the backlog
      caught up. Prints one JSON line.

Not a product feature: a test helper. Standard library only.
"""
import argparse
import base64
import csv
import hashlib
import hmac
import http.server
import json
import sys
import threading
import time


def signature_ok(secret, webhook_id, timestamp, body, signatures):
    """The Standard Webhooks check: one `v1,` signature is HMAC-SHA256(id.timestamp.body)."""
    if not secret or not secret.startswith("whsec_") or not signatures:
        return False
    key = base64.b64decode(secret[len("whsec_"):])
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split(" "))


def serve(args):
    lock = threading.Lock()
    out = open(args.out, "a", buffering=1) if args.out else None
    delays = {path: int(ms) for path, ms in (item.split("=", 1) for item in args.delay)}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def receive(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            delay = delays.get(self.path.split("?", 1)[0])
            if delay:
                time.sleep(delay / 1000)
            header = self.headers.get
            record = {
                "t": time.time(),
                "path": self.path,
                "webhook_id": header("webhook-id"),
                "webhook_timestamp": header("webhook-timestamp"),
                "webhook_signature": header("webhook-signature"),
                "ce_id": header("ce-id"),
                "ce_source": header("ce-source"),
                "ce_type": header("ce-type"),
                "replay": header("warren-replay") == "true",
                "status": args.status,
                "body": base64.b64encode(body).decode(),
            }
            if args.secret:
                record["verified"] = signature_ok(args.secret, record["webhook_id"],
                                                  record["webhook_timestamp"], body,
                                                  record["webhook_signature"])
            with lock:
                if out:
                    out.write(json.dumps(record) + "\n")
                shown = {k: v for k, v in record.items() if k not in ("body", "webhook_signature")}
                print(json.dumps(shown), flush=True)
            self.send_response(args.status)
            self.send_header("content-length", "0")
            self.end_headers()

        do_POST = receive
        do_PUT = receive

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"sink listening on http://127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


def reconcile(args):
    accepted = {}
    sent = 0
    with open(args.csv) as handle:
        for row in csv.reader(handle):
            if not row or row[0] == "id":
                continue
            sent += 1
            if row[1] == "202":
                accepted[row[0]] = float(row[3])
    delivered = {}
    answered_2xx = {}
    bad_signatures = 0
    replayed = 0
    with open(args.records) as handle:
        for line in handle:
            record = json.loads(line)
            if record["path"] != args.path:
                continue
            body = base64.b64decode(record["body"])
            if not signature_ok(args.secret, record["webhook_id"], record["webhook_timestamp"],
                                body, record["webhook_signature"]):
                bad_signatures += 1
            if 200 <= record["status"] < 300:
                answered_2xx[record["webhook_id"]] = answered_2xx.get(record["webhook_id"], 0) + 1
                delivered.setdefault(record["ce_id"], record["t"])
                replayed += record["replay"]
    lost = sorted(set(accepted) - set(delivered))
    latencies = sorted((delivered[i] - accepted[i]) * 1000 for i in accepted if i in delivered)
    before_heal = [delivered[i] for i, done in accepted.items() if i in delivered and args.heal and done < args.heal]
    caught_up = max(0.0, max(before_heal) - args.heal) if before_heal else None

    def quantile(q):
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else None

    print(json.dumps({
        "scenario": args.name,
        "sent": sent,
        "accepted": len(accepted),
        "delivered": len(set(accepted) & set(delivered)),
        "lost": len(lost),
        "lost_ids": lost[:10],
        "duplicates": sum(count - 1 for count in answered_2xx.values()),
        "bad_signatures": bad_signatures,
        "unexpected": len(set(delivered) - set(accepted)),
        "heal_to_caught_up_s": round(caught_up, 2) if caught_up is not None else None,
        "latency_p50_ms": quantile(0.5),
        "latency_p99_ms": quantile(0.99),
        "latency_max_ms": round(latencies[-1]) if latencies else None,
    }))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve")
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--out")
    run.add_argument("--secret")
    run.add_argument("--status", type=int, default=204)
    run.add_argument("--delay", action="append", default=[], metavar="PATH=MS")
    check = commands.add_parser("reconcile")
    check.add_argument("--csv", required=True)
    check.add_argument("--records", required=True)
    check.add_argument("--path", required=True)
    check.add_argument("--secret", required=True)
    check.add_argument("--name", required=True)
    check.add_argument("--heal", type=float)
    args = parser.parse_args()
    serve(args) if args.command == "serve" else reconcile(args)


if __name__ == "__main__":
    main()
