//! Fan-out delivery end to end: gateway → RabbitMQ → delivery worker → a real HTTP sink on
//! 127.0.0.1, with the subscription's filters, signatures, retries, dead letters, pauses,
//! ordering and replay.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{event, spawn_app, spawn_app_with, TestApp};
use crate::openapi::assert_matches;
use crate::sink::{verify, Answer, TestSink};

const WAIT: Duration = Duration::from_secs(20);

fn ids(received: &[crate::sink::Received]) -> BTreeSet<String> {
    received.iter().map(|r| r.event_id()).collect()
}

async fn app_with_worker() -> TestApp {
    let mut app = spawn_app().await;
    app.start_delivery().await;
    app
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_in_every_dialect_deliver_exactly_the_matching_events() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    let subscriptions = [
        (
            "/exact",
            json!([{"exact": {"type": "com.shop.order.placed"}}]),
        ),
        ("/prefix", json!([{"prefix": {"type": "com.shop."}}])),
        ("/suffix", json!([{"suffix": {"type": ".cancelled"}}])),
        (
            "/all",
            json!([{"all": [{"prefix": {"type": "com.shop."}}, {"exact": {"region": "eu"}}]}]),
        ),
        (
            "/any",
            json!([{"any": [{"exact": {"subject": "vip"}}, {"suffix": {"type": ".viewed"}}]}]),
        ),
        ("/not", json!([{"not": {"prefix": {"type": "com.shop."}}}])),
        ("/none", json!([{"exact": {"type": "nobody.sends.this"}}])),
    ];
    for (path, filters) in &subscriptions {
        app.subscribe(json!({"sink": sink.url(path), "filters": filters}))
            .await;
    }
    let with = |kind: &str, id: &str, extra: Value| {
        let mut value = event(kind);
        value["id"] = json!(id);
        for (name, v) in extra.as_object().unwrap() {
            value[name] = v.clone();
        }
        value
    };
    let events = vec![
        with(
            "com.shop.order.placed",
            "placed-eu",
            json!({"region": "eu"}),
        ),
        with(
            "com.shop.order.placed",
            "placed-us",
            json!({"region": "us", "subject": "vip"}),
        ),
        with("com.shop.order.cancelled", "cancelled", json!({})),
        with("com.web.page.viewed", "viewed", json!({})),
        with("com.web.login", "login", json!({})),
    ];
    assert_eq!(app.post_batch(events).await.status(), 202);

    let expect = |names: &[&str]| {
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<BTreeSet<_>>()
    };
    let expected = [
        ("/exact", expect(&["placed-eu", "placed-us"])),
        ("/prefix", expect(&["placed-eu", "placed-us", "cancelled"])),
        ("/suffix", expect(&["cancelled"])),
        ("/all", expect(&["placed-eu"])),
        ("/any", expect(&["placed-us", "viewed"])),
        ("/not", expect(&["viewed", "login"])),
    ];
    for (path, want) in &expected {
        let got = sink.wait_delivered(path, want.len(), WAIT).await;
        assert_eq!(&ids(&got), want, "{path}");
    }
    // Nothing more arrives for any of them (the worker has had the whole batch for a while).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (path, want) in &expected {
        assert_eq!(
            sink.delivered(path).len(),
            want.len(),
            "{path} got extra deliveries"
        );
    }
    assert!(sink.received().iter().all(|r| r.path != "/none"));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_cloudevents_binary_mode_signed_per_standard_webhooks() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    let (_, secret) = app
        .subscribe(json!({"sink": sink.url("/binary"), "protocolsettings": {"headers": {"authorization": "Bearer t"}}}))
        .await;
    let (_, structured_secret) = app
        .subscribe(json!({"sink": sink.url("/structured"), "format": "structured"}))
        .await;
    let mut sent = event("com.example.signed");
    sent["subject"] = json!("café");
    sent["data"] = json!({"amount": 12});
    assert_eq!(app.post_event(&sent).await.status(), 202);

    let binary = sink.wait_delivered("/binary", 1, WAIT).await.remove(0);
    assert!(
        verify(&binary, &secret),
        "signature does not verify: {:?}",
        binary.headers
    );
    assert!(!verify(&binary, &structured_secret));
    assert_eq!(binary.header("ce-id"), sent["id"].as_str());
    assert_eq!(binary.header("ce-type"), Some("com.example.signed"));
    assert_eq!(binary.header("ce-subject"), Some("caf%C3%A9"));
    assert_eq!(binary.header("content-type"), Some("application/json"));
    assert_eq!(binary.header("authorization"), Some("Bearer t"));
    assert_eq!(
        serde_json::from_slice::<Value>(&binary.body).unwrap(),
        json!({"amount": 12})
    );

    let structured = sink.wait_delivered("/structured", 1, WAIT).await.remove(0);
    assert!(verify(&structured, &structured_secret));
    let body: Value = serde_json::from_slice(&structured.body).unwrap();
    assert_eq!(body["id"], sent["id"]);
    assert_eq!(body["data"], json!({"amount": 12}));
    // One event, one webhook-id, whichever subscription delivers it.
    assert_eq!(binary.webhook_id(), structured.webhook_id());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_answering_500_then_200_gets_the_event_on_a_backoff_schedule_with_one_webhook_id() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    sink.respond(|_, earlier| Answer::status(if earlier < 3 { 500 } else { 200 }));
    let (_, secret) = app
        .subscribe(json!({"sink": sink.url("/flaky"), "delivery": {"attempts": 5, "backoff_initial_ms": 200}}))
        .await;
    assert_eq!(
        app.post_event(&event("com.example.flaky")).await.status(),
        202
    );

    sink.wait_delivered("/flaky", 1, WAIT).await;
    let attempts = sink.received();
    assert_eq!(attempts.len(), 4, "three failures and the success");
    assert!(attempts
        .iter()
        .all(|a| a.webhook_id() == attempts[0].webhook_id()));
    assert!(attempts.iter().all(|a| verify(a, &secret)));
    // Waits of 200, 400, 800 ms, each drawn from its upper half.
    for (n, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let full = Duration::from_millis(200 << n);
        assert!(gap >= full / 2, "wait {n}: {gap:?} < {:?}", full / 2);
        assert!(
            gap <= full + Duration::from_millis(1500),
            "wait {n}: {gap:?} ≫ {full:?}"
        );
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_429_with_retry_after_nothing_is_sent_to_that_sink_until_then() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    let first = std::sync::atomic::AtomicBool::new(true);
    sink.respond(move |_, _| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            Answer {
                retry_after: Some(2),
                ..Answer::status(429)
            }
        } else {
            Answer::status(204)
        }
    });
    app.subscribe(json!({"sink": sink.url("/busy"), "delivery": {"backoff_initial_ms": 50}}))
        .await;
    assert_eq!(
        app.post_event(&event("com.example.busy")).await.status(),
        202
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink.received().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "nothing arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Events accepted during the hold wait for it too, without using an attempt.
    let batch: Vec<Value> = (0..3).map(|_| event("com.example.busy")).collect();
    assert_eq!(app.post_batch(batch).await.status(), 202);
    sink.wait_delivered("/busy", 4, WAIT).await;
    let attempts = sink.received();
    assert_eq!(
        attempts.len(),
        5,
        "one 429, then each of the four events once"
    );
    for later in &attempts[1..] {
        assert!(
            later.at - attempts[0].at >= Duration::from_secs(2),
            "a request {:?} after the 429 that asked for 2 s",
            later.at - attempts[0].at
        );
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_limit_the_event_goes_to_dead_letters_and_redelivery_delivers_it() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    sink.respond(|_, _| Answer::status(503));
    let (id, _) = app
        .subscribe(json!({"sink": sink.url("/down"), "delivery": {"attempts": 3, "backoff_initial_ms": 50}}))
        .await;
    let sent = event("com.example.doomed");
    assert_eq!(app.post_event(&sent).await.status(), 202);

    let path = format!("/v1/subscriptions/{id}/dead-letters");
    let deadline = tokio::time::Instant::now() + WAIT;
    let letters = loop {
        let (status, body) = app.api("GET", &path, None).await;
        assert_eq!(status, 200);
        if !body["dead_letters"].as_array().unwrap().is_empty() {
            assert_matches("DeadLetterPage", &body);
            break body["dead_letters"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters[0]["event"]["id"], sent["id"]);
    assert_eq!(letters[0]["attempts"], 3);
    assert_eq!(letters[0]["last_status"], 503);
    assert_eq!(sink.received().len(), 3);

    sink.respond(|_, _| Answer::status(200));
    let (status, body) = app.api("POST", &format!("{path}/redeliver"), None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["redelivering"], 1);
    assert_matches("Redelivering", &body);
    let delivered = sink.wait_delivered("/down", 1, WAIT).await;
    assert_eq!(delivered[0].event_id(), sent["id"].as_str().unwrap());
    let (_, body) = app.api("GET", &path, None).await;
    assert_eq!(body["dead_letters"], json!([]));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_410_pauses_the_subscription_and_resuming_delivers_what_waited() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    sink.respond(|_, _| Answer::status(410));
    let (id, _) = app.subscribe(json!({"sink": sink.url("/gone")})).await;
    let first = event("com.example.gone");
    assert_eq!(app.post_event(&first).await.status(), 202);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, shown) = app
            .api("GET", &format!("/v1/subscriptions/{id}"), None)
            .await;
        if shown["status"] == "paused" {
            assert!(
                shown["status_reason"].as_str().unwrap().contains("410"),
                "{shown}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never paused: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While paused, events wait in the subscription's queue; nothing is attempted.
    let second = event("com.example.gone");
    assert_eq!(app.post_event(&second).await.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.received().len(), 1);

    sink.respond(|_, _| Answer::status(204));
    let (status, _) = app
        .api(
            "PUT",
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"sink": sink.url("/gone"), "status": "active"})),
        )
        .await;
    assert_eq!(status, 200);
    let delivered = sink.wait_delivered("/gone", 2, WAIT).await;
    let want: BTreeSet<String> = [&first, &second]
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids(&delivered), want);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sink_failing_longer_than_the_pause_period_is_paused() {
    let mut app = spawn_app_with(&[("WARREN_DELIVERY_PAUSE_AFTER_SECS", "1")]).await;
    app.start_delivery().await;
    let sink = TestSink::start().await;
    sink.respond(|_, _| Answer::status(500));
    let (id, _) = app
        .subscribe(json!({"sink": sink.url("/failing"), "delivery": {"attempts": 50, "backoff_initial_ms": 100, "backoff_max_ms": 200}}))
        .await;
    assert_eq!(
        app.post_event(&event("com.example.failing")).await.status(),
        202
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, shown) = app
            .api("GET", &format!("/v1/subscriptions/{id}"), None)
            .await;
        if shown["status"] == "paused" {
            assert!(
                shown["status_reason"]
                    .as_str()
                    .unwrap()
                    .contains("failed every attempt"),
                "{shown}"
            );
            assert_eq!(shown["backlog"]["retrying"], 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never paused: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.cleanup().await;
}

/// A new subscription to `event_type` with a sink at `path`, and a replay of `[since, until)`
/// asked for it; returns the sink and the subscription's id.
async fn replay_to_a_new_subscription(
    app: &TestApp,
    path: &str,
    event_type: &str,
    since: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
) -> (TestSink, String) {
    let sink = TestSink::start().await;
    let (id, _) = app
        .subscribe(json!({"sink": sink.url(path), "filters": [{"exact": {"type": event_type}}]}))
        .await;
    let (status, body) = app
        .api(
            "POST",
            &format!("/v1/subscriptions/{id}/replay"),
            Some(json!({"since": since.to_rfc3339(), "until": until.to_rfc3339()})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_matches("ReplayStarted", &body);
    (sink, id)
}

/// The subscription's replay list once its newest replay is done.
async fn wait_for_the_replay_to_finish(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, listed) = app
            .api("GET", &format!("/v1/subscriptions/{id}/replay"), None)
            .await;
        if listed["replays"][0]["status"] == "done" {
            return listed;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_of_a_past_window_delivers_exactly_the_matching_stored_events() {
    let app = app_with_worker().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut matching = Vec::new();
    let mut batch = Vec::new();
    for n in 0..30 {
        let kind = if n % 3 == 0 {
            "com.example.replayed"
        } else {
            "com.example.other"
        };
        let value = event(kind);
        if n % 3 == 0 {
            matching.push(value["id"].as_str().unwrap().to_owned());
        }
        batch.push(value);
    }
    assert_eq!(app.post_batch(batch).await.status(), 202);
    app.wait_for_rows(30).await;
    let after = chrono::Utc::now();
    // Events after the window are not replayed (nor delivered live: the subscription comes later).
    assert_eq!(
        app.post_event(&event("com.example.replayed"))
            .await
            .status(),
        202
    );
    app.wait_for_rows(31).await;

    let (sink, id) =
        replay_to_a_new_subscription(&app, "/replay", "com.example.replayed", before, after).await;
    let delivered = sink.wait_delivered("/replay", matching.len(), WAIT).await;
    assert_eq!(ids(&delivered), matching.into_iter().collect());
    assert!(delivered
        .iter()
        .all(|r| r.header("warren-replay") == Some("true")));
    let listed = wait_for_the_replay_to_finish(&app, &id).await;
    assert_matches("ReplayList", &listed);
    assert_eq!(listed["replays"][0]["delivered"], 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.delivered("/replay").len(), 10);
    app.cleanup().await;
}

/// More events than a replay reads in one page, received over a few seconds in batches that
/// share a receive time, so pages end inside a batch and stretches of receive time both fill
/// and fall short.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_across_many_pages_delivers_each_stored_event_once() {
    let app = app_with_worker().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut sent = BTreeSet::new();
    for _ in 0..7 {
        let batch: Vec<Value> = (0..70).map(|_| event("com.example.paged")).collect();
        sent.extend(batch.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        assert_eq!(app.post_batch(batch).await.status(), 202);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    app.wait_for_rows(490).await;
    let after = chrono::Utc::now();

    let (sink, id) =
        replay_to_a_new_subscription(&app, "/paged", "com.example.paged", before, after).await;
    let delivered = sink.wait_delivered("/paged", sent.len(), WAIT).await;
    assert_eq!(ids(&delivered), sent);
    let listed = wait_for_the_replay_to_finish(&app, &id).await;
    assert_eq!(listed["replays"][0]["delivered"], 490);
    assert_eq!(sink.delivered("/paged").len(), 490, "each event once");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ordered_subscription_holds_back_only_the_failing_key() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    // The first event of key "a" fails three times; everything else succeeds at once.
    sink.respond(|received, earlier| {
        let first_of_a =
            received.header("ce-subject") == Some("a") && received.event_id().ends_with("-0");
        Answer::status(if first_of_a && earlier < 3 { 500 } else { 204 })
    });
    app.subscribe(json!({
        "sink": sink.url("/ordered"),
        "ordering": "subject",
        "delivery": {"backoff_initial_ms": 300}
    }))
    .await;
    let mut batch = Vec::new();
    for n in 0..5 {
        for key in ["a", "b", "c"] {
            let mut value = event("com.example.ordered");
            value["id"] = json!(format!("{key}-{n}"));
            value["subject"] = json!(key);
            batch.push(value);
        }
    }
    assert_eq!(app.post_batch(batch).await.status(), 202);
    let delivered = sink.wait_delivered("/ordered", 15, WAIT).await;
    for key in ["a", "b", "c"] {
        let order: Vec<String> = delivered
            .iter()
            .filter(|r| r.header("ce-subject") == Some(key))
            .map(|r| r.event_id())
            .collect();
        let want: Vec<String> = (0..5).map(|n| format!("{key}-{n}")).collect();
        assert_eq!(order, want, "key {key} out of order");
    }
    // b and c were not held back: all of them arrived before a-0's retries ended.
    let a0 = delivered.iter().find(|r| r.event_id() == "a-0").unwrap().at;
    let last_other = delivered
        .iter()
        .filter(|r| r.header("ce-subject") != Some("a"))
        .map(|r| r.at)
        .max()
        .unwrap();
    assert!(last_other < a0, "other keys waited for the failing key");
    assert_eq!(
        sink.received().len(),
        18,
        "15 deliveries and a-0's three failures"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ordered_subscription_delivers_keys_of_different_messages_in_parallel() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    // Slow enough that a worker taking one message at a time could never overlap two requests.
    sink.respond(|_, _| Answer {
        delay: Duration::from_millis(150),
        ..Answer::status(204)
    });
    app.subscribe(json!({"sink": sink.url("/ordered"), "ordering": "subject"}))
        .await;
    // One request each, the next sent after the 202: each event is its own broker message.
    let keys = ["a", "b", "c", "d"];
    for n in 0..4 {
        for key in keys {
            let mut value = event("com.example.ordered");
            value["id"] = json!(format!("{key}-{n}"));
            value["subject"] = json!(key);
            assert_eq!(app.post_event(&value).await.status(), 202);
        }
    }
    let delivered = sink.wait_delivered("/ordered", 16, WAIT).await;
    for key in keys {
        let of_key: Vec<&crate::sink::Received> = delivered
            .iter()
            .filter(|r| r.header("ce-subject") == Some(key))
            .collect();
        let order: Vec<String> = of_key.iter().map(|r| r.event_id()).collect();
        let want: Vec<String> = (0..4).map(|n| format!("{key}-{n}")).collect();
        assert_eq!(order, want, "key {key} out of order");
        for pair in of_key.windows(2) {
            assert!(
                pair[1].started >= pair[0].at,
                "key {key}: {} sent before {} was answered",
                pair[1].event_id(),
                pair[0].event_id()
            );
        }
    }
    let overlapping = delivered.iter().any(|one| {
        delivered.iter().any(|other| {
            one.header("ce-subject") != other.header("ce-subject")
                && one.started < other.at
                && other.started < one.at
        })
    });
    let first = delivered.iter().map(|r| r.started).min().unwrap();
    let timeline: Vec<String> = delivered
        .iter()
        .map(|r| {
            format!(
                "{} {}-{} ms",
                r.event_id(),
                (r.started - first).as_millis(),
                (r.at - first).as_millis()
            )
        })
        .collect();
    assert!(
        overlapping,
        "no two keys were ever delivered at the same time: {timeline:?}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_sink_does_not_hold_back_another_subscription() {
    let app = app_with_worker().await;
    let slow = TestSink::start().await;
    slow.respond(|_, _| Answer {
        delay: Duration::from_secs(2),
        ..Answer::status(204)
    });
    let fast = TestSink::start().await;
    app.subscribe(json!({"sink": slow.url("/slow"), "delivery": {"max_in_flight": 2}}))
        .await;
    app.subscribe(json!({"sink": fast.url("/fast")})).await;
    let started = std::time::Instant::now();
    for _ in 0..10 {
        let batch: Vec<Value> = (0..10).map(|_| event("com.example.fanout")).collect();
        assert_eq!(app.post_batch(batch).await.status(), 202);
    }
    fast.wait_delivered("/fast", 100, WAIT).await;
    let fast_done = started.elapsed();
    // The slow sink takes 2 s per request, two at a time: 100 events need 100 s.
    assert!(slow.delivered("/slow").len() < 20);
    assert!(
        fast_done < Duration::from_secs(5),
        "fast sink took {fast_done:?}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coalesced_single_events_of_several_types_reach_each_subscription_once() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    app.subscribe(json!({"sink": sink.url("/a"), "types": ["com.example.a"]}))
        .await;
    app.subscribe(json!({"sink": sink.url("/b"), "types": ["com.example.b"]}))
        .await;
    // Sent at once, the singles share messages of both types (routed by `CC`).
    let events: Vec<Value> = (0..40)
        .map(|n| event(["com.example.a", "com.example.b"][n % 2]))
        .collect();
    let of_type = |kind: &str| -> BTreeSet<String> {
        events
            .iter()
            .filter(|e| e["type"] == kind)
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let statuses = app.post_singles_at_once(&events).await;
    assert!(statuses.iter().all(|status| *status == 202), "{statuses:?}");

    for (path, kind) in [("/a", "com.example.a"), ("/b", "com.example.b")] {
        let got = sink.wait_delivered(path, 20, WAIT).await;
        assert_eq!(ids(&got), of_type(kind), "{path}");
    }
    // Nothing arrives twice, though every shared message reached both queues.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.delivered("/a").len(), 20);
    assert_eq!(sink.delivered("/b").len(), 20);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn compressed_batches_are_delivered_event_by_event() {
    let mut app = spawn_app_with(&[("WARREN_PUBLISH_COMPRESSION", "lz4")]).await;
    app.start_delivery().await;
    let sink = TestSink::start().await;
    app.subscribe(json!({"sink": sink.url("/lz4")})).await;
    let batch: Vec<Value> = (0..20).map(|_| event("com.example.lz4")).collect();
    let sent: BTreeSet<String> = batch
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();

    assert_eq!(app.post_batch(batch).await.status(), 202);

    let received = sink.wait_delivered("/lz4", 20, WAIT).await;
    assert_eq!(ids(&received), sent);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_and_dead_letters_show_on_the_worker_metrics() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    let (id, _) = app.subscribe(json!({"sink": sink.url("/m")})).await;
    assert_eq!(app.post_event(&event("com.example.m")).await.status(), 202);
    sink.wait_delivered("/m", 1, WAIT).await;
    let delivered =
        format!("warren_delivery_attempts_total{{subscription=\"{id}\",outcome=\"delivered\"}} 1");
    let latency = format!("warren_delivery_latency_seconds_count{{subscription=\"{id}\"}} 1");
    // The sink counts a delivery when the request reaches it; the worker counts it when the
    // answer is back, a moment later.
    let deadline = std::time::Instant::now() + WAIT;
    let mut text = app.delivery_metrics().await;
    while !(text.contains(&delivered) && text.contains(&latency))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = app.delivery_metrics().await;
    }
    assert!(text.contains(&delivered), "{text}");
    assert!(text.contains(&latency), "{text}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_secret_key_signing_secrets_are_sealed_at_rest_and_still_sign() {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let mut app = spawn_app_with(&[("WARREN_DELIVERY_SECRET_KEY", key.as_str())]).await;
    app.start_delivery().await;
    let sink = TestSink::start().await;
    let (id, secret) = app.subscribe(json!({"sink": sink.url("/sealed")})).await;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();

    #[derive(diesel::QueryableByName)]
    struct Stored {
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        secret: Vec<u8>,
    }
    let mut db = app.db().await;
    let stored: Stored = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query("SELECT secret FROM subscriptions WHERE id = $1::uuid")
            .bind::<diesel::sql_types::Text, _>(&id),
        &mut db,
    )
    .await
    .unwrap();
    assert!(
        !stored
            .secret
            .windows(raw.len())
            .any(|window| window == raw.as_slice()),
        "the secret is stored in the clear"
    );

    assert_eq!(
        app.post_event(&event("com.example.sealed")).await.status(),
        202
    );
    let delivered = sink.wait_delivered("/sealed", 1, WAIT).await;
    assert!(verify(&delivered[0], &secret));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_subscription_s_queue_stays_deleted_while_workers_run() {
    let app = app_with_worker().await;
    let sink = TestSink::start().await;
    let (id, _) = app.subscribe(json!({"sink": sink.url("/deleted")})).await;
    assert_eq!(
        app.post_event(&event("com.example.deleted")).await.status(),
        202
    );
    sink.wait_delivered("/deleted", 1, WAIT).await;
    let (status, _) = app
        .api("DELETE", &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 204);
    // Several refreshes of the worker later, the queue has not come back.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let queue = consumer::deliver::queues::queue_name(&app.topology(), id.parse().unwrap());
    let connection = app.amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let exists = consumer::deliver::queues::exists(&channel, &app.topology(), id.parse().unwrap())
        .await
        .unwrap();
    assert!(
        !exists,
        "{queue} was declared again after the subscription was deleted"
    );
    assert_eq!(
        app.post_event(&event("com.example.deleted")).await.status(),
        202
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 1);
    app.cleanup().await;
}
