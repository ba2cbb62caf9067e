//! The read pool's generic plans: a list by type is answered from the type index whatever the
//! type, even when the statistics say one type is nearly every row (where a generic plan would
//! otherwise walk the time index and filter, reading a day of other events for a rare type).

use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::helpers::spawn_app;

#[derive(diesel::QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = Text)]
    #[diesel(column_name = "QUERY PLAN")]
    line: String,
}

/// The partition holding the day PostgreSQL says it is (UTC), which the insert used.
async fn todays_partition(db: &mut diesel_async::AsyncPgConnection) -> String {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    diesel::sql_query("SELECT warren_events_partition((now() AT TIME ZONE 'UTC')::date) AS name")
        .get_result::<Name>(db)
        .await
        .unwrap()
        .name
}

#[tokio::test(flavor = "multi_thread")]
async fn a_type_list_runs_a_generic_plan_from_the_type_index_even_for_a_rare_type() {
    let app = spawn_app().await;
    let mut db = app.db().await;
    // Today's partition: 20 000 events of ten common types and 10 of a rare one, each with a
    // small payload, then fresh statistics. (Without the type estimate of the migrations, a
    // generic plan walks the time index here and filters.)
    diesel::sql_query(
        "INSERT INTO events (id, source, type, data, time, received_at, received_on, source_id, type_id) \
         SELECT id, source, type, data, time, received_at, received_on, \
                warren_source_id(source), warren_type_id(type) \
         FROM (SELECT 'e' || n AS id, '/plans' AS source, \
                      CASE WHEN n % 2000 = 0 THEN 'rare.type' ELSE 'common.' || n % 10 END AS type, \
                      jsonb_build_object('n', n, 'path', '/p/' || n % 977) AS data, \
                      now() - n * interval '1 millisecond' AS time, now() AS received_at, \
                      (now() AT TIME ZONE 'UTC')::date AS received_on \
               FROM generate_series(1, 20000) AS n) AS generated",
    )
    .execute(&mut db)
    .await
    .unwrap();
    diesel::sql_query("ANALYZE events")
        .execute(&mut db)
        .await
        .unwrap();

    // A connection set up as the consumer's read pool sets up its own.
    let pool = consumer::db::pool(
        &app.db_url,
        1,
        Duration::from_secs(5),
        Duration::from_secs(5),
        consumer::db::Plans::Generic,
    )
    .unwrap();
    let mut read = pool.get().await.unwrap();
    diesel::sql_query(
        "PREPARE by_type(text, int8) AS SELECT * FROM events \
         WHERE type_id = (SELECT id FROM event_types WHERE type = $1) \
         ORDER BY event_time DESC, seq DESC LIMIT $2",
    )
    .execute(&mut read)
    .await
    .unwrap();
    let plan: Vec<String> =
        diesel::sql_query("EXPLAIN (COSTS OFF) EXECUTE by_type('rare.type', 51)")
            .load::<PlanLine>(&mut read)
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.line)
            .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("$1"), "not a generic plan:\n{plan}");
    let partition = todays_partition(&mut db).await;
    let today = plan
        .lines()
        .find(|line| line.contains(&partition))
        .unwrap_or_else(|| panic!("today's partition is not in the plan:\n{plan}"));
    assert!(
        today.contains("type_id_event_time"),
        "today's partition is not read from the type index:\n{plan}"
    );

    // And through the API, the rare type's events, newest first.
    let response = app
        .client
        .get(app.consumer_url("/v1/events?type=rare.type&limit=50"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let ids: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=10).map(|k| format!("e{}", k * 2000)).collect();
    assert_eq!(ids, expected);
    app.cleanup().await;
}
