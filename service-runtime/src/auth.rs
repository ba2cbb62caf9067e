//! API keys: three scopes, configured as SHA-256 hashes, compared in constant time.
//!
//! Keys never exist on the server in clear: operators configure `sha256(key)` in hex
//! (`WARREN_INGEST_KEYS`, `WARREN_READ_KEYS`, `WARREN_ADMIN_KEYS`, or a `WARREN_KEYS_FILE` of
//! `ingest <hash>` / `read <hash>` / `admin <hash>` lines), and `gateway keygen` prints a new key with its hash line. Auth is on
//! unless `WARREN_AUTH=off` is set explicitly.

use std::fmt;

use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, Settings};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// POST events.
    Ingest,
    /// Query events, and read the schema registry.
    Read,
    /// Change the schema registry. A separate scope: a key that reads dashboards must not be
    /// able to start refusing a producer's events.
    Admin,
}

impl Scope {
    /// The name used in key files and in `keygen --scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// What a key of this scope may do, for the 403 message.
    fn action(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest events",
            Scope::Read => "read events",
            Scope::Admin => "change schemas",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "ingest" => Ok(Scope::Ingest),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?}; use ingest, read or admin"
            )),
        }
    }
}

/// A configured key: the SHA-256 of the key and its scope.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyHash {
    digest: [u8; 32],
    scope: Scope,
}

/// Whether requests must carry a key, and which keys exist.
#[derive(Clone)]
pub enum Auth {
    /// Every request passes (`WARREN_AUTH=off`).
    Off,
    /// Requests need a key of the route's scope.
    On(Vec<KeyHash>),
}

impl fmt::Debug for Auth {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Off => formatter.write_str("Auth::Off"),
            Auth::On(keys) => write!(formatter, "Auth::On({} keys)", keys.len()),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (401).
    #[error("an API key is required: send Authorization: Bearer <key>")]
    Missing,
    /// A key that is not configured (401).
    #[error("the API key is not valid")]
    Invalid,
    /// A valid key of another scope (403).
    #[error("the API key may not {0}")]
    WrongScope(&'static str),
}

/// Who made a request: the key's hash (its identity for rate limits), or anonymous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller(pub [u8; 32]);

impl Caller {
    /// The caller when auth is off.
    pub const ANONYMOUS: Caller = Caller([0; 32]);
}

impl Auth {
    /// `WARREN_AUTH`, `WARREN_INGEST_KEYS`, `WARREN_READ_KEYS` and `WARREN_KEYS_FILE`.
    pub fn from_settings(settings: &Settings<'_>) -> Result<Auth, ConfigError> {
        match settings.string("WARREN_AUTH", "on").as_str() {
            "off" => return Ok(Auth::Off),
            "on" => {}
            other => {
                return Err(ConfigError {
                    name: "WARREN_AUTH".into(),
                    value: other.into(),
                    reason: "must be on or off".into(),
                })
            }
        }
        let mut keys = Vec::new();
        for (name, scope) in [
            ("WARREN_INGEST_KEYS", Scope::Ingest),
            ("WARREN_READ_KEYS", Scope::Read),
            ("WARREN_ADMIN_KEYS", Scope::Admin),
        ] {
            if let Some(list) = settings.raw(name) {
                for hash in list.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                    keys.push(parse_hash(name, hash, scope)?);
                }
            }
        }
        if let Some(path) = settings.raw("WARREN_KEYS_FILE") {
            let text = std::fs::read_to_string(&path).map_err(|error| ConfigError {
                name: "WARREN_KEYS_FILE".into(),
                value: path.clone(),
                reason: format!("cannot read it: {error}"),
            })?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (scope, hash) =
                    line.split_once(char::is_whitespace)
                        .ok_or_else(|| ConfigError {
                            name: "WARREN_KEYS_FILE".into(),
                            value: path.clone(),
                            reason: "each line is `<ingest|read|admin> <sha256 hex>`".into(),
                        })?;
                let scope = scope.parse().map_err(|reason| ConfigError {
                    name: "WARREN_KEYS_FILE".into(),
                    value: path.clone(),
                    reason,
                })?;
                keys.push(parse_hash("WARREN_KEYS_FILE", hash.trim(), scope)?);
            }
        }
        if keys.is_empty() {
            return Err(ConfigError {
                name: "WARREN_AUTH".into(),
                value: "on".into(),
                reason: "auth is on but no key is configured: set WARREN_INGEST_KEYS / \
                         WARREN_READ_KEYS / WARREN_ADMIN_KEYS / WARREN_KEYS_FILE (see `gateway \
                         keygen`), or set \
                         WARREN_AUTH=off explicitly"
                    .into(),
            });
        }
        Ok(Auth::On(keys))
    }

    /// Checks an `Authorization` header value against `scope`.
    pub fn authorize(&self, header: Option<&str>, scope: Scope) -> Result<Caller, AuthError> {
        self.authorize_any(header, &[scope])
    }

    /// Checks an `Authorization` header value against any of `scopes` (the first names the 403).
    pub fn authorize_any(
        &self,
        header: Option<&str>,
        scopes: &[Scope],
    ) -> Result<Caller, AuthError> {
        let Auth::On(keys) = self else {
            return Ok(Caller::ANONYMOUS);
        };
        let key = header
            .and_then(|value| {
                let (kind, key) = value.trim().split_once(' ')?;
                kind.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .filter(|key| !key.is_empty())
            .ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare with every configured hash, without stopping early, so timing reveals nothing.
        let mut known = false;
        let mut granted = false;
        for configured in keys {
            let matches = bool::from(configured.digest.ct_eq(&digest));
            known |= matches;
            granted |= matches && scopes.contains(&configured.scope);
        }
        match (granted, known) {
            (true, _) => Ok(Caller(digest)),
            (false, true) => Err(AuthError::WrongScope(
                scopes.first().map_or("do this", |scope| scope.action()),
            )),
            (false, false) => Err(AuthError::Invalid),
        }
    }

    /// Whether requests need keys.
    pub fn is_on(&self) -> bool {
        matches!(self, Auth::On(_))
    }
}

fn parse_hash(name: &str, hash: &str, scope: Scope) -> Result<KeyHash, ConfigError> {
    let bad = || ConfigError {
        name: name.into(),
        value: format!("{}…", hash.chars().take(8).collect::<String>()),
        reason: "each key is the SHA-256 of the key, as 64 hex digits (see `gateway keygen`)"
            .into(),
    };
    if hash.len() != 64 {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hash[index * 2..index * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(KeyHash { digest, scope })
}

/// A new random key of `scope`, and the line that configures it.
pub fn generate_key(scope: Scope) -> (String, String) {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let key = format!(
        "wrn_{}_{}",
        scope.as_str(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let line = format!("{} {}", scope.as_str(), hash_hex(&key));
    (key, line)
}

/// The hex SHA-256 of a key, as configured.
pub fn hash_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(pairs: &[(&str, String)]) -> Result<Auth, ConfigError> {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Auth::from_settings(&Settings::from_pairs(&pairs))
    }

    #[test]
    fn auth_is_on_by_default_and_needs_a_key() {
        let error = auth(&[]).unwrap_err();
        assert_eq!(error.name, "WARREN_AUTH");
    }

    #[test]
    fn auth_off_must_be_explicit_and_lets_everything_through() {
        let auth = auth(&[("WARREN_AUTH", "off".into())]).unwrap();
        assert_eq!(auth.authorize(None, Scope::Ingest), Ok(Caller::ANONYMOUS));
    }

    #[test]
    fn keys_are_checked_by_scope() {
        let (ingest_key, ingest_line) = generate_key(Scope::Ingest);
        let (read_key, read_line) = generate_key(Scope::Read);
        let auth = auth(&[
            (
                "WARREN_INGEST_KEYS",
                ingest_line.split(' ').nth(1).unwrap().into(),
            ),
            (
                "WARREN_READ_KEYS",
                read_line.split(' ').nth(1).unwrap().into(),
            ),
        ])
        .unwrap();
        let bearer = |key: &str| format!("Bearer {key}");
        assert!(auth
            .authorize(Some(&bearer(&ingest_key)), Scope::Ingest)
            .is_ok());
        assert!(auth
            .authorize(Some(&bearer(&read_key)), Scope::Read)
            .is_ok());
        assert_eq!(
            auth.authorize(Some(&bearer(&read_key)), Scope::Ingest),
            Err(AuthError::WrongScope("ingest events"))
        );
        assert_eq!(
            auth.authorize(Some(&bearer("wrn_ingest_nope")), Scope::Ingest),
            Err(AuthError::Invalid)
        );
        assert_eq!(auth.authorize(None, Scope::Read), Err(AuthError::Missing));
        assert_eq!(
            auth.authorize(Some("Basic abc"), Scope::Read),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn admin_keys_change_schemas_and_routes_may_take_several_scopes() {
        let (admin_key, admin_line) = generate_key(Scope::Admin);
        let (read_key, read_line) = generate_key(Scope::Read);
        let path = std::env::temp_dir().join(format!("warren-admin-keys-{}", std::process::id()));
        std::fs::write(&path, format!("{admin_line}\n{read_line}\n")).unwrap();
        let auth = auth(&[("WARREN_KEYS_FILE", path.display().to_string())]).unwrap();
        std::fs::remove_file(&path).unwrap();
        let bearer = |key: &str| format!("Bearer {key}");
        assert!(auth
            .authorize(Some(&bearer(&admin_key)), Scope::Admin)
            .is_ok());
        assert_eq!(
            auth.authorize(Some(&bearer(&read_key)), Scope::Admin),
            Err(AuthError::WrongScope("change schemas"))
        );
        for key in [&admin_key, &read_key] {
            assert!(auth
                .authorize_any(Some(&bearer(key)), &[Scope::Read, Scope::Admin])
                .is_ok());
        }
        assert_eq!(
            auth.authorize(Some(&bearer(&admin_key)), Scope::Ingest),
            Err(AuthError::WrongScope("ingest events"))
        );
    }

    #[test]
    fn keys_file_lines_are_read() {
        let (key, line) = generate_key(Scope::Read);
        let path = std::env::temp_dir().join(format!("warren-keys-{}", std::process::id()));
        std::fs::write(&path, format!("# comment\n\n{line}\n")).unwrap();
        let auth = auth(&[("WARREN_KEYS_FILE", path.display().to_string())]).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(auth
            .authorize(Some(&format!("Bearer {key}")), Scope::Read)
            .is_ok());
    }

    #[test]
    fn malformed_hash_is_refused_without_echoing_it() {
        let error = auth(&[("WARREN_INGEST_KEYS", "not-a-hash-but-a-secret".into())]).unwrap_err();
        assert_eq!(error.name, "WARREN_INGEST_KEYS");
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}
