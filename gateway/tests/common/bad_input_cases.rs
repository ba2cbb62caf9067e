//! The bad-input cases, shared by the gateway tests and the end-to-end tests through nginx:
//! each with the status and error code it must get.

use std::io::Write;

use serde_json::{json, Value};

/// A valid structured event with a unique id.
pub fn event() -> Value {
    json!({
        "specversion": "1.0",
        "id": uuid::Uuid::new_v4().to_string(),
        "source": "/tests",
        "type": "test.event",
    })
}

pub struct Case {
    pub name: &'static str,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub status: u16,
    pub code: &'static str,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, status: u16, code: &'static str) -> Case {
    Case {
        name,
        content_type: "application/cloudevents+json",
        headers: Vec::new(),
        body: body.into(),
        status,
        code,
    }
}

fn with_field(field: &str, value: Value) -> Vec<u8> {
    let mut event = event();
    event[field] = value;
    event.to_string().into_bytes()
}

fn without(field: &str) -> Vec<u8> {
    let mut event = event();
    event.as_object_mut().unwrap().remove(field);
    event.to_string().into_bytes()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Every case of the bad-input list.
pub fn cases() -> Vec<Case> {
    let valid = event().to_string();
    let mut cases = vec![
        case("malformed JSON", "{\"specversion\": ", 400, "invalid_json"),
        case(
            "truncated body",
            &valid.as_bytes()[..valid.len() - 5],
            400,
            "invalid_json",
        ),
        case(
            "trailing garbage",
            format!("{valid} trailing"),
            400,
            "invalid_json",
        ),
        case("empty body", "", 400, "invalid_json"),
        case(
            "specversion 0.3",
            with_field("specversion", json!("0.3")),
            400,
            "invalid_event",
        ),
        case(
            "specversion 2.0",
            with_field("specversion", json!("2.0")),
            400,
            "invalid_event",
        ),
        case(
            "invalid time",
            with_field("time", json!("2024-02-30T25:00:00Z")),
            400,
            "invalid_event",
        ),
        case(
            "invalid UTF-8",
            b"{\"specversion\":\"1.0\",\"id\":\"\xff\xfe\",\"source\":\"/s\",\"type\":\"t\"}"
                .to_vec(),
            400,
            "invalid_json",
        ),
        case(
            "lone surrogate",
            r#"{"specversion":"1.0","id":"\ud800","source":"/s","type":"t"}"#,
            400,
            "invalid_json",
        ),
        // Byte limits count UTF-8 bytes: 129 two-byte characters are 258 bytes, over 256.
        case(
            "id of 129 two-byte characters",
            with_field("id", json!("é".repeat(129))),
            400,
            "invalid_event",
        ),
        case(
            "extension of 129 two-byte characters",
            with_field("region", json!("é".repeat(129))),
            400,
            "invalid_event",
        ),
        case(
            "subject of 86 three-byte characters",
            with_field("subject", json!("€".repeat(86))),
            400,
            "invalid_event",
        ),
        case(
            "type of 65 four-byte characters",
            with_field("type", json!("😀".repeat(65))),
            400,
            "invalid_event",
        ),
        case(
            "NUL in a string",
            with_field("subject", json!("a\u{0}b")),
            400,
            "invalid_event",
        ),
        case(
            "NUL in data",
            with_field("data", json!({"k": "\u{0}"})),
            400,
            "invalid_event",
        ),
        case(
            "1 MB string",
            with_field("data", json!("x".repeat(1024 * 1024))),
            413,
            "too_large",
        ),
        case(
            "event over 64 KiB",
            with_field("data", json!("x".repeat(70 * 1024))),
            400,
            "invalid_event",
        ),
        case(
            "nesting 10 000 deep",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            400,
            "too_deep",
        ),
        case(
            "duplicate keys",
            r#"{"specversion":"1.0","id":"a","id":"b","source":"/s","type":"t"}"#,
            400,
            "invalid_json",
        ),
        case(
            "invalid extension name",
            with_field("Bad-Name", json!("x")),
            400,
            "invalid_event",
        ),
        case(
            "extension too long",
            with_field("abcdefghijklmnopqrstu", json!("x")),
            400,
            "invalid_event",
        ),
        case("not an object", "[1]", 400, "invalid_event"),
        Case {
            content_type: "application/cloudevents-batch+json",
            ..case("empty batch", "[]", 400, "empty_batch")
        },
        Case {
            content_type: "application/cloudevents-batch+json",
            ..case(
                "batch over the limit",
                format!("[{}]", vec![valid.as_str(); 501].join(",")),
                413,
                "too_large",
            )
        },
        Case {
            content_type: "application/cloudevents-batch+json",
            ..case(
                "batch of non-objects",
                "[1, \"a\", null]",
                400,
                "invalid_event",
            )
        },
        Case {
            content_type: "application/cloudevents-batch+json",
            ..case(
                "batch that is an object",
                valid.clone(),
                400,
                "not_an_array",
            )
        },
        Case {
            content_type: "text/plain",
            ..case(
                "wrong content type",
                valid.clone(),
                415,
                "unsupported_media_type",
            )
        },
        Case {
            content_type: "",
            ..case(
                "no content type",
                valid.clone(),
                415,
                "unsupported_media_type",
            )
        },
        Case {
            content_type: "text/plain",
            headers: vec![
                ("ce-id", "1".into()),
                ("ce-source", "/s".into()),
                ("ce-type", "t".into()),
            ],
            ..case(
                "binary mode without ce-specversion",
                "hello",
                400,
                "invalid_event",
            )
        },
        Case {
            headers: vec![("content-encoding", "gzip".into())],
            ..case(
                "gzip bomb",
                gzip(&vec![b' '; 64 * 1024 * 1024]),
                413,
                "too_large",
            )
        },
        Case {
            headers: vec![("content-encoding", "gzip".into())],
            ..case(
                "gzip header on a plain body",
                valid.clone(),
                400,
                "invalid_encoding",
            )
        },
        Case {
            headers: vec![("content-encoding", "br".into())],
            ..case(
                "unsupported encoding",
                valid.clone(),
                415,
                "unsupported_encoding",
            )
        },
        case(
            "body over the limit",
            vec![b' '; 1024 * 1024 + 1],
            413,
            "too_large",
        ),
        Case {
            headers: vec![("x-padding", "p".repeat(20 * 1024))],
            ..case(
                "headers over the limit",
                valid.clone(),
                431,
                "headers_too_large",
            )
        },
    ];
    // 1e400 cannot be written with serde_json, so it is spliced in as text.
    let number = event().to_string().replacen('}', r#","data":1e400}"#, 1);
    cases.push(case("number 1e400", number, 400, "invalid_json"));
    for field in ["specversion", "id", "source", "type"] {
        cases.push(case(
            "required attribute missing",
            without(field),
            400,
            "invalid_event",
        ));
    }
    for field in [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data_base64",
    ] {
        cases.push(case(
            "attribute of the wrong JSON type",
            with_field(field, json!(17)),
            400,
            "invalid_event",
        ));
    }
    for field in ["id", "source", "type", "subject"] {
        cases.push(case(
            "empty string",
            with_field(field, json!("")),
            400,
            "invalid_event",
        ));
    }
    cases
}
