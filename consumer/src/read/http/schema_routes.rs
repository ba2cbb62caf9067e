//! The schema registry's routes: `/v1/schemas`, `/v1/schemas/{type}` and
//! `/v1/schemas/{type}/versions/{version}`. Reading needs a read or admin key; changing needs an
//! admin key. Every registry query goes to the primary, even with a read replica configured, so a
//! gateway polling the registry never sees a change later than the replica's lag would make it.

use bytes::Bytes;
use http::header::{HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use service_runtime::http_error::SharedError;
use service_runtime::http_json;
use shared_types::data_schema::{self, Policy};

use super::{admit, read_json, timed, write_connection, AppState};
use crate::read::error::ReadError;
use crate::read::schema_registry::{self, VersionView};

/// The largest schema document accepted, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;
/// The longest type name, in bytes: the event attribute limit's default.
const MAX_TYPE_BYTES: usize = 256;

/// A registry path, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum SchemaPath {
    /// `/v1/schemas`.
    All,
    /// `/v1/schemas/{type}`.
    Type(String),
    /// `/v1/schemas/{type}/versions/{version}`.
    Version(String, i32),
}

impl SchemaPath {
    /// The route template, for metrics and the method check.
    pub fn template(&self) -> &'static str {
        match self {
            SchemaPath::All => "/v1/schemas",
            SchemaPath::Type(_) => "/v1/schemas/{type}",
            SchemaPath::Version(..) => "/v1/schemas/{type}/versions/{version}",
        }
    }
}

/// Reads a registry path; `None` when the path is not one (404), `Some(Err)` when its type or
/// version is malformed (400).
pub fn parse_path(path: &str) -> Option<Result<SchemaPath, ReadError>> {
    let rest = path.strip_prefix("/v1/schemas")?;
    if rest.is_empty() {
        return Some(Ok(SchemaPath::All));
    }
    let segments: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
    let event_type = match segments.first() {
        Some(raw) => match decode_type(raw) {
            Ok(event_type) => event_type,
            Err(error) => return Some(Err(error)),
        },
        None => return None,
    };
    match segments.as_slice() {
        [_] => Some(Ok(SchemaPath::Type(event_type))),
        [_, "versions", version] => Some(
            version
                .parse::<i32>()
                .ok()
                .filter(|version| *version > 0)
                .map(|version| SchemaPath::Version(event_type, version))
                .ok_or_else(|| invalid("invalid_version", "a version is a positive integer")),
        ),
        _ => None,
    }
}

fn decode_type(raw: &str) -> Result<String, ReadError> {
    let bytes = percent_decode(raw).ok_or_else(|| {
        invalid(
            "invalid_type",
            "the type is not valid percent-encoded UTF-8",
        )
    })?;
    let event_type = String::from_utf8(bytes)
        .map_err(|_| invalid("invalid_type", "the type is not valid UTF-8"))?;
    if event_type.is_empty() || event_type.len() > MAX_TYPE_BYTES {
        return Err(invalid(
            "invalid_type",
            format!("a type is 1 to {MAX_TYPE_BYTES} bytes"),
        ));
    }
    if event_type.chars().any(char::is_control) {
        return Err(invalid(
            "invalid_type",
            "a type holds no control characters",
        ));
    }
    Ok(event_type)
}

/// RFC 3986 percent-decoding of one path segment (no `+` for space: that is a query's rule).
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut input = raw.bytes();
    while let Some(byte) = input.next() {
        if byte == b'%' {
            let high = char::from(input.next()?).to_digit(16)?;
            let low = char::from(input.next()?).to_digit(16)?;
            bytes.push(u8::try_from(high * 16 + low).ok()?);
        } else {
            bytes.push(byte);
        }
    }
    Some(bytes)
}

fn invalid(code: &'static str, message: impl Into<String>) -> ReadError {
    ReadError::InvalidInput {
        code,
        message: message.into(),
    }
}

/// The body of `PUT /v1/schemas/{type}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    schema: Value,
    #[serde(default = "enforce")]
    policy: Policy,
}

fn enforce() -> Policy {
    Policy::Enforce
}

/// Answers one registry request.
pub async fn handle(
    state: &AppState,
    request: Request<Incoming>,
    path: SchemaPath,
) -> Result<Response<Full<Bytes>>, ReadError> {
    let method = request.method().clone();
    let allowed = match path {
        SchemaPath::All => "GET",
        SchemaPath::Type(_) => "GET, PUT, DELETE",
        SchemaPath::Version(..) => "GET, DELETE",
    };
    admit(state, &request, allowed)?;
    match (method, path) {
        (Method::GET, SchemaPath::All) => list(state, request.uri().query()).await,
        (Method::GET, SchemaPath::Type(event_type)) => {
            let mut connection = write_connection(state).await?;
            let versions = timed(
                state,
                schema_registry::versions_of(&mut connection, &event_type),
            )
            .await?;
            if versions.is_empty() {
                return Err(ReadError::SchemaNotFound);
            }
            let current = versions
                .iter()
                .find(|version| version.retired_at.is_none())
                .cloned()
                .map(VersionView::from);
            let versions: Vec<VersionView> = versions
                .into_iter()
                .map(|mut version| {
                    version.schema = None;
                    version.into()
                })
                .collect();
            Ok(http_json::json(
                StatusCode::OK,
                &json!({"type": event_type, "current": current, "versions": versions}),
            ))
        }
        (Method::GET, SchemaPath::Version(event_type, version)) => {
            let mut connection = write_connection(state).await?;
            let found = timed(
                state,
                schema_registry::version(&mut connection, &event_type, version),
            )
            .await?
            .ok_or(ReadError::SchemaNotFound)?;
            Ok(http_json::json(StatusCode::OK, &VersionView::from(found)))
        }
        (Method::PUT, SchemaPath::Type(event_type)) => {
            let registration = read_registration(request).await?;
            data_schema::compile(&registration.schema)
                .map_err(|error| invalid("invalid_schema", error.to_string()))?;
            let mut connection = write_connection(state).await?;
            let (version, created) = timed(
                state,
                schema_registry::register(
                    &mut connection,
                    &event_type,
                    &registration.schema,
                    registration.policy,
                ),
            )
            .await?;
            tracing::info!(
                event_type,
                version = version.version,
                policy = version.policy,
                created,
                "schema registered"
            );
            let view = VersionView::from(version);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut response = http_json::json(status, &view);
            if let Ok(location) = HeaderValue::from_str(&view.dataschema_path) {
                response.headers_mut().insert(LOCATION, location);
            }
            Ok(response)
        }
        (Method::DELETE, SchemaPath::Type(event_type)) => retire(state, &event_type, None).await,
        (Method::DELETE, SchemaPath::Version(event_type, version)) => {
            retire(state, &event_type, Some(version)).await
        }
        _ => Err(ReadError::Shared(SharedError::NoRoute)),
    }
}

/// `GET /v1/schemas`: each type's current version; `?view=active` lists every version in force
/// with its schema (what gateways poll).
async fn list(state: &AppState, query: Option<&str>) -> Result<Response<Full<Bytes>>, ReadError> {
    let mut active = false;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (name.as_ref(), value.as_ref()) {
            ("view", "current") => active = false,
            ("view", "active") => active = true,
            ("view", _) => return Err(invalid("invalid_parameter", "view is current or active")),
            (other, _) => {
                return Err(invalid(
                    "unknown_parameter",
                    format!("unknown parameter {other:?}"),
                ))
            }
        }
    }
    let mut connection = write_connection(state).await?;
    let versions = if active {
        timed(state, schema_registry::active_versions(&mut connection)).await?
    } else {
        timed(state, schema_registry::current_versions(&mut connection)).await?
    };
    let schemas: Vec<VersionView> = versions.into_iter().map(VersionView::from).collect();
    Ok(http_json::json(
        StatusCode::OK,
        &json!({"schemas": schemas}),
    ))
}

async fn retire(
    state: &AppState,
    event_type: &str,
    version: Option<i32>,
) -> Result<Response<Full<Bytes>>, ReadError> {
    let mut connection = write_connection(state).await?;
    let retired = timed(
        state,
        schema_registry::retire(&mut connection, event_type, version),
    )
    .await?;
    if retired.is_empty() {
        return Err(ReadError::SchemaNotFound);
    }
    tracing::info!(event_type, ?version, "schema retired");
    let retired: Vec<VersionView> = retired.into_iter().map(VersionView::from).collect();
    Ok(http_json::json(
        StatusCode::OK,
        &json!({"type": event_type, "retired": retired}),
    ))
}

async fn read_registration(request: Request<Incoming>) -> Result<Registration, ReadError> {
    let value = read_json(request, MAX_SCHEMA_BYTES).await?;
    serde_json::from_value(value).map_err(|error| {
        invalid(
            "invalid_body",
            format!("expected {{\"schema\": {{...}}, \"policy\": \"enforce\"|\"warn\"}}: {error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_parsed_and_types_decoded() {
        assert_eq!(parse_path("/v1/schemas").unwrap().unwrap(), SchemaPath::All);
        assert_eq!(
            parse_path("/v1/schemas/com.example%2Fa%20b")
                .unwrap()
                .unwrap(),
            SchemaPath::Type("com.example/a b".into())
        );
        assert_eq!(
            parse_path("/v1/schemas/t/versions/3").unwrap().unwrap(),
            SchemaPath::Version("t".into(), 3)
        );
        assert!(parse_path("/v1/schemas/t/versions/0").unwrap().is_err());
        assert!(parse_path("/v1/schemas/%zz").unwrap().is_err());
        assert!(parse_path("/v1/schemas/%ff").unwrap().is_err());
        assert!(parse_path("/v1/schemas/a%0Ab").unwrap().is_err());
        assert!(parse_path(&format!("/v1/schemas/{}", "a".repeat(257)))
            .unwrap()
            .is_err());
        assert!(parse_path("/v1/schemasx").is_none());
        assert!(parse_path("/v1/schemas/t/other/1").is_none());
        assert!(parse_path("/v1/events").is_none());
    }

    #[test]
    fn data_schema_paths_read_back_as_registry_paths() {
        let path = shared_types::data_schema::version_path("a/b c", 2);
        assert_eq!(
            parse_path(&path).unwrap().unwrap(),
            SchemaPath::Version("a/b c".into(), 2)
        );
    }
}
