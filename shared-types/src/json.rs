//! A strict JSON reader for untrusted bodies.
//!
//! `serde_json::from_slice` silently keeps the last of duplicate keys and only stops nesting at
//! 128 levels. An ingest API must refuse ambiguous documents and bound its work, so this reader
//! builds the same `serde_json::Value` but rejects duplicate keys and nesting beyond a limit while
//! parsing, before any deep structure is built.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::problem::{ErrorCode, Problem};

const TOO_DEEP: &str = "nesting deeper than";
const DUPLICATE_KEY: &str = "duplicate key";

/// Parses one complete JSON document, refusing duplicate keys, nesting deeper than `max_depth`
/// (the outermost value is depth 1), non-finite numbers and trailing bytes.
pub fn parse_strict(bytes: &[u8], max_depth: usize) -> Result<Value, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::new(
            ErrorCode::InvalidJson,
            "",
            "the body is empty",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue {
        depth_left: max_depth,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value))
    .map_err(|error| classify(&error, max_depth))?;
    Ok(value)
}

fn classify(error: &serde_json::Error, max_depth: usize) -> Problem {
    let text = error.to_string();
    if text.starts_with(TOO_DEEP) || text.starts_with("recursion limit exceeded") {
        Problem::new(
            ErrorCode::TooDeep,
            "",
            format!("JSON is nested deeper than {max_depth} levels"),
        )
    } else {
        Problem::new(
            ErrorCode::InvalidJson,
            "",
            format!("malformed JSON: {text}"),
        )
    }
}

struct StrictValue {
    depth_left: usize,
}

impl StrictValue {
    fn enter<E: de::Error>(&self) -> Result<StrictValue, E> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) if self.depth_left > 0 => Ok(StrictValue { depth_left }),
            _ => Err(E::custom(format_args!("{TOO_DEEP} the limit"))),
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter::<A::Error>()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(StrictValue {
            depth_left: inner.depth_left,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter::<A::Error>()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "{DUPLICATE_KEY} {key:?} in an object"
                )));
            }
            let value = map.next_value_seed(StrictValue {
                depth_left: inner.depth_left,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(input: &[u8]) -> ErrorCode {
        parse_strict(input, 64).unwrap_err().code
    }

    #[test]
    fn well_formed_document_parses_to_the_same_value_as_serde_json() {
        let input = br#"{"a": [1, 2.5, "x", null, true, {"b": {}}]}"#;
        let expected: Value = serde_json::from_slice(input).unwrap();
        assert_eq!(parse_strict(input, 64).unwrap(), expected);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert_eq!(code_of(br#"{"a": 1, "a": 2}"#), ErrorCode::InvalidJson);
        assert_eq!(
            code_of(br#"{"x": {"a": 1, "a": 1}}"#),
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert_eq!(code_of(br#"{"a": 1} x"#), ErrorCode::InvalidJson);
        assert_eq!(code_of(br#"{"a": 1}{"a": 1}"#), ErrorCode::InvalidJson);
    }

    #[test]
    fn empty_and_blank_bodies_are_refused() {
        assert_eq!(code_of(b""), ErrorCode::InvalidJson);
        assert_eq!(code_of(b"  \n"), ErrorCode::InvalidJson);
    }

    #[test]
    fn truncated_document_is_refused() {
        assert_eq!(code_of(br#"{"a": [1, 2"#), ErrorCode::InvalidJson);
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        assert_eq!(code_of(br#"{"n": 1e400}"#), ErrorCode::InvalidJson);
        assert_eq!(code_of(br#"{"n": -1e400}"#), ErrorCode::InvalidJson);
    }

    #[test]
    fn invalid_utf8_and_lone_surrogates_are_refused() {
        assert_eq!(code_of(b"{\"s\": \"\xff\xfe\"}"), ErrorCode::InvalidJson);
        assert_eq!(code_of(br#"{"s": "\ud800"}"#), ErrorCode::InvalidJson);
    }

    #[test]
    fn nesting_at_the_limit_parses_and_one_deeper_is_too_deep() {
        let at_limit = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_strict(at_limit.as_bytes(), 64).is_ok());
        let too_deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(code_of(too_deep.as_bytes()), ErrorCode::TooDeep);
    }

    #[test]
    fn ten_thousand_levels_are_refused_without_overflowing_the_stack() {
        let input = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert_eq!(code_of(input.as_bytes()), ErrorCode::TooDeep);
    }
}
