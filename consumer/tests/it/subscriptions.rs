//! The subscriptions API: create, read, replace, delete, validation, sink address safety.

use serde_json::json;

use crate::helpers::{event, spawn_app, spawn_app_with};
use crate::openapi::assert_matches;

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_round_trips_and_its_secret_is_shown_only_at_creation() {
    let app = spawn_app().await;
    let (status, created) = app
        .api(
            "POST",
            "/v1/subscriptions",
            Some(json!({
                "sink": "http://127.0.0.1:9/hook",
                "protocol": "HTTP",
                "filters": [{"prefix": {"type": "com.shop."}}],
                "delivery": {"attempts": 3}
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["format"], "binary");
    assert_eq!(created["status"], "active");
    assert_eq!(created["delivery"]["attempts"], 3);
    assert_eq!(created["delivery"]["timeout_ms"], 10_000);
    assert_matches("SubscriptionCreated", &created);

    let (status, shown) = app
        .api("GET", &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert!(shown.get("secret").is_none(), "{shown}");
    assert_eq!(shown["filters"], json!([{"prefix": {"type": "com.shop."}}]));
    assert_eq!(shown["backlog"]["queued_messages"], 0);
    assert_matches("Subscription", &shown);
    let (_, listed) = app.api("GET", "/v1/subscriptions", None).await;
    assert_eq!(listed["subscriptions"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains("whsec_"));
    assert_matches("SubscriptionList", &listed);

    let (status, replaced) = app
        .api(
            "PUT",
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"sink": "http://127.0.0.1:9/other", "format": "structured", "status": "paused"})),
        )
        .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["sink"], "http://127.0.0.1:9/other");
    assert_eq!(replaced["status"], "paused");

    let (status, rotated) = app
        .api("POST", &format!("/v1/subscriptions/{id}/secret"), None)
        .await;
    assert_eq!(status, 200);
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_ne!(rotated["secret"], created["secret"]);
    assert!(rotated["previous_secret_expires_at"].is_string());
    assert_matches("SubscriptionCreated", &rotated);

    let queue = consumer::deliver::queues::queue_name(&app.topology(), id.parse().unwrap());
    assert_eq!(app.queue_depth(&queue).await, 0);
    let (status, _) = app
        .api("DELETE", &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, gone) = app
        .api("GET", &format!("/v1/subscriptions/{id}"), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(gone["error"]["code"], "subscription_not_found");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_subscription_is_refused_with_every_problem_and_its_pointer() {
    let app = spawn_app().await;
    let (status, body) = app
        .api(
            "POST",
            "/v1/subscriptions",
            Some(json!({
                "sink": "ftp://example.com/",
                "filters": [{"exact": {"type": ""}}, {"sql": "type = 'a'"}],
                "delivery": {"attempts": 0},
                "ordering": "type"
            })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_subscription");
    assert_matches("Error", &body);
    let pointers: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|problem| problem["pointer"].as_str().unwrap())
        .collect();
    for expected in [
        "/sink",
        "/filters/0/exact/type",
        "/filters/1/sql",
        "/delivery/attempts",
        "/ordering",
    ] {
        assert!(
            pointers.contains(&expected),
            "{expected} missing from {pointers:?}"
        );
    }
    let (_, listed) = app.api("GET", "/v1/subscriptions", None).await;
    assert_eq!(listed["subscriptions"], json!([]));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_address_sink_is_refused_by_default() {
    let app = spawn_app_with(&[("WARREN_DELIVERY_ALLOW_PRIVATE_SINKS", "off")]).await;
    for sink in [
        "http://127.0.0.1:8080/hook",
        "http://localhost:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
    ] {
        let (status, body) = app
            .api("POST", "/v1/subscriptions", Some(json!({"sink": sink})))
            .await;
        assert_eq!(status, 400, "{sink}: {body}");
        assert_eq!(
            body["error"]["details"][0]["code"], "sink_not_allowed",
            "{sink}: {body}"
        );
    }
    let (_, listed) = app.api("GET", "/v1/subscriptions", None).await;
    assert_eq!(listed["subscriptions"], json!([]));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ordering_cannot_change_after_creation() {
    let app = spawn_app().await;
    let (id, _) = app
        .subscribe(json!({"sink": "http://127.0.0.1:9/", "ordering": "subject"}))
        .await;
    let (status, body) = app
        .api(
            "PUT",
            &format!("/v1/subscriptions/{id}"),
            Some(json!({"sink": "http://127.0.0.1:9/"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "ordering_fixed");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_s_queue_gets_only_the_types_its_filters_name_and_follows_a_put() {
    // No delivery worker: what the queue holds is what the bindings routed to it.
    let app = spawn_app().await;
    let body =
        |filters: serde_json::Value| json!({"sink": "http://127.0.0.1:9/hook", "filters": filters});
    let (status, created) = app
        .api(
            "POST",
            "/v1/subscriptions",
            Some(body(json!([{"exact": {"type": "com.example.a"}}]))),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let queue = format!(
        "{}.subscription.{}",
        app.topology().prefix(),
        id.replace('-', "")
    );
    let post_both = || async {
        for kind in ["com.example.a", "com.example.b"] {
            assert_eq!(app.post_event(&event(kind)).await.status(), 202);
        }
    };
    post_both().await;
    app.wait_for_depth(&queue, 1).await;

    let path = format!("/v1/subscriptions/{id}");
    let (status, _) = app
        .api(
            "PUT",
            &path,
            Some(body(json!([{"exact": {"type": "com.example.b"}}]))),
        )
        .await;
    assert_eq!(status, 200);
    post_both().await;
    app.wait_for_depth(&queue, 2).await;

    let (status, _) = app
        .api(
            "PUT",
            &path,
            Some(body(json!([{"suffix": {"subject": "x"}}]))),
        )
        .await;
    assert_eq!(status, 200);
    post_both().await;
    app.wait_for_depth(&queue, 4).await;
    app.cleanup().await;
}
