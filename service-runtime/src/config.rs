//! Reading `WARREN_*` settings: compiled-in defaults, overridden by the environment, validated
//! at startup with a message that names the variable.

use std::fmt::{self, Display};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// A setting that is present but unusable.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    /// The variable.
    pub name: String,
    /// What it was set to (never a secret: secrets are not echoed).
    pub value: String,
    /// What it should be.
    pub reason: String,
}

/// A function from a variable name to its value.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Where settings come from: the process environment, or a map in tests.
pub struct Settings<'a> {
    lookup: Lookup<'a>,
}

impl Settings<'static> {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        Settings {
            lookup: Box::new(|name| std::env::var(name).ok()),
        }
    }
}

impl<'a> Settings<'a> {
    /// Reads from any lookup, e.g. a list of pairs in a test.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Settings {
            lookup: Box::new(lookup),
        }
    }

    /// Reads from fixed name/value pairs (tests, tools); the first pair with a name wins.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Settings<'static> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Settings::from_lookup(move |name| {
            owned
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        })
    }

    /// These settings with variables that were renamed: each `(name, old_name)` reads `name`,
    /// falling back to `old_name` so existing deployments keep working. Returns the notices to
    /// log at startup (telemetry is not up yet while settings are read).
    pub fn with_renamed<'b>(
        &'b self,
        renames: &'b [(&'b str, &'b str)],
    ) -> (Settings<'b>, Vec<String>) {
        let mut notices = Vec::new();
        for (name, old_name) in renames {
            match (self.raw(name), self.raw(old_name)) {
                (None, Some(_)) => notices.push(format!(
                    "{old_name} is deprecated and will be removed; set {name} instead"
                )),
                (Some(_), Some(_)) => notices.push(format!(
                    "{old_name} is deprecated and ignored because {name} is set"
                )),
                _ => {}
            }
        }
        let renamed = Settings::from_lookup(move |wanted| {
            let value = self.raw(wanted);
            match renames.iter().find(|(name, _)| *name == wanted) {
                Some((_, old_name)) if value.is_none() => self.raw(old_name),
                _ => value,
            }
        });
        (renamed, notices)
    }

    /// The raw value, if set and not blank.
    pub fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.trim().is_empty())
    }

    /// A string setting.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    /// A parsed setting.
    pub fn parse<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(name) {
            None => Ok(default),
            Some(text) => text.trim().parse().map_err(|error: T::Err| ConfigError {
                name: name.to_owned(),
                value: text.clone(),
                reason: error.to_string(),
            }),
        }
    }

    /// A number that must lie in `range`.
    pub fn bounded<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let value = self.parse(name, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError {
                name: name.to_owned(),
                value: value.to_string(),
                reason: format!("must be between {} and {}", range.start(), range.end()),
            })
        }
    }

    /// A duration given in whole milliseconds, within `range` (in milliseconds).
    pub fn millis(
        &self,
        name: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.bounded(name, default, range)
            .map(Duration::from_millis)
    }
}

/// `WARREN_RETRY_AFTER_SECS` (default 1): what both services put in `Retry-After` on a 503, so an
/// operator can slow retries down during an outage without a rebuild.
pub fn retry_after_secs(settings: &Settings<'_>) -> Result<u64, ConfigError> {
    settings.bounded("WARREN_RETRY_AFTER_SECS", 1, 1..=3600)
}

/// A connection URL that may carry a password: its `Debug` and `Display` show it redacted, so a
/// config struct can be logged or printed in an error without leaking the secret, and the
/// password is only readable where a connection is opened ([`SecretUrl::expose`]).
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    /// Wraps `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL with its password, for the one call that connects.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `WARREN_AMQP_URL`, checked: one node's URL, or several nodes of a cluster comma-separated (see
/// [`crate::amqp`]). Each gets `heartbeat=WARREN_AMQP_HEARTBEAT_SECS` (default 10) when it sets
/// none, so a dead peer is noticed within seconds.
pub fn amqp_url(settings: &Settings<'_>) -> Result<SecretUrl, ConfigError> {
    let list = settings.string("WARREN_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let seconds: u16 = settings.bounded("WARREN_AMQP_HEARTBEAT_SECS", 10, 0..=600)?;
    let mut nodes = Vec::new();
    for url in list.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(ConfigError {
                name: "WARREN_AMQP_URL".into(),
                value: redact_url(url),
                reason: "each node's URL must start with amqp:// or amqps://".into(),
            });
        }
        if url.contains("heartbeat=") {
            nodes.push(url.to_owned());
        } else {
            let separator = if url.contains('?') { '&' } else { '?' };
            nodes.push(format!("{url}{separator}heartbeat={seconds}"));
        }
    }
    if nodes.is_empty() {
        return Err(ConfigError {
            name: "WARREN_AMQP_URL".into(),
            value: String::new(),
            reason: "must name at least one node".into(),
        });
    }
    Ok(SecretUrl::new(nodes.join(",")))
}

/// A connection URL with its password replaced, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings<'static> {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn a_cluster_is_a_list_of_node_urls_each_with_a_heartbeat() {
        let url = amqp_url(&settings(&[(
            "WARREN_AMQP_URL",
            "amqp://u:p1@a:5672/%2f, amqp://u:p2@b:5672/%2f?heartbeat=3",
        )]))
        .unwrap();
        assert_eq!(
            url.expose(),
            "amqp://u:p1@a:5672/%2f?heartbeat=10,amqp://u:p2@b:5672/%2f?heartbeat=3"
        );
        assert_eq!(
            url.redacted(),
            "amqp://u:***@a:5672/%2f?heartbeat=10,amqp://u:***@b:5672/%2f?heartbeat=3"
        );
        let error = amqp_url(&settings(&[(
            "WARREN_AMQP_URL",
            "amqp://a:5672/%2f,http://u:secret@b",
        )]))
        .unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn unset_variable_takes_the_default() {
        assert_eq!(settings(&[]).parse("WARREN_X", 7u32).unwrap(), 7);
    }

    #[test]
    fn bad_value_names_the_variable() {
        let error = settings(&[("WARREN_X", "seven")])
            .parse("WARREN_X", 7u32)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("WARREN_X=\"seven\" is invalid"),
            "{error}"
        );
    }

    #[test]
    fn out_of_range_value_is_refused() {
        let error = settings(&[("WARREN_X", "0")])
            .bounded("WARREN_X", 5u32, 1..=10)
            .unwrap_err();
        assert!(error.to_string().contains("between 1 and 10"), "{error}");
    }

    #[test]
    fn a_renamed_variable_still_reads_its_old_name_with_a_notice() {
        let base = settings(&[("WARREN_OLD", "5")]);
        let renames = [("WARREN_NEW", "WARREN_OLD")];
        let (renamed, notices) = base.with_renamed(&renames);
        assert_eq!(renamed.parse("WARREN_NEW", 1u32).unwrap(), 5);
        assert_eq!(notices.len(), 1);
        assert!(notices[0].contains("set WARREN_NEW instead"), "{notices:?}");
    }

    #[test]
    fn the_new_name_wins_over_the_old_one() {
        let base = settings(&[("WARREN_OLD", "5"), ("WARREN_NEW", "7")]);
        let renames = [("WARREN_NEW", "WARREN_OLD")];
        let (renamed, notices) = base.with_renamed(&renames);
        assert_eq!(renamed.parse("WARREN_NEW", 1u32).unwrap(), 7);
        assert!(notices[0].contains("ignored"), "{notices:?}");
    }

    #[test]
    fn a_secret_url_never_prints_its_password() {
        let url = SecretUrl::new("amqp://guest:hunter2@host:5672/%2f");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        assert_eq!(url.expose(), "amqp://guest:hunter2@host:5672/%2f");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@h/db"),
            "postgres://postgres@h/db"
        );
    }
}
