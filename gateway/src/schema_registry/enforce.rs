//! Per-type JSON Schemas enforced at the edge: the compiled set the gateway checks each request's
//! events against, replaced whole when the registry changes (see [`crate::schema_registry::refresh`]).
//!
//! An event is checked against the version its `dataschema` names (a registry path, see
//! [`shared_types::data_schema::registered_version`]), else against its type's current version.
//! Policy `enforce` refuses the request, all or nothing; `warn` accepts it and counts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;
use shared_types::data_schema::{self, Policy, Validator};
use shared_types::problem::{ErrorCode, Problem};
use shared_types::Event;

use crate::decode::Mode;

/// One registered version, compiled.
pub struct CompiledSchema {
    policy: Policy,
    validator: Validator,
}

/// The versions in force for one type.
#[derive(Default)]
struct TypeSchemas {
    current: Option<(u32, Arc<CompiledSchema>)>,
    versions: HashMap<u32, Arc<CompiledSchema>>,
}

/// A version as the registry lists it (`GET /v1/schemas?view=active`).
#[derive(Debug, Clone, Deserialize)]
pub struct ListedVersion {
    /// The type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The version number.
    pub version: u32,
    /// `enforce` or `warn`.
    pub policy: Policy,
    /// The JSON Schema.
    pub schema: Value,
}

/// Every version in force, compiled once.
#[derive(Default)]
pub struct SchemaSet {
    by_type: HashMap<String, TypeSchemas>,
    count: usize,
}

impl SchemaSet {
    /// Compiles `listed`, reusing the compiled validators of `previous` for versions it already
    /// holds with the same policy (a version's schema never changes). A version that does not
    /// compile here is skipped and logged: the registry compiled it before storing it, so only
    /// a gateway older than the registry can meet one.
    pub fn build(listed: Vec<ListedVersion>, previous: Option<&SchemaSet>) -> SchemaSet {
        let mut set = SchemaSet::default();
        for entry in listed {
            let reused = previous
                .and_then(|previous| previous.by_type.get(&entry.event_type))
                .and_then(|schemas| schemas.versions.get(&entry.version))
                .filter(|compiled| compiled.policy == entry.policy)
                .cloned();
            let compiled = match reused {
                Some(compiled) => compiled,
                None => match data_schema::compile(&entry.schema) {
                    Ok(validator) => Arc::new(CompiledSchema {
                        policy: entry.policy,
                        validator,
                    }),
                    Err(error) => {
                        tracing::error!(
                            event_type = entry.event_type,
                            version = entry.version,
                            %error,
                            "registered schema does not compile; not enforced"
                        );
                        continue;
                    }
                },
            };
            let schemas = set.by_type.entry(entry.event_type).or_default();
            if schemas
                .current
                .as_ref()
                .is_none_or(|(version, _)| entry.version > *version)
            {
                schemas.current = Some((entry.version, Arc::clone(&compiled)));
            }
            schemas.versions.insert(entry.version, compiled);
            set.count += 1;
        }
        set
    }

    /// How many versions are in force.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no schema is in force.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Checks every event; returns the problems of policy `enforce` (empty when the request may
    /// go on) and counts the violations of policy `warn`.
    pub fn check(&self, mode: Mode, events: &[Event], required: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let found = self.problems_of(event, required);
            let Some((policy, found)) = found else {
                continue;
            };
            if found.is_empty() {
                continue;
            }
            let type_label = event.event_type.clone();
            metrics::counter!(
                "warren_gateway_schema_violations_total",
                "type" => type_label,
                "policy" => policy.as_str()
            )
            .increment(1);
            match policy {
                Policy::Warn => tracing::warn!(
                    event_type = event.event_type,
                    id = event.id,
                    first = %found[0].pointer,
                    violations = found.len(),
                    "event breaks its schema (policy warn): accepted"
                ),
                Policy::Enforce => problems.extend(found.into_iter().map(|problem| match mode {
                    Mode::Batch => problem.at_index(index),
                    Mode::Structured | Mode::Binary => problem,
                })),
            }
        }
        problems
    }

    /// The policy that applies to `event` and its problems; `None` when nothing applies.
    fn problems_of(&self, event: &Event, required: bool) -> Option<(Policy, Vec<Problem>)> {
        let named = event
            .dataschema
            .as_deref()
            .and_then(data_schema::registered_version);
        let schema = match named {
            Some((event_type, version)) => {
                match self
                    .by_type
                    .get(&event_type)
                    .and_then(|schemas| schemas.versions.get(&version))
                {
                    Some(schema) => schema,
                    None => {
                        return Some((
                            Policy::Enforce,
                            vec![data_schema::unknown_version(&event_type, version)],
                        ))
                    }
                }
            }
            None => match self
                .by_type
                .get(&event.event_type)
                .and_then(|schemas| schemas.current.as_ref())
            {
                Some((_, schema)) => schema,
                None if required => {
                    return Some((
                        Policy::Enforce,
                        vec![Problem::new(
                            ErrorCode::SchemaRequired,
                            "/type",
                            "no schema is registered for this type, and this gateway requires one",
                        )],
                    ))
                }
                None => return None,
            },
        };
        Some((
            schema.policy,
            data_schema::violations(&schema.validator, event),
        ))
    }
}

/// The set in force, shared by requests and the refresh task.
#[derive(Default)]
pub struct Schemas {
    current: RwLock<Option<(Arc<SchemaSet>, Instant)>>,
}

impl Schemas {
    /// The set in force, or `None` before the registry first answered.
    pub fn get(&self) -> Option<Arc<SchemaSet>> {
        self.read().as_ref().map(|(set, _)| Arc::clone(set))
    }

    /// Replaces the set, as of now.
    pub fn replace(&self, set: Arc<SchemaSet>) {
        *self.write() = Some((set, Instant::now()));
    }

    /// Marks the set in force as confirmed by the registry now.
    pub fn confirm(&self) {
        if let Some((_, confirmed)) = self.write().as_mut() {
            *confirmed = Instant::now();
        }
    }

    /// Seconds since the registry last confirmed the set; `None` before it first answered.
    pub fn age_secs(&self) -> Option<f64> {
        self.read()
            .as_ref()
            .map(|(_, confirmed)| confirmed.elapsed().as_secs_f64())
    }

    // A panic while the lock was held cannot leave the value half-written (it is replaced
    // whole), so a poisoned lock is still safe to use.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<(Arc<SchemaSet>, Instant)>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<(Arc<SchemaSet>, Instant)>> {
        self.current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared_types::EventData;

    fn listed(event_type: &str, version: u32, policy: Policy, schema: Value) -> ListedVersion {
        ListedVersion {
            event_type: event_type.into(),
            version,
            policy,
            schema,
        }
    }

    fn event(event_type: &str, data: Value) -> Event {
        Event {
            id: "1".into(),
            source: "/s".into(),
            event_type: event_type.into(),
            subject: None,
            time: None,
            datacontenttype: None,
            dataschema: None,
            data: Some(EventData::Json(data)),
            extensions: Default::default(),
        }
    }

    fn integer_n() -> Value {
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    }

    fn string_n() -> Value {
        json!({"type": "object", "properties": {"n": {"type": "string"}}, "required": ["n"]})
    }

    #[test]
    fn the_newest_version_is_current_and_named_versions_are_used() {
        let set = SchemaSet::build(
            vec![
                listed("t", 1, Policy::Enforce, integer_n()),
                listed("t", 2, Policy::Enforce, string_n()),
            ],
            None,
        );
        let as_string = event("t", json!({"n": "x"}));
        assert!(set.check(Mode::Structured, &[as_string], false).is_empty());
        let mut as_integer = event("t", json!({"n": 1}));
        let problems = set.check(Mode::Structured, &[as_integer.clone()], false);
        assert_eq!(problems[0].pointer, "/data/n");
        assert_eq!(problems[0].index, None);
        as_integer.dataschema = Some("https://warren.example/v1/schemas/t/versions/1".into());
        assert!(set
            .check(Mode::Structured, &[as_integer.clone()], false)
            .is_empty());
        as_integer.dataschema = Some("https://warren.example/v1/schemas/t/versions/9".into());
        let problems = set.check(Mode::Structured, &[as_integer], false);
        assert_eq!(problems[0].code, ErrorCode::UnknownSchema);
        assert_eq!(problems[0].pointer, "/dataschema");
    }

    #[test]
    fn batch_problems_carry_their_index_and_warn_accepts() {
        let set = SchemaSet::build(
            vec![
                listed("strict", 1, Policy::Enforce, integer_n()),
                listed("lenient", 1, Policy::Warn, integer_n()),
            ],
            None,
        );
        let events = [
            event("strict", json!({"n": 1})),
            event("lenient", json!({})),
            event("strict", json!({"n": "x"})),
            event("untyped", json!("anything")),
        ];
        let problems = set.check(Mode::Batch, &events, false);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].index, Some(2));
        let required = set.check(Mode::Batch, &events, true);
        assert_eq!(required.len(), 2);
        assert_eq!(required[1].index, Some(3));
        assert_eq!(required[1].code, ErrorCode::SchemaRequired);
    }

    #[test]
    fn unchanged_versions_are_not_compiled_again() {
        let first = SchemaSet::build(vec![listed("t", 1, Policy::Enforce, integer_n())], None);
        let second = SchemaSet::build(
            // A different body under the same version can only be this test's doing: it shows
            // the compiled validator was reused rather than rebuilt.
            vec![listed("t", 1, Policy::Enforce, string_n())],
            Some(&first),
        );
        assert!(second
            .check(Mode::Structured, &[event("t", json!({"n": 1}))], false)
            .is_empty());
        assert_eq!(second.len(), 1);
    }
}
