//! Which routing keys a subscription's queue is bound with. The gateway publishes each message
//! on the topic exchange routed by every type its events have (the routing key and the `CC`
//! header), so a subscription whose filters name types (`types`, `exact` or `prefix` on `type`,
//! …) binds only those, and its queue never receives a message without an event it could
//! match. The binding is a cover, never a filter: it may let through more than matches (the
//! worker still applies the filters), never less. Anything it cannot express binds `#`, every
//! key.

use std::collections::BTreeSet;

use super::filter::Filter;
use super::subscription::SubscriptionSpec;

/// The topic binding that matches every routing key.
pub const EVERY_KEY: &str = "#";
/// More bindings than this, and one `#` is simpler for the broker.
const MAX_BINDINGS: usize = 32;
/// AMQP routing keys are short strings.
const MAX_KEY_BYTES: usize = 255;

/// The binding keys for `spec`: every event type the subscription can match is routed by one.
pub fn binding_keys(spec: &SubscriptionSpec) -> BTreeSet<String> {
    let mut covers: Vec<BTreeSet<String>> = spec.filters.iter().filter_map(cover).collect();
    if let Some(types) = &spec.types {
        covers.push(types.iter().map(|t| exact_key(t)).collect());
    }
    // All of them must match: any one cover will do, and the smallest routes the least.
    covers
        .into_iter()
        .filter(|keys| keys.len() <= MAX_BINDINGS && !keys.contains(EVERY_KEY))
        .min_by_key(BTreeSet::len)
        .unwrap_or_else(|| BTreeSet::from([EVERY_KEY.to_owned()]))
}

/// Keys covering every type `filter` can be true for; `None` when it constrains no type.
fn cover(filter: &Filter) -> Option<BTreeSet<String>> {
    match filter {
        Filter::Exact(pairs) => type_value(pairs).map(|value| BTreeSet::from([exact_key(value)])),
        Filter::Prefix(pairs) => type_value(pairs)
            .and_then(prefix_key)
            .map(|key| BTreeSet::from([key])),
        Filter::Suffix(pairs) => type_value(pairs)
            .and_then(suffix_key)
            .map(|key| BTreeSet::from([key])),
        Filter::All(nested) => nested.iter().filter_map(cover).min_by_key(BTreeSet::len),
        Filter::Any(nested) => {
            let mut union = BTreeSet::new();
            for filter in nested {
                union.extend(cover(filter)?);
            }
            Some(union)
        }
        Filter::Not(_) => None,
    }
}

fn type_value(pairs: &[(String, String)]) -> Option<&str> {
    pairs
        .iter()
        .find(|(attribute, _)| attribute == "type")
        .map(|(_, value)| value.as_str())
}

/// The type itself; one too long to be a routing key binds every key.
fn exact_key(event_type: &str) -> String {
    if event_type.len() > MAX_KEY_BYTES {
        EVERY_KEY.to_owned()
    } else {
        event_type.to_owned()
    }
}

/// `com.example.ord` → `com.example.#`: the whole words before the last dot, then any words.
fn prefix_key(prefix: &str) -> Option<String> {
    let (words, _) = prefix.rsplit_once('.')?;
    let key = format!("{words}.#");
    (key.len() <= MAX_KEY_BYTES).then_some(key)
}

/// `order.placed` → `#.placed`: any words, then the whole words after the first dot.
fn suffix_key(suffix: &str) -> Option<String> {
    let (_, words) = suffix.split_once('.')?;
    let key = format!("#.{words}");
    (key.len() <= MAX_KEY_BYTES).then_some(key)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn keys(body: serde_json::Value) -> Vec<String> {
        let mut body = body;
        body["sink"] = json!("https://example.com/hook");
        let spec = SubscriptionSpec::parse(&body, false).unwrap();
        binding_keys(&spec).into_iter().collect()
    }

    #[test]
    fn named_types_bind_only_those() {
        assert_eq!(
            keys(json!({"types": ["com.a.created", "com.a.deleted"]})),
            ["com.a.created", "com.a.deleted"]
        );
        assert_eq!(
            keys(json!({"filters": [{"exact": {"type": "com.a.created", "subject": "x"}}]})),
            ["com.a.created"]
        );
        assert_eq!(
            keys(
                json!({"filters": [{"any": [{"exact": {"type": "a.b"}}, {"prefix": {"type": "c.d."}}]}]})
            ),
            ["a.b", "c.d.#"]
        );
    }

    #[test]
    fn prefixes_and_suffixes_bind_whole_words() {
        assert_eq!(
            keys(json!({"filters": [{"prefix": {"type": "com.example.ord"}}]})),
            ["com.example.#"]
        );
        assert_eq!(
            keys(json!({"filters": [{"suffix": {"type": "order.placed"}}]})),
            ["#.placed"]
        );
        assert_eq!(
            keys(json!({"filters": [{"prefix": {"type": "com"}}]})),
            [EVERY_KEY]
        );
    }

    #[test]
    fn the_smallest_cover_of_a_conjunction_wins() {
        assert_eq!(
            keys(
                json!({"types": ["a.b", "c.d"], "filters": [{"all": [{"exact": {"subject": "s"}}, {"exact": {"type": "a.b"}}]}]})
            ),
            ["a.b"]
        );
    }

    #[test]
    fn what_names_no_type_binds_every_key() {
        assert_eq!(keys(json!({})), [EVERY_KEY]);
        assert_eq!(
            keys(json!({"filters": [{"suffix": {"subject": "0"}}]})),
            [EVERY_KEY]
        );
        assert_eq!(
            keys(json!({"filters": [{"not": {"exact": {"type": "a.b"}}}]})),
            [EVERY_KEY]
        );
        assert_eq!(
            keys(
                json!({"filters": [{"any": [{"exact": {"type": "a.b"}}, {"exact": {"subject": "s"}}]}]})
            ),
            [EVERY_KEY]
        );
    }

    /// The cover never drops an event the filters match: checked against the topic exchange's
    /// matching rules for a set of types.
    #[test]
    fn every_matching_type_is_routed() {
        let types = [
            "com.example.order.placed",
            "com.example.ord",
            "com.example",
            "placed",
            "x.placed",
            "a.b",
        ];
        let bodies = [
            json!({"filters": [{"prefix": {"type": "com.example.ord"}}]}),
            json!({"filters": [{"prefix": {"type": "com.example."}}]}),
            json!({"filters": [{"suffix": {"type": ".placed"}}]}),
            json!({"filters": [{"suffix": {"type": "r.placed"}}]}),
            json!({"filters": [{"exact": {"type": "a.b"}}]}),
        ];
        for body in bodies {
            let mut full = body.clone();
            full["sink"] = json!("https://example.com/hook");
            let spec = SubscriptionSpec::parse(&full, false).unwrap();
            let bound = binding_keys(&spec);
            for event_type in types {
                let event = shared_types::event::Event::from_json(
                    json!({"specversion": "1.0", "id": "1", "source": "/s", "type": event_type}),
                    &shared_types::event::Validation::structural(),
                )
                .unwrap();
                if spec.matches(&event) {
                    assert!(
                        bound.iter().any(|key| topic_matches(key, event_type)),
                        "{body}: {event_type} matches but {bound:?} does not route it"
                    );
                }
            }
        }
    }

    /// RabbitMQ's topic matching: `*` one word, `#` zero or more.
    fn topic_matches(pattern: &str, key: &str) -> bool {
        fn go(pattern: &[&str], key: &[&str]) -> bool {
            match pattern.split_first() {
                None => key.is_empty(),
                Some((&"#", rest)) => (0..=key.len()).any(|skip| go(rest, &key[skip..])),
                Some((&word, rest)) => key
                    .split_first()
                    .is_some_and(|(first, tail)| (word == "*" || word == *first) && go(rest, tail)),
            }
        }
        let pattern: Vec<&str> = pattern.split('.').collect();
        let key: Vec<&str> = key.split('.').collect();
        go(&pattern, &key)
    }
}
