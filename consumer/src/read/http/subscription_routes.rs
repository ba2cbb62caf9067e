//! The subscriptions API (CloudEvents Subscriptions API shape): `/v1/subscriptions`,
//! `/v1/subscriptions/{id}`, its signing secret, dead letters and replays. Reading needs a read
//! or admin key, changing an admin key. Every query goes to the primary: a subscription just
//! created must be found by the next request.

use std::collections::BTreeSet;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use http::header::{HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};
use service_runtime::http_error::SharedError;
use service_runtime::http_json;
use uuid::Uuid;

use super::{admit, read_json, timed, write_connection, AppState};
use crate::deliver::problem::FieldProblem;
use crate::deliver::routing::{binding_keys, EVERY_KEY};
use crate::deliver::signature::SigningSecret;
use crate::deliver::subscription::SubscriptionSpec;
use crate::deliver::{replay, sink_address, store};
use crate::read::error::ReadError;

/// The largest subscription body accepted, in bytes.
pub const MAX_SUBSCRIPTION_BYTES: usize = 64 * 1024;
/// Most dead letters on one page.
const MAX_DEAD_LETTER_PAGE: i64 = 1_000;

/// A subscriptions path, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionPath {
    /// `/v1/subscriptions`.
    All,
    /// `/v1/subscriptions/{id}`.
    One(Uuid),
    /// `/v1/subscriptions/{id}/secret`: rotate the signing secret.
    Secret(Uuid),
    /// `/v1/subscriptions/{id}/dead-letters`.
    DeadLetters(Uuid),
    /// `/v1/subscriptions/{id}/dead-letters/redeliver`: re-send every dead letter.
    RedeliverAll(Uuid),
    /// `/v1/subscriptions/{id}/dead-letters/{seq}/redeliver`: re-send one.
    RedeliverOne(Uuid, i64),
    /// `/v1/subscriptions/{id}/replay`.
    Replay(Uuid),
}

impl SubscriptionPath {
    /// The route template, for metrics and the OpenAPI test.
    pub fn template(&self) -> &'static str {
        match self {
            Self::All => "/v1/subscriptions",
            Self::One(_) => "/v1/subscriptions/{id}",
            Self::Secret(_) => "/v1/subscriptions/{id}/secret",
            Self::DeadLetters(_) => "/v1/subscriptions/{id}/dead-letters",
            Self::RedeliverAll(_) => "/v1/subscriptions/{id}/dead-letters/redeliver",
            Self::RedeliverOne(..) => "/v1/subscriptions/{id}/dead-letters/{seq}/redeliver",
            Self::Replay(_) => "/v1/subscriptions/{id}/replay",
        }
    }

    fn allowed(&self) -> &'static str {
        match self {
            Self::All => "GET, POST",
            Self::One(_) => "GET, PUT, DELETE",
            Self::Secret(_) | Self::RedeliverAll(_) | Self::RedeliverOne(..) => "POST",
            Self::DeadLetters(_) => "GET",
            Self::Replay(_) => "GET, POST",
        }
    }
}

/// Reads a subscriptions path; `None` when it is not one (404), `Some(Err)` when its id is
/// malformed (404 too: no subscription has that id).
pub fn parse_path(path: &str) -> Option<Result<SubscriptionPath, ReadError>> {
    let rest = path.strip_prefix("/v1/subscriptions")?;
    if rest.is_empty() {
        return Some(Ok(SubscriptionPath::All));
    }
    let segments: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
    let Some(id) = segments.first().and_then(|raw| Uuid::parse_str(raw).ok()) else {
        return Some(Err(ReadError::SubscriptionNotFound));
    };
    let parsed = match segments[1..] {
        [] => SubscriptionPath::One(id),
        ["secret"] => SubscriptionPath::Secret(id),
        ["dead-letters"] => SubscriptionPath::DeadLetters(id),
        ["dead-letters", "redeliver"] => SubscriptionPath::RedeliverAll(id),
        ["dead-letters", seq, "redeliver"] => match seq.parse::<i64>() {
            Ok(seq) if seq > 0 => SubscriptionPath::RedeliverOne(id, seq),
            _ => return Some(Err(ReadError::DeadLetterNotFound)),
        },
        ["replay"] => SubscriptionPath::Replay(id),
        _ => return None,
    };
    Some(Ok(parsed))
}

/// Answers one subscriptions request.
pub async fn handle(
    state: &AppState,
    request: Request<Incoming>,
    path: SubscriptionPath,
) -> Result<Response<Full<Bytes>>, ReadError> {
    let method = request.method().clone();
    admit(state, &request, path.allowed())?;
    let query = request.uri().query().map(str::to_owned);
    match (method, path) {
        (Method::GET, SubscriptionPath::All) => {
            let mut conn = write_connection(state).await?;
            let all = timed(state, store::list(&mut conn, &state.secrets)).await?;
            let views: Vec<Value> = all.iter().map(|s| s.view()).collect();
            Ok(http_json::json(
                StatusCode::OK,
                &json!({"subscriptions": views}),
            ))
        }
        (Method::POST, SubscriptionPath::All) => {
            create(state, read_json(request, MAX_SUBSCRIPTION_BYTES).await?).await
        }
        (Method::GET, SubscriptionPath::One(id)) => show(state, id).await,
        (Method::PUT, SubscriptionPath::One(id)) => {
            let body = read_json(request, MAX_SUBSCRIPTION_BYTES).await?;
            replace(state, id, &body).await
        }
        (Method::DELETE, SubscriptionPath::One(id)) => delete(state, id).await,
        (Method::POST, SubscriptionPath::Secret(id)) => rotate(state, id).await,
        (Method::GET, SubscriptionPath::DeadLetters(id)) => {
            dead_letters(state, id, query.as_deref()).await
        }
        (Method::POST, SubscriptionPath::RedeliverAll(id)) => redeliver(state, id, None).await,
        (Method::POST, SubscriptionPath::RedeliverOne(id, seq)) => {
            redeliver(state, id, Some(seq)).await
        }
        (Method::GET, SubscriptionPath::Replay(id)) => {
            let mut conn = write_connection(state).await?;
            exists(state, &mut conn, id).await?;
            let replays = timed(state, replay::list(&mut conn, id)).await?;
            Ok(http_json::json(
                StatusCode::OK,
                &json!({"replays": replays}),
            ))
        }
        (Method::POST, SubscriptionPath::Replay(id)) => {
            let body = read_json(request, MAX_SUBSCRIPTION_BYTES).await?;
            start_replay(state, id, &body).await
        }
        _ => Err(ReadError::Shared(SharedError::NoRoute)),
    }
}

async fn exists(
    state: &AppState,
    conn: &mut diesel_async::AsyncPgConnection,
    id: Uuid,
) -> Result<crate::deliver::subscription::Subscription, ReadError> {
    timed(state, store::get(conn, &state.secrets, id))
        .await?
        .ok_or(ReadError::SubscriptionNotFound)
}

/// Validates a body as a subscription, the sink's resolved addresses included.
async fn spec(state: &AppState, body: &Value) -> Result<SubscriptionSpec, ReadError> {
    let allow_private = state.delivery.allow_private_sinks;
    let spec =
        SubscriptionSpec::parse(body, allow_private).map_err(ReadError::InvalidSubscription)?;
    if let Ok(url) = sink_address::check_url(&spec.sink, allow_private) {
        if let Err(error) = sink_address::check_resolved(&url, allow_private).await {
            return Err(ReadError::InvalidSubscription(vec![FieldProblem::new(
                "/sink",
                "sink_not_allowed",
                error.to_string(),
            )]));
        }
    }
    Ok(spec)
}

/// An RFC 3339 time in a body, at `pointer`.
fn time_field(body: &Value, name: &str, problems: &mut Vec<FieldProblem>) -> Option<DateTime<Utc>> {
    match body.get(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => match DateTime::parse_from_rfc3339(text) {
            Ok(time) => Some(time.with_timezone(&Utc)),
            Err(_) => {
                problems.push(FieldProblem::new(
                    &format!("/{name}"),
                    "invalid_time",
                    format!("{name} is an RFC 3339 time"),
                ));
                None
            }
        },
        Some(_) => {
            problems.push(FieldProblem::new(
                &format!("/{name}"),
                "invalid_time",
                format!("{name} is an RFC 3339 time"),
            ));
            None
        }
    }
}

async fn create(state: &AppState, mut body: Value) -> Result<Response<Full<Bytes>>, ReadError> {
    // `since` asks for the events stored since then to be replayed before live delivery catches
    // up; it is a request, not part of the subscription.
    let mut problems = Vec::new();
    let since = time_field(&body, "since", &mut problems);
    if let Some(object) = body.as_object_mut() {
        object.remove("since");
    }
    let now = Utc::now();
    if since.is_some_and(|since| since >= now) {
        problems.push(FieldProblem::new(
            "/since",
            "invalid_time",
            "since is in the past",
        ));
    }
    if !problems.is_empty() {
        return Err(ReadError::InvalidSubscription(problems));
    }
    let spec = spec(state, &body).await?;
    let id = Uuid::now_v7();
    let secret = SigningSecret::generate();
    let ordered = spec.ordering != crate::deliver::subscription::Ordering::None;
    // The queue first: events accepted from now on wait in it for the first worker.
    state
        .subscription_queues
        .declare(id, ordered, &binding_keys(&spec))
        .await
        .map_err(|error| ReadError::BrokerUnavailable(error.to_string()))?;
    let mut conn = write_connection(state).await?;
    let inserted = timed(
        state,
        conn.transaction(async |conn| {
            let created = store::insert(conn, &state.secrets, id, &spec, &secret).await?;
            if let Some(since) = since {
                replay::create(conn, id, since, now).await?;
            }
            Ok::<_, diesel::result::Error>(created)
        }),
    )
    .await;
    let created = match inserted {
        Ok(Some(created)) => created,
        Ok(None) | Err(_) => {
            if let Err(error) = state.subscription_queues.delete(id).await {
                tracing::warn!(%error, subscription = %id, "cannot remove the queue of a subscription that was not stored");
            }
            return Err(inserted.err().unwrap_or(ReadError::SubscriptionNotFound));
        }
    };
    tracing::info!(subscription = %id, sink = %created.spec.sink, "subscription created");
    let mut view = created.view();
    view["secret"] = json!(secret.reveal());
    let mut response = http_json::json(StatusCode::CREATED, &view);
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/subscriptions/{id}")) {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

async fn show(state: &AppState, id: Uuid) -> Result<Response<Full<Bytes>>, ReadError> {
    let mut conn = write_connection(state).await?;
    let subscription = exists(state, &mut conn, id).await?;
    let retrying = timed(state, store::retry_count(&mut conn, id)).await?;
    let dead_letters = timed(state, store::dead_letter_count(&mut conn, id)).await?;
    // The queue's depth is best effort: a broker outage must not hide the subscription.
    let queued = state.subscription_queues.depth(id).await.ok().flatten();
    let mut view = subscription.view();
    view["backlog"] = json!({
        "queued_messages": queued,
        "retrying": retrying,
        "dead_letters": dead_letters,
    });
    Ok(http_json::json(StatusCode::OK, &view))
}

async fn replace(
    state: &AppState,
    id: Uuid,
    body: &Value,
) -> Result<Response<Full<Bytes>>, ReadError> {
    let spec = spec(state, body).await?;
    let mut conn = write_connection(state).await?;
    let existing = exists(state, &mut conn, id).await?;
    if existing.spec.ordering != spec.ordering {
        return Err(ReadError::Conflict {
            code: "ordering_fixed",
            message: format!(
                "ordering is fixed when a subscription is created (this one is {:?}); create a new subscription",
                existing.spec.ordering.as_str()
            ),
        });
    }
    // Idempotent; declares the queue again if it was lost. The new bindings go on before the
    // row changes, the old ones (and `#`, which queues created before bindings followed the
    // filters had) come off after it changed.
    let ordered = spec.ordering != crate::deliver::subscription::Ordering::None;
    let keys = binding_keys(&spec);
    state
        .subscription_queues
        .declare(id, ordered, &keys)
        .await
        .map_err(|error| ReadError::BrokerUnavailable(error.to_string()))?;
    let updated = timed(state, store::replace(&mut conn, &state.secrets, id, &spec))
        .await?
        .ok_or(ReadError::SubscriptionNotFound)?;
    let mut stale = binding_keys(&existing.spec);
    stale.insert(EVERY_KEY.to_owned());
    let stale: BTreeSet<String> = stale.difference(&keys).cloned().collect();
    if let Err(error) = state.subscription_queues.unbind(id, &stale).await {
        // The filters still decide what is delivered; a stale binding only routes more.
        tracing::warn!(%error, subscription = %id, "cannot remove the old bindings of a replaced subscription");
    }
    tracing::info!(subscription = %id, status = updated.spec.status.as_str(), "subscription replaced");
    Ok(http_json::json(StatusCode::OK, &updated.view()))
}

async fn delete(state: &AppState, id: Uuid) -> Result<Response<Full<Bytes>>, ReadError> {
    let mut conn = write_connection(state).await?;
    exists(state, &mut conn, id).await?;
    // The queue first: if the row went first and the broker failed, the queue would fill forever.
    state
        .subscription_queues
        .delete(id)
        .await
        .map_err(|error| ReadError::BrokerUnavailable(error.to_string()))?;
    timed(state, store::delete(&mut conn, id)).await?;
    tracing::info!(subscription = %id, "subscription deleted");
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default())
}

async fn rotate(state: &AppState, id: Uuid) -> Result<Response<Full<Bytes>>, ReadError> {
    let mut conn = write_connection(state).await?;
    let secret = SigningSecret::generate();
    let grace = chrono::Duration::from_std(state.delivery.secret_grace).unwrap_or_default();
    let until = Utc::now() + grace;
    let rotated = timed(
        state,
        store::rotate_secret(&mut conn, &state.secrets, id, &secret, until),
    )
    .await?
    .ok_or(ReadError::SubscriptionNotFound)?;
    tracing::info!(subscription = %id, previous_valid_until = %until, "signing secret rotated");
    let mut view = rotated.view();
    view["secret"] = json!(secret.reveal());
    view["previous_secret_expires_at"] = json!(until);
    Ok(http_json::json(StatusCode::OK, &view))
}

async fn dead_letters(
    state: &AppState,
    id: Uuid,
    query: Option<&str>,
) -> Result<Response<Full<Bytes>>, ReadError> {
    let mut after = 0i64;
    let mut limit = 100i64;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let number = value.parse::<i64>().ok();
        match (name.as_ref(), number) {
            ("after", Some(n)) if n >= 0 => after = n,
            ("limit", Some(n)) if (1..=MAX_DEAD_LETTER_PAGE).contains(&n) => limit = n,
            ("after" | "limit", _) => {
                return Err(ReadError::InvalidInput {
                    code: "invalid_parameter",
                    message: format!(
                        "after is a non-negative integer; limit is 1 to {MAX_DEAD_LETTER_PAGE}"
                    ),
                })
            }
            (other, _) => {
                return Err(ReadError::InvalidInput {
                    code: "unknown_parameter",
                    message: format!("unknown parameter {other:?}"),
                })
            }
        }
    }
    let mut conn = write_connection(state).await?;
    exists(state, &mut conn, id).await?;
    let page = timed(state, store::list_dead_letters(&mut conn, id, after, limit)).await?;
    let next_after = (page.len() as i64 == limit)
        .then(|| page.last().map(|letter| letter.seq))
        .flatten();
    Ok(http_json::json(
        StatusCode::OK,
        &json!({"dead_letters": page, "next_after": next_after}),
    ))
}

async fn redeliver(
    state: &AppState,
    id: Uuid,
    seq: Option<i64>,
) -> Result<Response<Full<Bytes>>, ReadError> {
    let mut conn = write_connection(state).await?;
    exists(state, &mut conn, id).await?;
    let moved = timed(state, store::resend_dead_letters(&mut conn, id, seq)).await?;
    if seq.is_some() && moved == 0 {
        return Err(ReadError::DeadLetterNotFound);
    }
    tracing::info!(subscription = %id, moved, "dead letters re-sent");
    Ok(http_json::json(
        StatusCode::ACCEPTED,
        &json!({"redelivering": moved}),
    ))
}

async fn start_replay(
    state: &AppState,
    id: Uuid,
    body: &Value,
) -> Result<Response<Full<Bytes>>, ReadError> {
    let mut problems = Vec::new();
    if let Some(object) = body.as_object() {
        for name in object
            .keys()
            .filter(|name| !["since", "until"].contains(&name.as_str()))
        {
            problems.push(FieldProblem::new(
                &format!("/{name}"),
                "unknown_field",
                "a replay takes since and until",
            ));
        }
    } else {
        problems.push(FieldProblem::new(
            "",
            "invalid_body",
            "the body is {\"since\": RFC 3339, \"until\": RFC 3339}",
        ));
    }
    let now = Utc::now();
    let since = time_field(body, "since", &mut problems);
    let until = time_field(body, "until", &mut problems).unwrap_or(now);
    match since {
        None if problems.is_empty() => problems.push(FieldProblem::new(
            "/since",
            "missing_field",
            "since is required",
        )),
        Some(since) if since >= until => problems.push(FieldProblem::new(
            "/until",
            "invalid_time",
            "until is after since",
        )),
        _ => {}
    }
    if !problems.is_empty() {
        return Err(ReadError::InvalidSubscription(problems));
    }
    let since = since.unwrap_or(now);
    let mut conn = write_connection(state).await?;
    exists(state, &mut conn, id).await?;
    let job = timed(state, replay::create(&mut conn, id, since, until.min(now))).await?;
    tracing::info!(subscription = %id, replay = %job.id, %since, %until, "replay requested");
    Ok(http_json::json(
        StatusCode::ACCEPTED,
        &json!({"replay": job}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_parsed() {
        let id = Uuid::now_v7();
        assert_eq!(
            parse_path("/v1/subscriptions").unwrap().unwrap(),
            SubscriptionPath::All
        );
        assert_eq!(
            parse_path(&format!("/v1/subscriptions/{id}"))
                .unwrap()
                .unwrap(),
            SubscriptionPath::One(id)
        );
        assert_eq!(
            parse_path(&format!("/v1/subscriptions/{id}/dead-letters/7/redeliver"))
                .unwrap()
                .unwrap(),
            SubscriptionPath::RedeliverOne(id, 7)
        );
        assert_eq!(
            parse_path(&format!("/v1/subscriptions/{id}/replay"))
                .unwrap()
                .unwrap(),
            SubscriptionPath::Replay(id)
        );
        assert!(parse_path("/v1/subscriptions/not-an-id").unwrap().is_err());
        assert!(parse_path(&format!("/v1/subscriptions/{id}/other")).is_none());
        assert!(parse_path("/v1/subscriptionsx").is_none());
    }
}
