//! Query-string parsing for the read API: every parameter validated, unknown ones refused, and
//! each error naming the parameter.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};

/// Most events one list request returns.
pub const MAX_LIMIT: i64 = 1000;
/// Events a list request returns when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 100;
/// Most buckets one counts request may span.
pub const MAX_BUCKETS: i64 = 10_000;

/// A parameter the client must fix (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {message}")]
pub struct ParamError {
    /// The offending parameter.
    pub parameter: String,
    /// What is wrong with it.
    pub message: String,
    /// Stable code.
    pub code: &'static str,
}

fn bad(parameter: &str, code: &'static str, message: impl Into<String>) -> ParamError {
    ParamError {
        parameter: parameter.to_owned(),
        message: message.into(),
        code,
    }
}

/// How `type` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeFilter {
    /// `type=page.viewed`
    Exact(String),
    /// `type=page.*`: the part before the `*`.
    Prefix(String),
}

/// Filters shared by the list and counts routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// On `type`.
    pub event_type: Option<TypeFilter>,
    /// On `source`, exact.
    pub source: Option<String>,
    /// On `subject`, exact.
    pub subject: Option<String>,
    /// Inclusive lower bound on the event's time.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound on the event's time.
    pub until: Option<DateTime<Utc>>,
}

/// Where the previous page ended: the last row's (event_time, seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `event_time` of the last row returned, in microseconds since the epoch.
    pub event_time_micros: i64,
    /// `seq` of that row.
    pub seq: i64,
}

/// `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// What to match.
    pub filters: Filters,
    /// Page size.
    pub limit: i64,
    /// Continue after this row.
    pub cursor: Option<Cursor>,
}

/// `GET /v1/events/lookup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupQuery {
    /// CloudEvents source.
    pub source: String,
    /// CloudEvents id.
    pub id: String,
}

/// Bucket width of the counts route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Bucket {
    /// The `date_trunc` field name.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    /// The width.
    pub fn duration(self) -> chrono::Duration {
        match self {
            Bucket::Minute => chrono::Duration::minutes(1),
            Bucket::Hour => chrono::Duration::hours(1),
            Bucket::Day => chrono::Duration::days(1),
        }
    }

    /// The start of the bucket holding `time` (UTC).
    pub fn floor(self, time: DateTime<Utc>) -> DateTime<Utc> {
        let width = self.duration().num_seconds();
        let seconds = time.timestamp().div_euclid(width) * width;
        DateTime::from_timestamp(seconds, 0).unwrap_or(time)
    }
}

/// `GET /v1/stats/counts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountsQuery {
    /// Bucket width.
    pub bucket: Bucket,
    /// Filters; `since` and `until` are always set (`until` defaults to now).
    pub filters: Filters,
    /// Also count per event type.
    pub group_by_type: bool,
}

impl CountsQuery {
    /// The start of every bucket in the range, oldest first.
    pub fn bucket_starts(&self) -> Vec<DateTime<Utc>> {
        let (Some(since), Some(until)) = (self.filters.since, self.filters.until) else {
            return Vec::new();
        };
        let mut starts = Vec::new();
        let mut start = self.bucket.floor(since);
        while start < until {
            starts.push(start);
            start += self.bucket.duration();
        }
        starts
    }
}

/// Parameters of one request, each present at most once.
struct Params(BTreeMap<String, String>);

impl Params {
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, ParamError> {
        let mut params = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                return Err(bad(
                    &name,
                    "unknown_parameter",
                    format!("unknown parameter; this route takes {}", allowed.join(", ")),
                ));
            }
            if params.insert(name.to_string(), value.to_string()).is_some() {
                return Err(bad(&name, "duplicate_parameter", "given more than once"));
            }
        }
        Ok(Params(params))
    }

    fn text(&self, name: &str) -> Result<Option<String>, ParamError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(value) if value.is_empty() => {
                Err(bad(name, "invalid_parameter", "must not be empty"))
            }
            Some(value) if value.contains('\0') => {
                Err(bad(name, "invalid_parameter", "must not contain NUL"))
            }
            Some(value) if value.len() > 1024 => {
                Err(bad(name, "invalid_parameter", "longer than 1024 bytes"))
            }
            Some(value) => Ok(Some(value.clone())),
        }
    }

    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ParamError> {
        self.text(name)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|time| time.with_timezone(&Utc))
                    .map_err(|error| {
                        bad(
                            name,
                            "invalid_parameter",
                            format!("not an RFC 3339 time: {error}"),
                        )
                    })
            })
            .transpose()
    }

    fn filters(&self) -> Result<Filters, ParamError> {
        let event_type = self
            .text("type")?
            .map(|text| match text.strip_suffix('*') {
                Some(prefix) if !prefix.contains('*') => Ok(TypeFilter::Prefix(prefix.to_owned())),
                _ if text.contains('*') => Err(bad(
                    "type",
                    "invalid_parameter",
                    "'*' is allowed only at the end, as a prefix match",
                )),
                _ => Ok(TypeFilter::Exact(text)),
            })
            .transpose()?;
        let filters = Filters {
            event_type,
            source: self.text("source")?,
            subject: self.text("subject")?,
            since: self.time("since")?,
            until: self.time("until")?,
        };
        if let (Some(since), Some(until)) = (filters.since, filters.until) {
            if since >= until {
                return Err(bad(
                    "until",
                    "invalid_parameter",
                    "must be later than since",
                ));
            }
        }
        Ok(filters)
    }
}

const FILTER_PARAMS: [&str; 5] = ["type", "source", "subject", "since", "until"];

/// Parses `GET /v1/events`.
pub fn list_query(query: Option<&str>) -> Result<ListQuery, ParamError> {
    let mut allowed = FILTER_PARAMS.to_vec();
    allowed.extend(["limit", "cursor"]);
    let params = Params::parse(query, &allowed)?;
    let filters = params.filters()?;
    let limit = match params.text("limit") {
        Ok(None) => DEFAULT_LIMIT,
        Ok(Some(text)) => text
            .parse::<i64>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(bad_limit)?,
        Err(_) => return Err(bad_limit()),
    };
    let cursor = params
        .text("cursor")?
        .map(|text| decode_cursor(&text, &filters))
        .transpose()?;
    Ok(ListQuery {
        filters,
        limit,
        cursor,
    })
}

fn bad_limit() -> ParamError {
    bad(
        "limit",
        "invalid_parameter",
        format!("must be a whole number from 1 to {MAX_LIMIT}"),
    )
}

/// Parses `GET /v1/events/lookup`.
pub fn lookup_query(query: Option<&str>) -> Result<LookupQuery, ParamError> {
    let params = Params::parse(query, &["source", "id"])?;
    let required = |name: &str| {
        params
            .text(name)?
            .ok_or_else(|| bad(name, "missing_parameter", "is required"))
    };
    Ok(LookupQuery {
        source: required("source")?,
        id: required("id")?,
    })
}

/// Parses `GET /v1/stats/counts`; `now` fills in a missing `until`.
pub fn counts_query(query: Option<&str>, now: DateTime<Utc>) -> Result<CountsQuery, ParamError> {
    let mut allowed = FILTER_PARAMS.to_vec();
    allowed.extend(["bucket", "group_by"]);
    let params = Params::parse(query, &allowed)?;
    let bucket = match params.text("bucket")?.as_deref() {
        Some("minute") => Bucket::Minute,
        Some("hour") => Bucket::Hour,
        Some("day") => Bucket::Day,
        Some(_) => {
            return Err(bad(
                "bucket",
                "invalid_parameter",
                "must be minute, hour or day",
            ))
        }
        None => return Err(bad("bucket", "missing_parameter", "is required")),
    };
    let group_by_type = match params.text("group_by")?.as_deref() {
        None => false,
        Some("type") => true,
        Some(_) => {
            return Err(bad(
                "group_by",
                "invalid_parameter",
                "the only grouping is type",
            ))
        }
    };
    let mut filters = params.filters()?;
    let since = filters
        .since
        .ok_or_else(|| bad("since", "missing_parameter", "is required"))?;
    if filters.until.is_none() {
        if since >= now {
            return Err(bad(
                "since",
                "invalid_parameter",
                "is in the future; give until",
            ));
        }
        filters.until = Some(now);
    }
    let query = CountsQuery {
        bucket,
        filters,
        group_by_type,
    };
    let until = query.filters.until.unwrap_or(now);
    let buckets = (until - bucket.floor(since)).num_seconds() / bucket.duration().num_seconds() + 1;
    if buckets > MAX_BUCKETS {
        return Err(bad(
            "since",
            "too_many_buckets",
            format!(
                "the range spans about {buckets} {} buckets; at most {MAX_BUCKETS}",
                bucket.as_str()
            ),
        ));
    }
    Ok(query)
}

/// A cursor is tied to the filters it was made for, so it cannot be replayed on another query.
pub fn encode_cursor(cursor: Cursor, filters: &Filters) -> String {
    let text = format!(
        "1.{}.{}.{:016x}",
        cursor.event_time_micros,
        cursor.seq,
        filters_fingerprint(filters)
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(text: &str, filters: &Filters) -> Result<Cursor, ParamError> {
    let invalid = || bad("cursor", "invalid_cursor", "not a cursor this API issued");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.split('.');
    let (Some("1"), Some(time), Some(seq), Some(fingerprint), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(invalid());
    };
    let cursor = Cursor {
        event_time_micros: time.parse().map_err(|_| invalid())?,
        seq: seq.parse().map_err(|_| invalid())?,
    };
    if u64::from_str_radix(fingerprint, 16).ok() != Some(filters_fingerprint(filters)) {
        return Err(bad(
            "cursor",
            "invalid_cursor",
            "this cursor belongs to a query with other filters",
        ));
    }
    Ok(cursor)
}

/// FNV-1a over the filters: stable across builds and replicas (unlike `DefaultHasher`).
fn filters_fingerprint(filters: &Filters) -> u64 {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        filters.event_type,
        filters.source,
        filters.subject,
        filters.since.map(|t| t.timestamp_micros()),
        filters.until.map(|t| t.timestamp_micros())
    );
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of<T: std::fmt::Debug>(result: Result<T, ParamError>) -> (String, &'static str) {
        let error = result.unwrap_err();
        (error.parameter, error.code)
    }

    #[test]
    fn empty_query_lists_with_the_default_limit() {
        let query = list_query(None).unwrap();
        assert_eq!(query.limit, DEFAULT_LIMIT);
        assert_eq!(query.filters, Filters::default());
    }

    #[test]
    fn type_with_trailing_star_is_a_prefix() {
        let query = list_query(Some("type=page.*")).unwrap();
        assert_eq!(
            query.filters.event_type,
            Some(TypeFilter::Prefix("page.".into()))
        );
        let query = list_query(Some("type=page.viewed")).unwrap();
        assert_eq!(
            query.filters.event_type,
            Some(TypeFilter::Exact("page.viewed".into()))
        );
    }

    #[test]
    fn star_inside_type_is_refused() {
        assert_eq!(
            error_of(list_query(Some("type=pa*ge"))),
            ("type".into(), "invalid_parameter")
        );
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        assert_eq!(
            error_of(list_query(Some("colour=red"))),
            ("colour".into(), "unknown_parameter")
        );
        assert_eq!(
            error_of(list_query(Some("limit=1&limit=2"))),
            ("limit".into(), "duplicate_parameter")
        );
    }

    #[test]
    fn limit_outside_1_to_1000_is_refused() {
        for limit in ["0", "1001", "-1", "ten", ""] {
            assert_eq!(
                error_of(list_query(Some(&format!("limit={limit}")))).0,
                "limit",
                "{limit}"
            );
        }
        assert_eq!(list_query(Some("limit=1000")).unwrap().limit, 1000);
    }

    #[test]
    fn bad_times_name_their_parameter() {
        assert_eq!(error_of(list_query(Some("since=yesterday"))).0, "since");
        assert_eq!(error_of(list_query(Some("until=2024-01-01"))).0, "until");
        assert_eq!(
            error_of(list_query(Some(
                "since=2024-01-02T00:00:00Z&until=2024-01-01T00:00:00Z"
            )))
            .0,
            "until"
        );
    }

    #[test]
    fn cursor_round_trips_for_the_same_filters_only() {
        let query = list_query(Some("type=a")).unwrap();
        let cursor = Cursor {
            event_time_micros: 1_700_000_000_000_000,
            seq: 42,
        };
        let text = encode_cursor(cursor, &query.filters);
        let again = list_query(Some(&format!("type=a&cursor={text}"))).unwrap();
        assert_eq!(again.cursor, Some(cursor));
        assert_eq!(
            error_of(list_query(Some(&format!("type=b&cursor={text}")))),
            ("cursor".into(), "invalid_cursor")
        );
        assert_eq!(
            error_of(list_query(Some("cursor=garbage!"))),
            ("cursor".into(), "invalid_cursor")
        );
    }

    #[test]
    fn lookup_needs_source_and_id() {
        assert_eq!(
            error_of(lookup_query(Some("source=/s"))),
            ("id".into(), "missing_parameter")
        );
        let query = lookup_query(Some("source=%2Fs&id=1")).unwrap();
        assert_eq!((query.source.as_str(), query.id.as_str()), ("/s", "1"));
    }

    #[test]
    fn counts_need_bucket_and_since() {
        let now = Utc::now();
        assert_eq!(
            error_of(counts_query(Some("since=2024-01-01T00:00:00Z"), now)).0,
            "bucket"
        );
        assert_eq!(error_of(counts_query(Some("bucket=hour"), now)).0, "since");
        assert_eq!(
            error_of(counts_query(
                Some("bucket=week&since=2024-01-01T00:00:00Z"),
                now
            ))
            .0,
            "bucket"
        );
        assert_eq!(
            error_of(counts_query(
                Some("bucket=hour&since=2024-01-01T00:00:00Z&group_by=source"),
                now
            ))
            .0,
            "group_by"
        );
    }

    #[test]
    fn counts_over_10000_buckets_are_refused() {
        let now = "2024-01-07T00:00:00Z".parse().unwrap();
        assert!(counts_query(Some("bucket=minute&since=2024-01-01T00:00:00Z"), now).is_ok());
        let far: DateTime<Utc> = "2024-03-01T00:00:00Z".parse().unwrap();
        assert_eq!(
            error_of(counts_query(
                Some("bucket=minute&since=2024-01-01T00:00:00Z"),
                far
            )),
            ("since".into(), "too_many_buckets")
        );
    }

    #[test]
    fn buckets_cover_the_range_from_the_floor_of_since() {
        let query = counts_query(
            Some("bucket=hour&since=2024-05-01T10:30:00Z&until=2024-05-01T12:00:00Z"),
            Utc::now(),
        )
        .unwrap();
        let starts: Vec<String> = query
            .bucket_starts()
            .iter()
            .map(|t| t.to_rfc3339())
            .collect();
        assert_eq!(
            starts,
            ["2024-05-01T10:00:00+00:00", "2024-05-01T11:00:00+00:00"]
        );
    }

    #[test]
    fn bucket_floor_truncates_in_utc() {
        let time: DateTime<Utc> = "2024-05-01T10:37:12.5Z".parse().unwrap();
        assert_eq!(
            Bucket::Hour.floor(time).to_rfc3339(),
            "2024-05-01T10:00:00+00:00"
        );
        assert_eq!(
            Bucket::Day.floor(time).to_rfc3339(),
            "2024-05-01T00:00:00+00:00"
        );
        assert_eq!(
            Bucket::Minute.floor(time).to_rfc3339(),
            "2024-05-01T10:37:00+00:00"
        );
    }
}
