//! Weekly partitions: retention drops whole weeks, and exactly-once storage holds for
//! redeliveries and client retries around midnight, inside a week's partition and across two.
//! 2025-03-09 is a Sunday: its midnight is also the boundary between two partitions.

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate, Utc};
use consumer::db::partitions::{self, Retention};
use consumer::write::store::{Duplicates, RetryWindow};
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use shared_types::{Event, RequestPart};

use crate::helpers::{spawn_app, storage_of, TestApp};

fn stored_event(id: &str) -> Event {
    Event {
        id: id.into(),
        source: "/partitions".into(),
        event_type: "test.partitioned".into(),
        subject: None,
        time: None,
        datacontenttype: None,
        dataschema: None,
        data: None,
        extensions: BTreeMap::new(),
    }
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("an RFC 3339 time")
}

fn part(id: &str, received_at: DateTime<Utc>) -> RequestPart {
    RequestPart::new(
        format!("req-{id}-{received_at}"),
        received_at,
        vec![stored_event(id)],
    )
}

/// Writes `parts` as one batch (one transaction) into the database at `url`, as a consumer
/// writes its deliveries.
async fn write_batch_to(url: &str, parts: &[&RequestPart]) -> usize {
    consumer::write::store::write(
        &storage_of(url),
        parts,
        RetryWindow::default(),
        Duplicates::Fail,
    )
    .await
    .unwrap()
}

async fn write_batch(app: &TestApp, parts: &[&RequestPart]) -> usize {
    write_batch_to(&app.db_url, parts).await
}

async fn write(app: &TestApp, part: &RequestPart) -> usize {
    write_batch(app, &[part]).await
}

#[derive(diesel::QueryableByName)]
struct Copy {
    #[diesel(sql_type = Text)]
    partition: String,
}

/// The partitions holding a copy of event `id`.
async fn copies(app: &TestApp, id: &str) -> Vec<String> {
    let rows: Vec<Copy> = diesel::sql_query(
        "SELECT tableoid::regclass::text AS partition FROM events WHERE id = $1 ORDER BY 1",
    )
    .bind::<Text, _>(id)
    .load(&mut app.db().await)
    .await
    .unwrap();
    rows.into_iter().map(|row| row.partition).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_after_midnight_lands_in_its_original_partition_once() {
    let app = spawn_app().await;
    let original = part("late-evening", at("2025-03-09T23:59:59.900Z"));

    assert_eq!(write(&app, &original).await, 1);
    // The message comes back after midnight: it still carries its received_at.
    assert_eq!(write(&app, &original).await, 0);

    assert_eq!(copies(&app, "late-evening").await, ["events_w20250303"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_holding_stored_events_stores_only_its_new_ones() {
    let app = spawn_app().await;
    let noon = at("2025-03-12T12:00:00Z");
    let stored = part("stored-first", noon);
    assert_eq!(write(&app, &stored).await, 1);

    // A redelivered message among new ones, and an event twice in one batch (a client retry
    // that reached the same consumer batch): the batch's first, plain insert fails on them and
    // the batch is written again skipping them, with its new events all stored.
    let new_a = part("new-a", noon);
    let twice = part("twice", noon);
    let twice_again = part("twice", at("2025-03-12T12:00:01Z"));
    let new_b = part("new-b", noon);
    let batch = [&new_a, &stored, &twice, &twice_again, &new_b];
    assert_eq!(write_batch(&app, &batch).await, 3);

    for id in ["stored-first", "new-a", "twice", "new-b"] {
        assert_eq!(copies(&app, id).await, ["events_w20250310"], "{id}");
    }
    // Written again (a redelivery of the whole batch): nothing new.
    assert_eq!(write_batch(&app, &batch).await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_retry_across_midnight_is_stored_once_whichever_copy_comes_first() {
    let app = spawn_app().await;
    let before = at("2025-03-09T23:59:59.500Z");
    let after = at("2025-03-10T00:00:00.500Z");

    assert_eq!(write(&app, &part("retry-a", before)).await, 1);
    assert_eq!(write(&app, &part("retry-a", after)).await, 0);
    // The retry is written first, the original (redelivered) second.
    assert_eq!(write(&app, &part("retry-b", after)).await, 1);
    assert_eq!(write(&app, &part("retry-b", before)).await, 0);

    assert_eq!(copies(&app, "retry-a").await, ["events_w20250303"]);
    assert_eq!(copies(&app, "retry-b").await, ["events_w20250310"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_retry_across_midnight_inside_one_week_is_stored_once() {
    let app = spawn_app().await;
    let before = at("2025-03-11T23:59:59.500Z");
    let after = at("2025-03-12T00:00:00.500Z");

    assert_eq!(write(&app, &part("midweek-a", before)).await, 1);
    assert_eq!(write(&app, &part("midweek-a", after)).await, 0);
    assert_eq!(write(&app, &part("midweek-b", after)).await, 1);
    assert_eq!(write(&app, &part("midweek-b", before)).await, 0);

    assert_eq!(copies(&app, "midweek-a").await, ["events_w20250310"]);
    assert_eq!(copies(&app, "midweek-b").await, ["events_w20250310"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_across_midnight_later_than_the_retry_window_is_stored_again_as_documented() {
    let app = spawn_app().await;
    // Two hours apart across midnight; the window (WARREN_DEDUP_RETRY_WINDOW_SECS) is one hour:
    // the retry, at 01:30, does not look in the day before.
    assert_eq!(
        write(&app, &part("late-retry", at("2025-03-09T23:30:00Z"))).await,
        1
    );
    assert_eq!(
        write(&app, &part("late-retry", at("2025-03-10T01:30:00Z"))).await,
        1
    );
    assert_eq!(
        copies(&app, "late-retry").await,
        ["events_w20250303", "events_w20250310"]
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_received_two_days_later_is_stored_again_as_documented() {
    let app = spawn_app().await;
    assert_eq!(
        write(&app, &part("very-late", at("2025-03-09T12:00:00Z"))).await,
        1
    );
    assert_eq!(
        write(&app, &part("very-late", at("2025-03-11T12:00:00Z"))).await,
        1
    );
    assert_eq!(
        copies(&app, "very-late").await,
        ["events_w20250303", "events_w20250310"]
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_a_week_once_all_its_days_are_past_the_window() {
    let app = spawn_app().await;
    // A Thursday; with 7 days kept, the first day kept is Thursday 2025-03-13.
    let today = NaiveDate::from_ymd_opt(2025, 3, 20).unwrap();
    let day = |back: u64| {
        today
            .checked_sub_days(Days::new(back))
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
    };
    for (id, back) in [
        ("three-weeks", 21),
        ("old-sunday", 11),
        ("old-monday", 10),
        ("edge", 7),
        ("recent", 3),
        ("today", 0),
    ] {
        assert_eq!(write(&app, &part(id, day(back))).await, 1);
    }
    let mut connection = app.db().await;

    let dropped = partitions::maintain_once(&mut connection, Some(Retention { days: 7 }), today)
        .await
        .unwrap();

    let names: Vec<&str> = dropped.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["events_w20250224", "events_w20250303"]);
    let kept: Vec<(String, NaiveDate, NaiveDate)> = partitions::list(&mut connection)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.name.starts_with("events_w2025"))
        .map(|p| (p.name, p.first_day, p.end_day))
        .collect();
    let date = |d: u32| NaiveDate::from_ymd_opt(2025, 3, d).unwrap();
    // The week holding the first day kept stays whole: its Monday is older than the window.
    assert_eq!(
        kept,
        [
            ("events_w20250310".to_string(), date(10), date(17)),
            ("events_w20250317".to_string(), date(17), date(24)),
        ]
    );
    for gone in ["three-weeks", "old-sunday"] {
        assert!(copies(&app, gone).await.is_empty(), "{gone} was kept");
    }
    assert_eq!(copies(&app, "old-monday").await, ["events_w20250310"]);
    assert_eq!(copies(&app, "edge").await, ["events_w20250310"]);
    app.cleanup().await;
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unpartitioned_table_with_rows_is_migrated_into_weekly_partitions() {
    use diesel_async::AsyncMigrationHarness;
    use diesel_migrations::MigrationHarness;

    let name = format!("warren_test_migrate_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{name}", crate::helpers::postgres_base());
    consumer::db::ensure_database(&url).await.unwrap();
    let connection = consumer::db::connect(&url).await.unwrap();
    let mut harness = AsyncMigrationHarness::new(connection);
    // The schema as it was before partitioning: the first two migrations.
    harness
        .run_next_migration(consumer::db::MIGRATIONS)
        .unwrap();
    harness
        .run_next_migration(consumer::db::MIGRATIONS)
        .unwrap();
    let mut connection = harness.into_inner();
    diesel::sql_query(
        "INSERT INTO events (id, source, type, data, received_at) VALUES \
         ('m1', '/old', 'a', '{\"n\": 1}', '2025-03-09T23:00:00Z'), \
         ('m2', '/old', 'a', NULL, '2025-03-10T01:00:00Z'), \
         ('m3', '/old', 'b', NULL, '2025-03-10T02:00:00Z')",
    )
    .execute(&mut connection)
    .await
    .unwrap();

    consumer::db::migrate(&url).await.unwrap();

    let days: Vec<Copy> =
        diesel::sql_query("SELECT tableoid::regclass::text AS partition FROM events ORDER BY seq")
            .load(&mut connection)
            .await
            .unwrap();
    let days: Vec<String> = days.into_iter().map(|row| row.partition).collect();
    // Through daily partitions (the third migration) into weekly ones: none of the days is left.
    assert_eq!(
        days,
        ["events_w20250303", "events_w20250310", "events_w20250310"]
    );
    let layout: Vec<String> = partitions::list(&mut connection)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(layout, ["events_w20250303", "events_w20250310"]);
    // The migrated rows still deduplicate, and new rows continue the sequence.
    let again = part_of("m2", "/old", "2025-03-10T01:00:00Z");
    let fresh = part_of("m4", "/old", "2025-03-10T03:00:00Z");
    let inserted = write_batch_to(&url, &[&again, &fresh]).await;
    assert_eq!(inserted, 1);
    let count: Count = diesel::sql_query("SELECT count(*) AS count FROM events WHERE seq > 3")
        .get_result(&mut connection)
        .await
        .unwrap();
    assert_eq!(count.count, 1);
    // Every migrated row carries the ids of its own source and type.
    assert_eq!(
        crate::helpers::rows_with_their_own_ids(&mut connection).await,
        4
    );

    drop(connection);
    let mut admin = consumer::db::connect(&format!("{}/postgres", crate::helpers::postgres_base()))
        .await
        .unwrap();
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

fn part_of(id: &str, source: &str, received_at: &str) -> RequestPart {
    let mut event = stored_event(id);
    event.source = source.into();
    event.event_type = "a".into();
    RequestPart::new(format!("req-{id}"), at(received_at), vec![event])
}
