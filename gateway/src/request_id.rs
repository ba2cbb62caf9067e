//! Request ids: taken from nginx's `X-Request-Id` when it is sane, generated otherwise.

use http::HeaderMap;

/// The header nginx sets and the gateway echoes.
pub const HEADER: &str = "x-request-id";

/// The request's id: the client's or proxy's if it is 1-128 characters of `[A-Za-z0-9._:-]`,
/// else a new UUIDv7 (time-ordered, so ids sort by arrival in logs).
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}
