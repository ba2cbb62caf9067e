//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`
//! keyed by the subscription's `whsec_` secret, and the `webhook-id` a sink deduplicates by.
//!
//! The id is derived from the event's CloudEvents key (source, id), so every attempt of one event,
//! a re-sent dead letter and a replay all carry the same `webhook-id`.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The prefix of a secret in its Standard Webhooks text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a generated secret (the specification asks for 24 to 64).
const SECRET_BYTES: usize = 32;

/// A subscription's signing key. `Debug` and `Display` never show it; only
/// [`SigningSecret::reveal`] does, for the one response that hands it to the subscriber.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// A secret from its raw bytes (as stored).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Reads `whsec_<base64>`; `None` when it is not that.
    pub fn parse(text: &str) -> Option<Self> {
        let encoded = text.strip_prefix(SECRET_PREFIX)?;
        STANDARD
            .decode(encoded)
            .ok()
            .filter(|b| !b.is_empty())
            .map(Self)
    }

    /// The raw bytes, to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `whsec_<base64>`: what the subscriber configures in its verifier.
    pub fn reveal(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }

    /// `v1,<signature>` of one message under this secret.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length; new_from_slice cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable_key(),
        };
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cold]
fn unreachable_key() -> ! {
    // `Hmac::new_from_slice` only fails for fixed-size-key MACs; HMAC accepts any length.
    panic!("HMAC-SHA256 refused a key, which it never does")
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(redacted)")
    }
}

/// The `webhook-signature` header: one signature per secret in force, space-separated, so a
/// sink that still has the previous secret verifies during a rotation.
pub fn signature_header(
    secrets: &[&SigningSecret],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(webhook_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `msg_` and 128 bits of SHA-256 over (source, id): stable for an event, distinct across events.
pub fn webhook_id(source: &str, id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(source.len().to_be_bytes());
    hasher.update(source.as_bytes());
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    format!("msg_{}", URL_SAFE_NO_PAD.encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_reproduce_the_standard_webhooks_reference_vector() {
        // The vector the Standard Webhooks reference libraries test against.
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_generated_secret_round_trips_its_text_form_and_never_prints() {
        let secret = SigningSecret::generate();
        let text = secret.reveal();
        assert!(text.starts_with("whsec_"));
        assert_eq!(SigningSecret::parse(&text).unwrap(), secret);
        assert!(!format!("{secret:?}").contains(&text[6..]));
        assert_ne!(SigningSecret::generate(), secret);
    }

    #[test]
    fn rotation_headers_carry_one_signature_per_secret() {
        let (old, new) = (SigningSecret::generate(), SigningSecret::generate());
        let header = signature_header(&[&new, &old], "msg_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [new.sign("msg_1", 1, b"{}"), old.sign("msg_1", 1, b"{}")]
        );
    }

    #[test]
    fn webhook_ids_are_stable_per_event_key_and_distinct_across_keys() {
        assert_eq!(webhook_id("/a", "1"), webhook_id("/a", "1"));
        assert_ne!(webhook_id("/a", "1"), webhook_id("/a", "2"));
        // The length prefix keeps ("/a1", "") apart from ("/a", "1").
        assert_ne!(webhook_id("/a1", ""), webhook_id("/a", "1"));
        assert!(webhook_id("/a", "1").starts_with("msg_"));
    }
}
