//! What a binary `COPY` saves over the consumer's `INSERT … SELECT FROM UNNEST(arrays)`, each
//! measured from the client as the consumer runs it: the same batches of new events (shaped as
//! `scripts/perf/bench` sends them: four types, a subject, three data fields; ids spread as a
//! client's are) written into an emptied table, one backend, alternated round by round:
//! - `insert`: `store::insert`, the consumer's insert (binds, arrays and all);
//! - `copy`: `store::write`, which copies a batch of new events (`write/copy.rs`);
//! - `copy-grouped`: a copy encoded here that also gives `stored_at`, so that no column is left
//!   to a volatile default and PostgreSQL inserts a page of rows at a time.
//!
//! Each line gives the wall time per row, the CPU per row of every PostgreSQL process and of this
//! one, and the WAL records and bytes per row. `scripts/perf/insert-cost copy` measures the
//! server's side of a copy alone, from pre-generated rows.
//!
//! usage: cargo run --release -p consumer --example copy_cost [rounds] [batches per round]
//! [noon|midnight] (default 4, 50 and noon: batches of 2 000 events received at today's noon,
//! UTC). `midnight` receives them at 00:30 instead, within the default retry window of midnight,
//! where the consumer inserts every batch with its neighbour-day lookups (so `copy` is an insert
//! too): what those lookups cost. Uses the database warren_copy_cost on 127.0.0.1:5432
//! (`WARREN_DATABASE_URL` to change it), dropped at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use chrono::Utc;
use consumer::write::key_ids::Resolved;
use consumer::write::store::{self, Duplicates, RetryWindow, Storage};
use futures_util::SinkExt;
use shared_types::event::{Event, EventData, Validation};
use shared_types::RequestPart;
use tokio_postgres::types::{Json, ToSql, Type};

const BATCH: usize = 2000;
const PER_REQUEST: usize = 100;

fn batch(round: usize, number: usize, variant: &str, hour: u32) -> Vec<RequestPart> {
    let types = ["page.viewed", "page.left", "cart.updated", "order.placed"];
    (0..BATCH / PER_REQUEST)
        .map(|request| {
            let events = (0..PER_REQUEST)
                .map(|n| {
                    let serial = ((round * 1000 + number) * BATCH + request * PER_REQUEST + n) as u64;
                    let value = serde_json::json!({
                        "specversion": "1.0",
                        "id": format!("{variant}-{:016x}", serial.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                        "source": format!("/copy-cost/{}", serial % 16),
                        "type": types[n % 4], "subject": format!("user/{}", serial * 7919 % 100_000),
                        "data": {"n": n, "path": format!("/p/{}", n % 97), "run": "copy-cost"}
                    });
                    Event::from_json(value, &Validation::structural()).unwrap()
                })
                .collect();
            RequestPart::new(format!("request-{request}"), received_at(hour), events)
        })
        .collect()
}

/// When the batches are received: today at `hour`:30 (UTC). At noon, far from midnight as most
/// batches are, the consumer writes them without the neighbour-day lookups an event within
/// `WARREN_DEDUP_RETRY_WINDOW_SECS` of midnight needs (and so with a copy); at 00:30, with them.
fn received_at(hour: u32) -> chrono::DateTime<Utc> {
    Utc::now()
        .date_naive()
        .and_hms_opt(hour, 30, 0)
        .expect("a time of day")
        .and_utc()
}

/// The binary COPY of `parts`: the consumer's written columns, the day and `stored_at`.
fn encode(parts: &[&RequestPart], ids: &Resolved) -> bytes::Bytes {
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
        Type::TEXT,
        Type::JSONB,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::INT4,
        Type::DATE,
        Type::TIMESTAMPTZ,
    ];
    let mut buffer = BytesMut::with_capacity(BATCH * 400);
    buffer.put_slice(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
    let stored_at = Utc::now();
    for part in parts {
        for event in &part.events {
            let data = match &event.data {
                Some(EventData::Json(value)) => Some(value),
                _ => None,
            };
            let source_id = ids.source(&event.source).unwrap();
            let type_id = ids.event_type(&event.event_type).unwrap();
            let day = part.received_at.date_naive();
            let fields: [&(dyn ToSql + Sync); 16] = [
                &event.id,
                &event.source,
                &event.event_type,
                &event.subject,
                &event.time,
                &event.datacontenttype,
                &event.dataschema,
                &data,
                &None::<&str>,
                &Json(&event.extensions),
                &part.request_id,
                &part.received_at,
                &source_id,
                &type_id,
                &day,
                &stored_at,
            ];
            buffer.put_i16(16);
            for (field, column_type) in fields.iter().zip(&types) {
                let at = buffer.len();
                buffer.put_i32(0);
                let length = match field.to_sql_checked(column_type, &mut buffer).unwrap() {
                    tokio_postgres::types::IsNull::Yes => -1,
                    tokio_postgres::types::IsNull::No => (buffer.len() - at - 4) as i32,
                };
                buffer[at..at + 4].copy_from_slice(&length.to_be_bytes());
            }
        }
    }
    buffer.put_i16(-1);
    buffer.freeze()
}

/// CPU seconds spent so far by every PostgreSQL process (`/proc/*/stat`) and by this one.
fn cpu_seconds() -> (f64, f64) {
    let ticks = |stat: &str| -> f64 {
        // The fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let parse = |index: usize| {
            fields
                .get(index)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (parse(11) + parse(12)) / 100.0
    };
    let mut postgres = 0.0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == "postgres") {
            postgres += std::fs::read_to_string(path.join("stat")).map_or(0.0, |stat| ticks(&stat));
        }
    }
    let own = std::fs::read_to_string("/proc/self/stat").map_or(0.0, |stat| ticks(&stat));
    (postgres, own)
}

const COPY: &str = "COPY events (id, source, type, subject, time, datacontenttype, dataschema, \
    data, data_base64, extensions, request_id, received_at, source_id, type_id, received_on, \
    stored_at) FROM STDIN (FORMAT binary)";

#[tokio::main]
async fn main() {
    let mut arguments = std::env::args().skip(1);
    let rounds: usize = arguments
        .next()
        .map_or(4, |text| text.parse().expect("rounds"));
    let batches: usize = arguments
        .next()
        .map_or(50, |text| text.parse().expect("batches"));
    let hour = match arguments.next().as_deref() {
        None | Some("noon") => 12,
        Some("midnight") => 0,
        Some(other) => panic!("noon or midnight, not {other}"),
    };
    let url = std::env::var("WARREN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/warren_copy_cost".into());
    consumer::db::migrate(&url).await.unwrap();
    let pool = consumer::db::pool(
        &url,
        1,
        Duration::from_secs(5),
        Duration::from_secs(60),
        consumer::db::Plans::ServerChoice,
    )
    .unwrap();
    let copies =
        consumer::write::copy::pool(&url, 1, Duration::from_secs(5), Duration::from_secs(60))
            .unwrap();
    let storage = Storage::new(pool.clone(), copies);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .await
        .unwrap();
    let lsn = || async {
        let row = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    let wal_since = |start: String| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT sum(count)::bigint, pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::bigint \
                     FROM pg_get_wal_stats($1::text::pg_lsn, pg_current_wal_insert_lsn())",
                    &[&start],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, i64>(1))
        }
    };
    println!("batches of {BATCH} events, {batches} per variant and round, one backend each");
    for round in 0..rounds {
        for variant in ["insert", "copy", "copy-grouped"] {
            client
                .batch_execute("TRUNCATE events; CHECKPOINT")
                .await
                .unwrap();
            let work: Vec<Vec<RequestPart>> = (0..batches)
                .map(|n| batch(round, n, variant, hour))
                .collect();
            let start = lsn().await;
            let (postgres_before, own_before) = cpu_seconds();
            let started = Instant::now();
            for parts in &work {
                let parts: Vec<&RequestPart> = parts.iter().collect();
                if variant == "insert" {
                    store::insert(&storage, &parts, RetryWindow::default(), Duplicates::Fail)
                        .await
                        .unwrap();
                } else if variant == "copy" {
                    store::write(&storage, &parts, RetryWindow::default(), Duplicates::Fail)
                        .await
                        .unwrap();
                } else {
                    let mut connection = pool.get().await.unwrap();
                    let ids = store::resolve_ids(&mut connection, &storage.key_ids, &parts)
                        .await
                        .unwrap();
                    drop(connection);
                    let body = encode(&parts, &ids);
                    let sink = client.copy_in::<_, bytes::Bytes>(COPY).await.unwrap();
                    let mut sink = std::pin::pin!(sink);
                    sink.send(body).await.unwrap();
                    sink.as_mut().finish().await.unwrap();
                }
            }
            let elapsed = started.elapsed();
            let (postgres_after, own_after) = cpu_seconds();
            let (records, bytes) = wal_since(start).await;
            let stored: i64 = client
                .query_one("SELECT count(*) FROM events", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                stored as usize,
                batches * BATCH,
                "{variant} stored every row"
            );
            let rows = (batches * BATCH) as f64;
            println!(
                "round {round} {variant:>6}: {:.2} µs per row (CPU: PostgreSQL {:.2}, this process {:.2}), \
                 {:.2} WAL records and {:.0} bytes per row",
                elapsed.as_secs_f64() * 1e6 / rows,
                (postgres_after - postgres_before) * 1e6 / rows,
                (own_after - own_before) * 1e6 / rows,
                records as f64 / rows,
                bytes as f64 / rows,
            );
        }
    }
    drop(storage);
    pool.close();
    let admin = url
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/postgres"))
        .unwrap();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let (admin_client, admin_connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(admin_connection);
    drop(client);
    admin_client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
}
