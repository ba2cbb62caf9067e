//! End to end through nginx on a stack `scripts/stack up` started (`WARREN_E2E_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod bad_input;
#[path = "../common/bad_input_cases.rs"]
mod bad_input_cases;
mod e2e;

/// The URL `scripts/stack up` printed.
pub fn base_url() -> String {
    std::env::var("WARREN_E2E_URL")
        .expect("set WARREN_E2E_URL to the URL `scripts/stack up` printed")
        .trim_end_matches('/')
        .to_owned()
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
