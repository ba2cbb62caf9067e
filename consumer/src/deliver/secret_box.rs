//! Signing secrets at rest. With `WARREN_DELIVERY_SECRET_KEY` (32 random bytes, base64) they are
//! sealed with ChaCha20-Poly1305 under that key, with the subscription's id as associated data (a
//! sealed secret copied to another row does not open); without it they are stored as given. The
//! first byte says which, so a key configured later still reads the secrets stored before it
//! (and seals the ones created or rotated from then on).

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

use super::signature::SigningSecret;

const PLAIN: u8 = 0;
const SEALED: u8 = 1;

/// The operator's key for secrets at rest. `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Reads 32 bytes in base64 (`openssl rand -base64 32`).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = STANDARD.decode(text.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(redacted)")
    }
}

/// Why a stored secret cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Sealed, and no key (or another key) is configured, or the row was tampered with.
    #[error("the signing secret is sealed and does not open with WARREN_DELIVERY_SECRET_KEY")]
    DoesNotOpen,
    /// Not a format this build writes.
    #[error("the stored signing secret is malformed")]
    Malformed,
}

/// Seals and opens stored secrets.
pub struct SecretBox {
    key: Option<LessSafeKey>,
    random: SystemRandom,
}

impl SecretBox {
    /// With `key`, seals; without, stores secrets as given.
    pub fn new(key: Option<SecretKey>) -> Self {
        Self {
            key: key.and_then(|key| {
                UnboundKey::new(&CHACHA20_POLY1305, &key.0)
                    .ok()
                    .map(LessSafeKey::new)
            }),
            random: SystemRandom::new(),
        }
    }

    /// The bytes to store for subscription `id`'s secret.
    pub fn seal(&self, id: Uuid, secret: &SigningSecret) -> Result<Vec<u8>, SecretError> {
        let Some(key) = &self.key else {
            let mut stored = vec![PLAIN];
            stored.extend_from_slice(secret.as_bytes());
            return Ok(stored);
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SecretError::Malformed)?;
        let mut sealed = secret.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| SecretError::Malformed)?;
        let mut stored = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        stored.push(SEALED);
        stored.extend_from_slice(&nonce);
        stored.extend_from_slice(&sealed);
        Ok(stored)
    }

    /// Subscription `id`'s secret from its stored bytes.
    pub fn open(&self, id: Uuid, stored: &[u8]) -> Result<SigningSecret, SecretError> {
        match stored.split_first() {
            Some((&PLAIN, secret)) if !secret.is_empty() => {
                Ok(SigningSecret::from_bytes(secret.to_vec()))
            }
            Some((&SEALED, rest)) if rest.len() > NONCE_LEN => {
                let key = self.key.as_ref().ok_or(SecretError::DoesNotOpen)?;
                let (nonce, sealed) = rest.split_at(NONCE_LEN);
                let nonce =
                    Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed)?;
                let mut buffer = sealed.to_vec();
                let opened = key
                    .open_in_place(nonce, Aad::from(id.as_bytes()), &mut buffer)
                    .map_err(|_| SecretError::DoesNotOpen)?;
                Ok(SigningSecret::from_bytes(opened.to_vec()))
            }
            _ => Err(SecretError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Option<SecretKey> {
        SecretKey::parse(&STANDARD.encode([byte; 32]))
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_its_row() {
        let (id, secret) = (Uuid::now_v7(), SigningSecret::generate());
        let sealed_box = SecretBox::new(key(7));
        let stored = sealed_box.seal(id, &secret).unwrap();
        assert_eq!(stored[0], SEALED);
        assert!(!stored
            .windows(secret.as_bytes().len())
            .any(|w| w == secret.as_bytes()));
        assert_eq!(sealed_box.open(id, &stored).unwrap(), secret);
        assert_eq!(
            sealed_box.open(Uuid::now_v7(), &stored),
            Err(SecretError::DoesNotOpen)
        );
        assert_eq!(
            SecretBox::new(key(8)).open(id, &stored),
            Err(SecretError::DoesNotOpen)
        );
        assert_eq!(
            SecretBox::new(None).open(id, &stored),
            Err(SecretError::DoesNotOpen)
        );
    }

    #[test]
    fn secrets_stored_before_a_key_was_configured_still_open() {
        let (id, secret) = (Uuid::now_v7(), SigningSecret::generate());
        let stored = SecretBox::new(None).seal(id, &secret).unwrap();
        assert_eq!(stored[0], PLAIN);
        assert_eq!(SecretBox::new(key(7)).open(id, &stored).unwrap(), secret);
    }

    #[test]
    fn keys_are_32_bytes_of_base64_and_never_print() {
        assert!(SecretKey::parse("short").is_none());
        assert!(SecretKey::parse(&STANDARD.encode([1u8; 31])).is_none());
        assert_eq!(format!("{:?}", key(1).unwrap()), "SecretKey(redacted)");
    }
}
