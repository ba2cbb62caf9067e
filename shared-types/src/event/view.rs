//! An event's structured JSON form written from borrowed parts, for [`Event`] and for rows the
//! read API streams out without copying them into an [`Event`].

use chrono::{DateTime, Utc};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::{Event, SPEC_VERSION};

/// An event's payload, borrowed; see [`StructuredView`].
#[derive(Debug, Clone, Copy)]
pub enum DataView<'a> {
    /// `data`.
    Json(&'a Value),
    /// `data_base64`.
    Base64(&'a str),
}

/// An event's structured JSON form written from borrowed parts: the one serializer of that form,
/// for [`Event`] and for rows the read API streams out without copying them into an [`Event`].
#[derive(Debug, Clone)]
pub struct StructuredView<'a, X> {
    /// `id`.
    pub id: &'a str,
    /// `source`.
    pub source: &'a str,
    /// `type`.
    pub event_type: &'a str,
    /// `subject`.
    pub subject: Option<&'a str>,
    /// `time`.
    pub time: Option<&'a DateTime<Utc>>,
    /// `datacontenttype`.
    pub datacontenttype: Option<&'a str>,
    /// `dataschema`.
    pub dataschema: Option<&'a str>,
    /// Extension attributes (names are `[a-z0-9]+`, so they never collide with `received_at`).
    pub extensions: X,
    /// `data` or `data_base64`.
    pub data: Option<DataView<'a>>,
    /// Warren's own `received_at`, written last, for stored events.
    pub received_at: Option<&'a DateTime<Utc>>,
}

impl<'a, X> Serialize for StructuredView<'a, X>
where
    X: Iterator<Item = (&'a String, &'a Value)> + Clone,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", SPEC_VERSION)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("source", self.source)?;
        map.serialize_entry("type", self.event_type)?;
        if let Some(subject) = self.subject {
            map.serialize_entry("subject", subject)?;
        }
        if let Some(time) = self.time {
            map.serialize_entry("time", &Event::time_text(time))?;
        }
        if let Some(media_type) = self.datacontenttype {
            map.serialize_entry("datacontenttype", media_type)?;
        }
        if let Some(schema) = self.dataschema {
            map.serialize_entry("dataschema", schema)?;
        }
        for (name, value) in self.extensions.clone() {
            map.serialize_entry(name, value)?;
        }
        match self.data {
            Some(DataView::Json(value)) => map.serialize_entry("data", value)?,
            Some(DataView::Base64(text)) => map.serialize_entry("data_base64", text)?,
            None => {}
        }
        if let Some(received_at) = self.received_at {
            map.serialize_entry("received_at", &Event::time_text(received_at))?;
        }
        map.end()
    }
}
