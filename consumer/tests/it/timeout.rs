//! A query that cannot finish is cut by the statement timeout and answered with a JSON 503, not
//! left running.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::Value;

use crate::helpers::spawn_app_with;

#[tokio::test(flavor = "multi_thread")]
async fn stuck_query_is_cut_by_the_statement_timeout_with_a_json_503() {
    let app = spawn_app_with(&[("WARREN_STATEMENT_TIMEOUT_MS", "200")]).await;
    let mut blocker = app.db().await;
    let (lock_taken, lock_is_held) = tokio::sync::oneshot::channel::<()>();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    // Hold an exclusive lock on the table so every read blocks until the timeout.
    let holder = tokio::spawn(async move {
        blocker
            .transaction::<_, diesel::result::Error, _>(async |connection| {
                diesel::sql_query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                    .execute(connection)
                    .await?;
                let _ = lock_taken.send(());
                let _ = finished.await;
                Ok(())
            })
            .await
            .unwrap();
    });
    lock_is_held.await.unwrap();

    let started = Instant::now();
    let response = app
        .client
        .get(app.consumer_url("/v1/stats/counts?bucket=day&since=2024-01-01T00:00:00Z"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "query_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let _ = done.send(());
    holder.await.unwrap();
    app.cleanup().await;
}
