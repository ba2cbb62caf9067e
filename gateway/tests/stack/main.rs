//! End to end through nginx on a stack `scripts/stack up` started (`WARREN_E2E_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod auth;
mod bad_input;
#[path = "../common/bad_input_cases.rs"]
mod bad_input_cases;
mod e2e;
mod schemas;

/// The URL `scripts/stack up` printed.
pub fn base_url() -> String {
    std::env::var("WARREN_E2E_URL")
        .expect("set WARREN_E2E_URL to the URL `scripts/stack up` printed")
        .trim_end_matches('/')
        .to_owned()
}

/// Adds the stack's key of `scope` (`WARREN_INGEST_KEY`, `WARREN_READ_KEY` or `WARREN_ADMIN_KEY`
/// from the stack's keys.env) when the stack runs with auth.
pub fn with_key(request: reqwest::RequestBuilder, scope: &str) -> reqwest::RequestBuilder {
    match std::env::var(format!("WARREN_{}_KEY", scope.to_uppercase())) {
        Ok(key) if !key.is_empty() => request.bearer_auth(key),
        _ => request,
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
