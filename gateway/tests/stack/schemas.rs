//! Through nginx: an admin registers a schema, every gateway enforces it within the documented
//! bound (the stack's default refresh, 5 s, plus one 2 s fetch), and nothing refused is stored.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{base_url, encode, with_key};

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_registered_through_nginx_is_enforced_by_the_gateways() {
    let base = base_url();
    let client = reqwest::Client::new();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let kind = format!("e2e.schema.{}", &suffix[..8]);
    let source = format!("/e2e/schemas/{}", &suffix[..8]);
    let schema = json!({"schema": {"type": "object", "required": ["sku"],
        "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}}}});
    let response = with_key(client.put(format!("{base}/v1/schemas/{kind}")), "admin")
        .json(&schema)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let named = format!(
        "https://warren.example/v1/schemas/{kind}/versions/{}",
        response.json::<Value>().await.unwrap()["version"]
    );
    let post = |sku: &str, dataschema: Option<&str>| {
        let mut event = json!({"specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(),
            "source": source, "type": kind, "data": {"sku": sku}});
        if let Some(dataschema) = dataschema {
            event["dataschema"] = json!(dataschema);
        }
        with_key(client.post(format!("{base}/v1/events")), "ingest")
            .header("content-type", "application/cloudevents+json")
            .body(event.to_string())
            .send()
    };
    // Naming the new version, a breaking event is refused as unknown until a gateway has it and
    // for its data after; both gateways behind nginx must have it within the bound.
    let bound = Duration::from_secs(5) + Duration::from_secs(2);
    let started = Instant::now();
    let mut enforced_in_a_row = 0;
    while enforced_in_a_row < 10 {
        let response = post("abc", Some(&named)).await.unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        if body["error"]["details"][0]["code"] == "schema_violation" {
            assert_eq!(body["error"]["details"][0]["pointer"], "/data/sku");
            enforced_in_a_row += 1;
        } else {
            enforced_in_a_row = 0;
        }
        assert!(
            started.elapsed() < bound,
            "not enforced everywhere within {bound:?}: {body}"
        );
    }
    let response = post("ABC-12", None).await.unwrap();
    assert_eq!(response.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page: Value = with_key(
            client.get(format!("{base}/v1/events?source={}", encode(&source))),
            "read",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let skus: Vec<&Value> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| &event["data"]["sku"])
            .collect();
        if !skus.is_empty() {
            assert_eq!(skus, [&json!("ABC-12")], "a refused event was stored");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the conforming event never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = with_key(client.delete(format!("{base}/v1/schemas/{kind}")), "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
