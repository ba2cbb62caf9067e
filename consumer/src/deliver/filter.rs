//! The filter dialects of the CloudEvents Subscriptions API (`subscriptions/spec.md` 3.2.4):
//! `exact`, `prefix`, `suffix` over attribute values, and `all`, `any`, `not` over nested
//! expressions. A subscription's `filters` array is an implicit `all`. An attribute the event
//! does not carry matches no comparison, so `not` of it is true. The optional `sql` dialect is
//! refused at creation, as the specification requires for a dialect not supported.

use std::borrow::Cow;

use serde_json::{Map, Value};
use shared_types::event::Event;

use super::problem::FieldProblem;

/// Deepest nesting of `all`/`any`/`not` accepted, and most expressions in one subscription:
/// filters are evaluated for every event, so their cost is bounded.
pub const MAX_DEPTH: usize = 8;
/// See [`MAX_DEPTH`].
pub const MAX_EXPRESSIONS: usize = 64;

/// One filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every named attribute equals its value.
    Exact(Vec<(String, String)>),
    /// Every named attribute starts with its value.
    Prefix(Vec<(String, String)>),
    /// Every named attribute ends with its value.
    Suffix(Vec<(String, String)>),
    /// Every nested expression is true.
    All(Vec<Filter>),
    /// At least one nested expression is true.
    Any(Vec<Filter>),
    /// The nested expression is false.
    Not(Box<Filter>),
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Filter::Exact(pairs) => compare(pairs, event, |value, wanted| value == wanted),
            Filter::Prefix(pairs) => {
                compare(pairs, event, |value, wanted| value.starts_with(wanted))
            }
            Filter::Suffix(pairs) => compare(pairs, event, |value, wanted| value.ends_with(wanted)),
            Filter::All(nested) => nested.iter().all(|filter| filter.matches(event)),
            Filter::Any(nested) => nested.iter().any(|filter| filter.matches(event)),
            Filter::Not(nested) => !nested.matches(event),
        }
    }

    /// Parses a subscription's `filters` array, reporting every problem with its path.
    pub fn parse_all(value: &Value, problems: &mut Vec<FieldProblem>) -> Vec<Filter> {
        let Some(items) = value.as_array() else {
            problems.push(FieldProblem::new(
                "/filters",
                "invalid_filter",
                "filters is an array of filter expressions",
            ));
            return Vec::new();
        };
        let mut budget = MAX_EXPRESSIONS;
        items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| {
                parse(item, &format!("/filters/{index}"), 1, &mut budget, problems)
            })
            .collect()
    }
}

fn compare(pairs: &[(String, String)], event: &Event, test: impl Fn(&str, &str) -> bool) -> bool {
    pairs.iter().all(|(name, wanted)| {
        attribute(event, name).is_some_and(|value| test(value.as_ref(), wanted))
    })
}

/// An attribute's value in its canonical string form (CloudEvents 1.0 section 2.3), or `None`
/// when the event does not carry it.
pub fn attribute<'a>(event: &'a Event, name: &str) -> Option<Cow<'a, str>> {
    match name {
        "specversion" => Some(Cow::Borrowed(shared_types::event::SPEC_VERSION)),
        "id" => Some(Cow::Borrowed(&event.id)),
        "source" => Some(Cow::Borrowed(&event.source)),
        "type" => Some(Cow::Borrowed(&event.event_type)),
        "subject" => event.subject.as_deref().map(Cow::Borrowed),
        "time" => event
            .time
            .as_ref()
            .map(|time| Cow::Owned(Event::time_text(time))),
        "datacontenttype" => event.datacontenttype.as_deref().map(Cow::Borrowed),
        "dataschema" => event.dataschema.as_deref().map(Cow::Borrowed),
        extension => match event.extensions.get(extension)? {
            Value::String(text) => Some(Cow::Borrowed(text)),
            Value::Bool(flag) => Some(Cow::Owned(flag.to_string())),
            Value::Number(number) => Some(Cow::Owned(number.to_string())),
            _ => None,
        },
    }
}

fn parse(
    value: &Value,
    path: &str,
    depth: usize,
    budget: &mut usize,
    problems: &mut Vec<FieldProblem>,
) -> Option<Filter> {
    if depth > MAX_DEPTH {
        problems.push(FieldProblem::new(
            path,
            "invalid_filter",
            format!("filters nest at most {MAX_DEPTH} deep"),
        ));
        return None;
    }
    if *budget == 0 {
        problems.push(FieldProblem::new(
            path,
            "invalid_filter",
            format!("a subscription holds at most {MAX_EXPRESSIONS} filter expressions"),
        ));
        return None;
    }
    *budget -= 1;
    let object = match value.as_object() {
        Some(object) if object.len() == 1 => object,
        _ => {
            problems.push(FieldProblem::new(
                path,
                "invalid_filter",
                "a filter expression is an object with exactly one dialect, e.g. {\"exact\": {\"type\": \"com.example.order.placed\"}}",
            ));
            return None;
        }
    };
    let (dialect, body) = object.iter().next()?;
    let path = format!("{path}/{dialect}");
    match dialect.as_str() {
        "exact" => comparisons(body, &path, problems).map(Filter::Exact),
        "prefix" => comparisons(body, &path, problems).map(Filter::Prefix),
        "suffix" => comparisons(body, &path, problems).map(Filter::Suffix),
        "all" | "any" => {
            let nested = match body.as_array() {
                Some(items) if !items.is_empty() => items,
                _ => {
                    problems.push(FieldProblem::new(
                        &path,
                        "invalid_filter",
                        format!("{dialect} takes a non-empty array of filter expressions"),
                    ));
                    return None;
                }
            };
            let parsed: Vec<Option<Filter>> = nested
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    parse(
                        item,
                        &format!("{path}/{index}"),
                        depth + 1,
                        budget,
                        problems,
                    )
                })
                .collect();
            let parsed: Option<Vec<Filter>> = parsed.into_iter().collect();
            let parsed = parsed?;
            Some(if dialect == "all" {
                Filter::All(parsed)
            } else {
                Filter::Any(parsed)
            })
        }
        "not" => parse(body, &path, depth + 1, budget, problems).map(|f| Filter::Not(Box::new(f))),
        other => {
            problems.push(FieldProblem::new(
                &path,
                "unsupported_filter_dialect",
                format!(
                    "filter dialect {other:?} is not supported; use exact, prefix, suffix, all, any or not"
                ),
            ));
            None
        }
    }
}

fn comparisons(
    body: &Value,
    path: &str,
    problems: &mut Vec<FieldProblem>,
) -> Option<Vec<(String, String)>> {
    let Some(object) = body.as_object().filter(|object| !object.is_empty()) else {
        problems.push(FieldProblem::new(
            path,
            "invalid_filter",
            "takes an object of attribute names to string values",
        ));
        return None;
    };
    let before = problems.len();
    let pairs = pairs(object, path, problems);
    (problems.len() == before).then_some(pairs)
}

fn pairs(
    object: &Map<String, Value>,
    path: &str,
    problems: &mut Vec<FieldProblem>,
) -> Vec<(String, String)> {
    let mut pairs = Vec::with_capacity(object.len());
    for (name, value) in object {
        let field = format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"));
        let valid_name = !name.is_empty()
            && name.len() <= shared_types::event::MAX_EXTENSION_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid_name {
            problems.push(FieldProblem::new(
                &field,
                "invalid_filter",
                "an attribute name is 1 to 20 lowercase letters and digits",
            ));
            continue;
        }
        match value.as_str() {
            Some(text) if !text.is_empty() => pairs.push((name.clone(), text.to_owned())),
            _ => problems.push(FieldProblem::new(
                &field,
                "invalid_filter",
                "the value to compare is a non-empty string",
            )),
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shared_types::event::Validation;

    fn event(value: Value) -> Event {
        Event::from_json(value, &Validation::structural()).unwrap()
    }

    fn order() -> Event {
        event(json!({
            "specversion": "1.0", "id": "1", "source": "/shop", "type": "com.shop.order.placed",
            "subject": "order-7", "region": "eu", "priority": 3, "urgent": true
        }))
    }

    fn filters(value: Value) -> Vec<Filter> {
        let mut problems = Vec::new();
        let parsed = Filter::parse_all(&value, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        parsed
    }

    fn passes(value: Value, event: &Event) -> bool {
        filters(value).iter().all(|filter| filter.matches(event))
    }

    #[test]
    fn each_dialect_matches_as_the_specification_says() {
        let order = order();
        assert!(passes(
            json!([{"exact": {"type": "com.shop.order.placed", "subject": "order-7"}}]),
            &order
        ));
        assert!(!passes(
            json!([{"exact": {"type": "com.shop.order"}}]),
            &order
        ));
        assert!(passes(json!([{"prefix": {"type": "com.shop."}}]), &order));
        assert!(!passes(json!([{"prefix": {"type": "com.other."}}]), &order));
        assert!(passes(json!([{"suffix": {"type": ".placed"}}]), &order));
        assert!(!passes(json!([{"suffix": {"type": ".cancelled"}}]), &order));
        assert!(passes(
            json!([{"all": [{"exact": {"region": "eu"}}, {"prefix": {"subject": "order-"}}]}]),
            &order
        ));
        assert!(!passes(
            json!([{"all": [{"exact": {"region": "eu"}}, {"prefix": {"subject": "cart-"}}]}]),
            &order
        ));
        assert!(passes(
            json!([{"any": [{"exact": {"region": "us"}}, {"exact": {"region": "eu"}}]}]),
            &order
        ));
        assert!(!passes(
            json!([{"any": [{"exact": {"region": "us"}}, {"exact": {"region": "ap"}}]}]),
            &order
        ));
        assert!(passes(
            json!([{"not": {"exact": {"region": "us"}}}]),
            &order
        ));
        assert!(!passes(
            json!([{"not": {"exact": {"region": "eu"}}}]),
            &order
        ));
    }

    #[test]
    fn extension_values_compare_in_their_canonical_string_form() {
        let order = order();
        assert!(passes(
            json!([{"exact": {"priority": "3", "urgent": "true"}}]),
            &order
        ));
        assert!(passes(
            json!([{"exact": {"specversion": "1.0", "source": "/shop", "id": "1"}}]),
            &order
        ));
    }

    #[test]
    fn a_missing_attribute_matches_no_comparison() {
        let order = order();
        assert!(!passes(json!([{"exact": {"tenant": "a"}}]), &order));
        assert!(!passes(json!([{"prefix": {"dataschema": "h"}}]), &order));
        assert!(passes(json!([{"not": {"exact": {"tenant": "a"}}}]), &order));
    }

    #[test]
    fn the_filters_array_is_an_implicit_all_and_empty_matches_everything() {
        let order = order();
        assert!(passes(json!([]), &order));
        assert!(!passes(
            json!([{"prefix": {"type": "com.shop."}}, {"exact": {"region": "us"}}]),
            &order
        ));
    }

    #[test]
    fn malformed_filters_are_refused_with_their_path() {
        let cases = [
            (json!({"exact": {}}), "/filters"),
            (json!([{"sql": "type = 'a'"}]), "/filters/0/sql"),
            (json!([{"exact": {"type": ""}}]), "/filters/0/exact/type"),
            (json!([{"exact": {"Type": "a"}}]), "/filters/0/exact/Type"),
            (json!([{"exact": {"type": 1}}]), "/filters/0/exact/type"),
            (json!([{"all": []}]), "/filters/0/all"),
            (
                json!([{"any": [{"exact": {"type": "a"}}, {"bogus": {}}]}]),
                "/filters/0/any/1/bogus",
            ),
            (
                json!([{"exact": {"type": "a"}, "prefix": {"type": "b"}}]),
                "/filters/0",
            ),
            (
                json!([{"not": [{"exact": {"type": "a"}}]}]),
                "/filters/0/not",
            ),
        ];
        for (value, field) in cases {
            let mut problems = Vec::new();
            Filter::parse_all(&value, &mut problems);
            assert!(
                problems.iter().any(|problem| problem.pointer == field),
                "{value}: expected a problem at {field}, got {problems:?}"
            );
        }
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let mut deep = json!({"exact": {"type": "a"}});
        for _ in 0..MAX_DEPTH {
            deep = json!({"not": deep});
        }
        let mut problems = Vec::new();
        Filter::parse_all(&json!([deep]), &mut problems);
        assert!(!problems.is_empty());
        let many: Vec<Value> = (0..=MAX_EXPRESSIONS)
            .map(|_| json!({"exact": {"type": "a"}}))
            .collect();
        let mut problems = Vec::new();
        Filter::parse_all(&Value::Array(many), &mut problems);
        assert!(!problems.is_empty());
    }
}
