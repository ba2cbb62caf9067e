"""The one accepted-versus-stored check: what a load run was told was accepted, against the rows
stored for its source. scripts/reconcile (k6 runs), scripts/lib/loadgen.py (fault runs) and
scripts/lib/bench.py (wrk runs) all count with these functions.
Standard library and the psql client only."""
import subprocess


def psql(db, sql, source):
    """Rows of `sql` as text lines (fields split by ','), with :'source' bound to `source`."""
    result = subprocess.run(["psql", db, "-X", "-v", "ON_ERROR_STOP=1", "-v", f"source={source}", "-AtF,", "-f", "-"],
                            input=sql, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {result.stderr.strip()}")
    return result.stdout.splitlines()


def stored_counts(db, source):
    """id -> number of rows stored with that id under `source`."""
    counts = {}
    for line in psql(db, "SELECT id, count(*) FROM events WHERE source_id = (SELECT id FROM event_sources WHERE source = :'source') GROUP BY id", source):
        event_id, count = line.rsplit(",", 1)
        counts[event_id] = int(count)
    return counts


def stored_totals(db, source):
    """(rows, distinct ids) stored under `source`: for runs that know only how many were accepted."""
    line = psql(db, "SELECT count(*), count(DISTINCT id) FROM events WHERE source_id = (SELECT id FROM event_sources WHERE source = :'source')", source)
    rows, distinct = line[0].split(",") if line else ("0", "0")
    return int(rows), int(distinct)


def lag_ms(db, source):
    """End-to-end lag (stored_at - received_at) percentiles of `source`'s rows, in ms."""
    line = psql(db, """SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                         (ORDER BY extract(epoch FROM stored_at - received_at) * 1000),
                       max(extract(epoch FROM stored_at - received_at) * 1000)
                       FROM events WHERE source_id = (SELECT id FROM event_sources WHERE source = :'source')""", source)
    values = []
    if line and line[0] and "}" in line[0]:
        percentiles, _, longest = line[0].partition("}")
        values = percentiles.strip('"{').split(",") + [longest.strip(",")]
    if len(values) == 4 and all(values):
        p50, p95, p99, longest = (round(float(v), 1) for v in values)
    else:
        p50, p95, p99, longest = None, None, None, None
    return {"p50": p50, "p95": p95, "p99": p99, "max": longest}


def lag_by_window(db, source, seconds=5):
    """The lag's p99 (ms) of `source`'s rows by `seconds`-long window of their receive time,
    oldest first: whether a run's tail is spread over the run or comes from a few seconds of it."""
    lines = psql(db, f"""SELECT floor(extract(epoch FROM received_at - first) / {int(seconds)}),
                               percentile_cont(0.99) WITHIN GROUP
                                 (ORDER BY extract(epoch FROM stored_at - received_at) * 1000)
                        FROM events, (SELECT min(received_at) AS first FROM events
                                      WHERE source_id = (SELECT id FROM event_sources WHERE source = :'source')) AS start
                        WHERE source_id = (SELECT id FROM event_sources WHERE source = :'source')
                        GROUP BY 1 ORDER BY 1""", source)
    return [round(float(line.split(",")[1])) for line in lines if "," in line and line.split(",")[1]]


def by_ids(accepted, stored, errored=frozenset()):
    """Compares accepted ids (and ids answered with an error) with `stored_counts`."""
    return {
        "accepted": len(accepted),
        "stored": len(stored),
        "duplicates": sum(count - 1 for count in stored.values()),
        "missing": len(accepted - stored.keys()),
        "stored_but_errored": len(errored & stored.keys()),
        "stored_not_accepted": len(stored.keys() - accepted - errored),
    }


def by_count(accepted, rows, distinct):
    """The same comparison when only the number of accepted events is known (wrk)."""
    return {
        "accepted": accepted,
        "stored": rows,
        "duplicates": rows - distinct,
        "missing": max(accepted - distinct, 0),
    }
