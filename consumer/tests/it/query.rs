//! The read API over real stored events: each filter, the prefix match, pagination edges, lookup,
//! counts, and every bad parameter.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

/// Stores events with fixed times and returns the app.
async fn app_with_events() -> TestApp {
    let app = spawn_app().await;
    let events = [
        (
            "a1",
            "page.viewed",
            "/web",
            "user/1",
            "2024-05-01T10:00:00Z",
        ),
        (
            "a2",
            "page.viewed",
            "/web",
            "user/2",
            "2024-05-01T10:10:00Z",
        ),
        ("a3", "page.left", "/web", "user/1", "2024-05-01T10:20:00Z"),
        (
            "a4",
            "pageant.started",
            "/web",
            "user/1",
            "2024-05-01T11:05:00Z",
        ),
        (
            "a5",
            "order.placed",
            "/shop",
            "user/1",
            "2024-05-01T11:30:00Z",
        ),
        (
            "a6",
            "order.placed",
            "/shop",
            "user/3",
            "2024-05-01T13:00:00Z",
        ),
        (
            "a7",
            "page.viewed",
            "/web",
            "user/3",
            "2024-05-01T13:00:00Z",
        ),
    ];
    let batch: Vec<Value> = events
        .iter()
        .map(|(id, kind, source, subject, time)| {
            json!({"specversion": "1.0", "id": id, "source": source, "type": kind, "subject": subject, "time": time})
        })
        .collect();
    let response = app.post_batch(batch).await;
    assert_eq!(response.status(), 202);
    app.wait_for_rows(7).await;
    app
}

async fn get(app: &TestApp, path_and_query: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.consumer_url(path_and_query))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let (status, body) = get(app, &format!("/v1/events?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_select_the_matching_events_newest_first() {
    let app = app_with_events().await;

    let all = ids(&app, "").await;
    // a6 and a7 share a time; the tie-breaker (insertion order) decides, the same way every time.
    assert_eq!(
        all[..2].iter().collect::<BTreeSet<_>>(),
        ["a6", "a7"]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .iter()
            .collect()
    );
    assert_eq!(all[2..], ["a5", "a4", "a3", "a2", "a1"]);
    assert_eq!(ids(&app, "").await, all);
    assert_eq!(ids(&app, "type=page.viewed").await, ["a7", "a2", "a1"]);
    assert_eq!(ids(&app, "type=page.*").await, ["a7", "a3", "a2", "a1"]);
    assert_eq!(
        ids(&app, "type=page*").await,
        ["a7", "a4", "a3", "a2", "a1"]
    );
    assert_eq!(ids(&app, "source=/shop").await, ["a6", "a5"]);
    assert_eq!(ids(&app, "subject=user/1").await, ["a5", "a4", "a3", "a1"]);
    assert_eq!(
        ids(
            &app,
            "since=2024-05-01T10:10:00Z&until=2024-05-01T11:30:00Z"
        )
        .await,
        ["a4", "a3", "a2"]
    );
    assert_eq!(ids(&app, "type=page.*&subject=user/1").await, ["a3", "a1"]);
    assert!(ids(&app, "type=nothing.here").await.is_empty());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn events_come_back_as_accepted_plus_received_at() {
    let app = app_with_events().await;

    let (_, body) = get(&app, "/v1/events?type=order.placed&limit=1").await;

    let event = &body["events"][0];
    assert_eq!(event["id"], "a6");
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["subject"], "user/3");
    assert_eq!(event["time"], "2024-05-01T13:00:00Z");
    assert!(event["received_at"].is_string());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_attribute_comes_back_exactly_as_accepted_in_list_and_lookup() {
    let app = spawn_app().await;
    let full = json!({
        "specversion": "1.0", "id": "full-1", "source": "/attrs", "type": "attrs.checked",
        "subject": "user/9", "time": "2024-05-01T10:00:00.123456Z",
        "datacontenttype": "application/json", "dataschema": "https://example.com/s.json",
        "traceparent": "00-abc-01", "shard": 7, "sampled": true,
        "data": {"nested": {"list": [1, 2.5, "x", null, false]}, "empty": {}}
    });
    let binary = json!({
        "specversion": "1.0", "id": "bin-1", "source": "/attrs", "type": "attrs.checked",
        "datacontenttype": "application/octet-stream", "data_base64": "AAEC/w=="
    });
    let bare =
        json!({"specversion": "1.0", "id": "bare-1", "source": "/attrs", "type": "attrs.checked"});
    assert_eq!(
        app.post_batch(vec![full.clone(), binary.clone(), bare.clone()])
            .await
            .status(),
        202
    );
    app.wait_for_rows(3).await;

    let (status, page) = get(&app, "/v1/events?source=%2Fattrs&limit=10").await;
    assert_eq!(status, 200);
    let mut listed: Vec<Value> = page["events"].as_array().unwrap().clone();
    for (sent, id) in [(&full, "full-1"), (&binary, "bin-1"), (&bare, "bare-1")] {
        let (status, mut looked_up) =
            get(&app, &format!("/v1/events/lookup?source=%2Fattrs&id={id}")).await;
        assert_eq!(status, 200);
        let position = listed.iter().position(|e| e["id"] == id).unwrap();
        let mut from_list = listed.remove(position);
        for stored in [&mut looked_up, &mut from_list] {
            let received_at = stored.as_object_mut().unwrap().remove("received_at");
            assert!(received_at.unwrap().is_string(), "{id}: received_at");
            assert_eq!(&*stored, sent, "{id} comes back as it was accepted");
        }
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_walks_every_event_once_with_a_stable_order() {
    let app = app_with_events().await;
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut query = "limit=3".to_owned();
    loop {
        let (status, body) = get(&app, &format!("/v1/events?{query}")).await;
        assert_eq!(status, 200);
        let page: Vec<String> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        pages.push(page.len());
        seen.extend(page);
        match body["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, [3, 3, 1]);
    assert_eq!(seen, ids(&app, "").await);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 7);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_exactly_limit_events_has_no_next_cursor() {
    let app = app_with_events().await;
    let (_, body) = get(&app, "/v1/events?type=page.viewed&limit=3").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    assert_eq!(body["next_cursor"], Value::Null);
    let (_, body) = get(&app, "/v1/events?type=page.viewed&limit=2").await;
    assert!(body["next_cursor"].is_string());
    let (_, body) = get(&app, "/v1/events?type=none").await;
    assert_eq!(body, json!({"events": [], "next_cursor": null}));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lookup_finds_by_key_and_404s_otherwise() {
    let app = app_with_events().await;
    let (status, body) = get(&app, "/v1/events/lookup?source=%2Fshop&id=a5").await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "order.placed");
    let (status, body) = get(&app, "/v1/events/lookup?source=%2Fweb&id=a5").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_fill_empty_buckets_and_group_by_type() {
    let app = app_with_events().await;

    let (status, body) = get(
        &app,
        "/v1/stats/counts?bucket=hour&since=2024-05-01T10:00:00Z&until=2024-05-01T14:00:00Z",
    )
    .await;

    assert_eq!(status, 200, "{body}");
    let counts: Vec<i64> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [3, 2, 0, 2]);
    assert_eq!(body["buckets"][2]["start"], "2024-05-01T12:00:00Z");

    let (_, body) = get(
        &app,
        "/v1/stats/counts?bucket=hour&since=2024-05-01T10:00:00Z&until=2024-05-01T14:00:00Z&group_by=type&type=page.*",
    )
    .await;
    assert_eq!(
        body["buckets"][0]["by_type"],
        json!({"page.left": 1, "page.viewed": 2})
    );
    assert_eq!(body["buckets"][3]["by_type"], json!({"page.viewed": 1}));
    assert_eq!(body["buckets"][1]["count"], 0);

    let (_, body) = get(&app, "/v1/stats/counts?bucket=day&since=2024-05-01T00:00:00Z&until=2024-05-02T00:00:00Z&source=%2Fshop").await;
    assert_eq!(
        body["buckets"],
        json!([{"start": "2024-05-01T00:00:00Z", "count": 2}])
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_agree_with_the_list() {
    let app = app_with_events().await;
    let (_, body) = get(&app, "/v1/stats/counts?bucket=day&since=2024-05-01T00:00:00Z&until=2024-05-02T00:00:00Z&subject=user%2F1").await;
    assert_eq!(
        body["buckets"][0]["count"].as_i64().unwrap(),
        ids(&app, "subject=user/1").await.len() as i64
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_parameter_is_a_400_naming_it() {
    let app = app_with_events().await;
    let (_, first) = get(&app, "/v1/events?type=page.viewed&limit=1").await;
    let foreign_cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let cases = [
        ("/v1/events?colour=red", "colour", "unknown_parameter"),
        ("/v1/events?limit=0", "limit", "invalid_parameter"),
        ("/v1/events?limit=1001", "limit", "invalid_parameter"),
        ("/v1/events?limit=abc", "limit", "invalid_parameter"),
        ("/v1/events?since=yesterday", "since", "invalid_parameter"),
        (
            "/v1/events?until=2024-13-01T00:00:00Z",
            "until",
            "invalid_parameter",
        ),
        ("/v1/events?type=a*b", "type", "invalid_parameter"),
        ("/v1/events?type=", "type", "invalid_parameter"),
        ("/v1/events?cursor=nonsense", "cursor", "invalid_cursor"),
        (
            &*format!("/v1/events?type=page.left&cursor={foreign_cursor}"),
            "cursor",
            "invalid_cursor",
        ),
        ("/v1/events/lookup?source=%2Fweb", "id", "missing_parameter"),
        (
            "/v1/events/lookup?id=a1&extra=1",
            "extra",
            "unknown_parameter",
        ),
        (
            "/v1/stats/counts?since=2024-05-01T00:00:00Z",
            "bucket",
            "missing_parameter",
        ),
        ("/v1/stats/counts?bucket=hour", "since", "missing_parameter"),
        (
            "/v1/stats/counts?bucket=week&since=2024-05-01T00:00:00Z",
            "bucket",
            "invalid_parameter",
        ),
        (
            "/v1/stats/counts?bucket=minute&since=2000-01-01T00:00:00Z",
            "since",
            "too_many_buckets",
        ),
        (
            "/v1/stats/counts?bucket=hour&since=2024-05-01T00:00:00Z&group_by=source",
            "group_by",
            "invalid_parameter",
        ),
    ];
    for (path, parameter, code) in cases {
        let (status, body) = get(&app, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert_eq!(
            body["error"]["details"][0]["parameter"], parameter,
            "{path}: {body}"
        );
    }
    app.cleanup().await;
}

/// Every page of `query` at `limit`, followed through `next_cursor`, as ids.
async fn all_pages(app: &TestApp, query: &str, limit: u32) -> Vec<String> {
    let mut collected = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let path = match &cursor {
            Some(cursor) => format!("/v1/events?{query}&limit={limit}&cursor={cursor}"),
            None => format!("/v1/events?{query}&limit={limit}"),
        };
        let (status, body) = get(app, &path).await;
        assert_eq!(status, 200, "{body}");
        let page = body["events"].as_array().unwrap();
        assert!(page.len() <= limit as usize);
        collected.extend(page.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return collected,
        }
    }
    panic!("more than 20 pages for {query}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_pages_merge_the_matching_types_in_time_order() {
    let app = app_with_events().await;

    // page.viewed, page.left and pageant.started interleave in time; pages of one and two cut
    // across the types, and no event is skipped or repeated.
    for limit in [1, 2, 3] {
        assert_eq!(
            all_pages(&app, "type=page*", limit).await,
            ["a7", "a4", "a3", "a2", "a1"],
            "limit {limit}"
        );
    }
    assert_eq!(
        all_pages(
            &app,
            "type=page.*&source=/web&since=2024-05-01T10:05:00Z&until=2024-05-01T13:00:01Z",
            1
        )
        .await,
        ["a7", "a3", "a2"]
    );
    assert_eq!(
        all_pages(&app, "type=order.*&subject=user/3", 1).await,
        ["a6"]
    );
    // A prefix past every stored type, and one between two types, match nothing.
    assert!(ids(&app, "type=zzz.*").await.is_empty());
    assert!(ids(&app, "type=pagea.*").await.is_empty());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_alone_or_with_a_type_merges_that_sources_types_in_time_order() {
    let app = app_with_events().await;

    // /web holds page.viewed, page.left and pageant.started, interleaved in time.
    for limit in [1, 2, 10] {
        assert_eq!(
            all_pages(&app, "source=/web", limit).await,
            ["a7", "a4", "a3", "a2", "a1"],
            "limit {limit}"
        );
    }
    assert_eq!(
        all_pages(&app, "source=/web&type=page.*", 1).await,
        ["a7", "a3", "a2", "a1"]
    );
    assert_eq!(
        all_pages(&app, "source=/web&type=page.viewed", 2).await,
        ["a7", "a2", "a1"]
    );
    assert_eq!(
        all_pages(&app, "source=/shop&until=2024-05-01T13:00:00Z", 1).await,
        ["a5"]
    );
    assert!(ids(&app, "source=/shop&type=page.*").await.is_empty());
    assert!(ids(&app, "source=/nowhere").await.is_empty());
    app.cleanup().await;
}

/// The merged-keys statement (a source or a type prefix) and the keyset cursor are raw SQL, which
/// diesel would parse and plan on every run; they must stay prepared on the connection instead.
#[tokio::test(flavor = "multi_thread")]
async fn raw_read_statements_stay_prepared_on_the_connection() {
    use consumer::read::query::{list_events, params::list_query};
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = BigInt)]
        count: i64,
    }
    let app = app_with_events().await;
    let mut connection = app.db().await;
    let first_page = list_events(
        &mut connection,
        &list_query(Some("type=page.viewed&limit=1")).unwrap(),
    )
    .await
    .unwrap();
    let cursor = first_page.next_cursor.expect("a second page");
    for query in [
        "source=/web&limit=1".to_owned(),
        "type=page.*&limit=1".to_owned(),
        format!("type=page.viewed&limit=1&cursor={cursor}"),
    ] {
        let query = list_query(Some(&query)).unwrap();
        list_events(&mut connection, &query).await.unwrap();
    }
    let prepared: Prepared = diesel::sql_query(
        "SELECT count(*) AS count FROM pg_prepared_statements \
         WHERE statement LIKE 'WITH RECURSIVE types%' OR statement LIKE '%(event_time, seq) < (%'",
    )
    .get_result(&mut connection)
    .await
    .unwrap();
    assert!(
        prepared.count >= 3,
        "{} of the raw statements are prepared",
        prepared.count
    );
    drop(connection);
    app.cleanup().await;
}

/// Filters name sources and types by text while the indexes hold their ids: a name never stored
/// has no id and must match nothing, in every route, rather than fail or match everything.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_or_type_never_stored_matches_nothing() {
    let app = app_with_events().await;
    let empty = json!({"events": [], "next_cursor": null});
    for query in [
        "/v1/events?source=%2Fnowhere",
        "/v1/events?source=%2Fnowhere&type=page.viewed",
        "/v1/events?source=%2Fweb&type=order.placed",
        "/v1/events?type=nothing.*",
        "/v1/events?source=%2Fnowhere&type=page.*",
        "/v1/events?source=%2Fnowhere&subject=user%2F1",
    ] {
        let (status, body) = get(&app, query).await;
        assert_eq!((status, &body), (200, &empty), "{query}");
    }
    let (status, _) = get(&app, "/v1/events/lookup?source=%2Fnowhere&id=a1").await;
    assert_eq!(status, 404);
    for filter in ["source=%2Fnowhere", "type=none", "type=nothing.*"] {
        let (status, body) = get(
            &app,
            &format!("/v1/stats/counts?bucket=day&since=2024-05-01T00:00:00Z&until=2024-05-02T00:00:00Z&{filter}"),
        )
        .await;
        assert_eq!(status, 200, "{filter}");
        assert_eq!(body["buckets"][0]["count"], 0, "{filter}: {body}");
    }
    // And the stored names still match.
    let (_, body) = get(&app, "/v1/events?source=%2Fweb&type=page.*").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 4);
    app.cleanup().await;
}
