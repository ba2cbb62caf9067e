//! Keys a stack makes for itself on its first start, so `docker compose up` works with auth on
//! and nothing to prepare (as Grafana's image or Svix's compose file hand out a first secret).
//!
//! One folder (a named volume in compose) holds them:
//! - `hashes`: the `WARREN_KEYS_FILE` every service reads (`<scope> <sha256 hex>` lines);
//! - `keys.env`: the plain keys, `WARREN_INGEST_KEY=…` lines, readable by their owner only, shown
//!   to the user by `gateway keys show` and never written to a log;
//! - `registry.key`: the plain read key the gateways poll the schema registry with (the generated
//!   one, or `WARREN_READ_KEY` when the environment configures the keys).
//!
//! Keys configured in the environment win: then `hashes` lists none of the generated ones, which
//! stay in the folder, unused, until the environment stops naming keys. Removing the folder
//! (`docker compose down -v`) forgets them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::auth::{generate_key, hash_hex, Scope};
use crate::config::Settings;

/// The file of hash lines the services read through `WARREN_KEYS_FILE`.
pub const HASHES_FILE: &str = "hashes";
/// The plain keys, for the user.
pub const PLAIN_FILE: &str = "keys.env";
/// The plain read key, for the gateways' schema registry polls.
pub const REGISTRY_KEY_FILE: &str = "registry.key";

/// The scopes a stack gets a key of, in the order they are listed.
const SCOPES: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

/// What [`init`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// No keys were there: three were made.
    Generated,
    /// The keys made on an earlier start are kept.
    Kept,
    /// The environment names keys; the generated ones are not in force.
    FromEnvironment,
}

/// Why the key folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `keys.env` is not what [`init`] writes.
    #[error("{0}: not a WARREN_<SCOPE>_KEY=… file written by `keys init`")]
    Malformed(PathBuf),
    /// There are no generated keys to show.
    #[error(
        "no generated keys in {0}: the stack has not started yet (run `docker compose up`), or its \
         keys come from the environment (.env)"
    )]
    NoKeys(PathBuf),
}

/// Keys the environment configures instead (from `.env` in compose).
#[derive(Debug, Clone, Copy)]
pub struct EnvironmentKeys<'a> {
    /// Some of `WARREN_INGEST_KEYS`, `WARREN_READ_KEYS`, `WARREN_ADMIN_KEYS` are set.
    pub configured: bool,
    /// `WARREN_READ_KEY`, the plain read key the gateways then poll the registry with.
    pub read_key: Option<&'a str>,
}

/// Makes the keys on a first start, keeps them on later ones, and writes the hash file the
/// services read and the read key the gateways use. Keys the environment configures win.
pub fn init(dir: &Path, environment: EnvironmentKeys<'_>) -> Result<Init, KeyStoreError> {
    let plain_path = dir.join(PLAIN_FILE);
    if environment.configured {
        write(
            &dir.join(HASHES_FILE),
            "# keys come from the environment (.env); generated keys are not in force\n",
            0o644,
        )?;
        write(
            &dir.join(REGISTRY_KEY_FILE),
            environment.read_key.unwrap_or_default(),
            0o600,
        )?;
        return Ok(Init::FromEnvironment);
    }
    let (keys, outcome) = if plain_path.exists() {
        (read_plain(&plain_path)?, Init::Kept)
    } else {
        let keys: Vec<(Scope, String)> = SCOPES
            .iter()
            .map(|scope| (*scope, generate_key(*scope).0))
            .collect();
        let text: String = keys
            .iter()
            .map(|(scope, key)| format!("{}={key}\n", variable(*scope)))
            .collect();
        write(&plain_path, &text, 0o600)?;
        (keys, Init::Generated)
    };
    let hashes: String = keys
        .iter()
        .map(|(scope, key)| format!("{} {}\n", scope.as_str(), hash_hex(key)))
        .collect();
    write(&dir.join(HASHES_FILE), &hashes, 0o644)?;
    let read_key = keys
        .iter()
        .find(|(scope, _)| *scope == Scope::Read)
        .map(|(_, key)| key.clone())
        .ok_or_else(|| KeyStoreError::Malformed(plain_path.clone()))?;
    write(&dir.join(REGISTRY_KEY_FILE), &read_key, 0o600)?;
    Ok(outcome)
}

/// The plain keys as `WARREN_<SCOPE>_KEY=…` lines, for the user to copy or `export`.
pub fn show(dir: &Path) -> Result<String, KeyStoreError> {
    let plain_path = dir.join(PLAIN_FILE);
    if !plain_path.exists() {
        return Err(KeyStoreError::NoKeys(dir.to_path_buf()));
    }
    let keys = read_plain(&plain_path)?;
    Ok(keys
        .iter()
        .map(|(scope, key)| format!("{}={key}\n", variable(*scope)))
        .collect())
}

/// `keys init` (the compose `keys` service, on every start) and `keys show` (for the user), on the
/// folder `WARREN_KEYS_DIR` (default `/keys`): the text to print, or `None` for another command.
/// Only `show` returns a plain key.
pub fn command(
    name: Option<&str>,
    settings: &Settings<'_>,
) -> Option<Result<String, KeyStoreError>> {
    let dir = PathBuf::from(settings.string("WARREN_KEYS_DIR", "/keys"));
    match name? {
        "init" => {
            let read_key = settings.raw("WARREN_READ_KEY");
            let environment = EnvironmentKeys {
                configured: [
                    "WARREN_INGEST_KEYS",
                    "WARREN_READ_KEYS",
                    "WARREN_ADMIN_KEYS",
                ]
                .iter()
                .any(|name| settings.raw(name).is_some()),
                read_key: read_key.as_deref(),
            };
            Some(init(&dir, environment).map(|outcome| {
                match outcome {
                    Init::Generated => {
                        "made an ingest, a read and an admin key; show them with \
                                        `docker compose run --rm -T keys show`\n"
                    }
                    Init::Kept => "keeping the keys made on the first start\n",
                    Init::FromEnvironment => {
                        "keys come from the environment (.env); the generated \
                                              keys are not in force\n"
                    }
                }
                .to_owned()
            }))
        }
        "show" => Some(show(&dir)),
        _ => None,
    }
}

/// `WARREN_INGEST_KEY` and so on: the names the README, the stack and k6 use.
fn variable(scope: Scope) -> String {
    format!("WARREN_{}_KEY", scope.as_str().to_uppercase())
}

fn read_plain(path: &Path) -> Result<Vec<(Scope, String)>, KeyStoreError> {
    let text = fs::read_to_string(path).map_err(|source| KeyStoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut keys = Vec::new();
    for scope in SCOPES {
        let prefix = format!("{}=", variable(scope));
        let key = text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .filter(|key| key.starts_with(&format!("wrn_{}_", scope.as_str())))
            .ok_or_else(|| KeyStoreError::Malformed(path.to_path_buf()))?;
        keys.push((scope, key.to_owned()));
    }
    Ok(keys)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), KeyStoreError> {
    let io = |source| KeyStoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Auth;
    use crate::config::Settings;

    const NONE: EnvironmentKeys<'static> = EnvironmentKeys {
        configured: false,
        read_key: None,
    };

    /// A folder of its own for one test, removed when the test ends.
    struct Folder(PathBuf);

    impl Folder {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn folder() -> Folder {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "warren-key-store-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("a temporary folder");
        Folder(path)
    }

    fn auth_from(dir: &Path) -> Auth {
        let file = dir.join(HASHES_FILE).display().to_string();
        Auth::from_settings(&Settings::from_pairs(&[(
            "WARREN_KEYS_FILE",
            file.as_str(),
        )]))
        .expect("the hash file configures auth")
    }

    fn key_of(shown: &str, scope: Scope) -> String {
        let prefix = format!("{}=", variable(scope));
        shown
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .expect("the key is shown")
            .to_owned()
    }

    #[test]
    fn a_first_start_makes_three_keys_that_the_hash_file_accepts() {
        let dir = folder();
        assert_eq!(init(dir.path(), NONE).unwrap(), Init::Generated);
        let shown = show(dir.path()).unwrap();
        let auth = auth_from(dir.path());
        for scope in SCOPES {
            let header = format!("Bearer {}", key_of(&shown, scope));
            assert!(auth.authorize(Some(&header), scope).is_ok(), "{scope:?}");
        }
        let registry = fs::read_to_string(dir.path().join(REGISTRY_KEY_FILE)).unwrap();
        assert_eq!(registry, key_of(&shown, Scope::Read));
    }

    #[test]
    fn a_later_start_keeps_the_keys() {
        let dir = folder();
        init(dir.path(), NONE).unwrap();
        let first = show(dir.path()).unwrap();
        assert_eq!(init(dir.path(), NONE).unwrap(), Init::Kept);
        assert_eq!(show(dir.path()).unwrap(), first);
    }

    #[test]
    fn keys_from_the_environment_put_the_generated_ones_out_of_force() {
        let dir = folder();
        init(dir.path(), NONE).unwrap();
        let shown = show(dir.path()).unwrap();
        let environment = EnvironmentKeys {
            configured: true,
            read_key: Some("wrn_read_from_env"),
        };
        assert_eq!(
            init(dir.path(), environment).unwrap(),
            Init::FromEnvironment
        );
        let hashes = fs::read_to_string(dir.path().join(HASHES_FILE)).unwrap();
        assert!(!hashes.contains(&hash_hex(&key_of(&shown, Scope::Ingest))));
        let registry = fs::read_to_string(dir.path().join(REGISTRY_KEY_FILE)).unwrap();
        assert_eq!(registry, "wrn_read_from_env");
    }

    #[test]
    fn the_commands_take_their_folder_and_the_environment_from_settings() {
        let dir = folder();
        let path = dir.path().display().to_string();
        let settings = Settings::from_pairs(&[("WARREN_KEYS_DIR", path.as_str())]);
        let said = command(Some("init"), &settings).unwrap().unwrap();
        assert!(said.starts_with("made an ingest"), "{said}");
        assert!(!said.contains("wrn_"), "init must print no key: {said}");
        let shown = command(Some("show"), &settings).unwrap().unwrap();
        assert_eq!(shown.lines().count(), 3, "{shown}");
        let hash = "0".repeat(64);
        let with_env = Settings::from_pairs(&[
            ("WARREN_KEYS_DIR", path.as_str()),
            ("WARREN_READ_KEYS", hash.as_str()),
        ]);
        let said = command(Some("init"), &with_env).unwrap().unwrap();
        assert!(said.starts_with("keys come from the environment"), "{said}");
        assert!(command(Some("rotate"), &settings).is_none());
        assert!(command(None, &settings).is_none());
    }

    #[test]
    fn nothing_to_show_before_the_first_start() {
        let dir = folder();
        assert!(matches!(show(dir.path()), Err(KeyStoreError::NoKeys(_))));
    }

    #[cfg(unix)]
    #[test]
    fn the_plain_keys_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = folder();
        init(dir.path(), NONE).unwrap();
        for file in [PLAIN_FILE, REGISTRY_KEY_FILE] {
            let mode = fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
        }
    }
}
