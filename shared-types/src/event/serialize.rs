//! Writing an [`Event`] in CloudEvents' structured JSON form, through [`StructuredView`], the
//! one serializer of that form, and measuring that form's size without building it.

use std::io;

use serde::ser::{Serialize, Serializer};

use super::{DataView, Event, EventData, StructuredView};

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StructuredView {
            id: &self.id,
            source: &self.source,
            event_type: &self.event_type,
            subject: self.subject.as_deref(),
            time: self.time.as_ref(),
            datacontenttype: self.datacontenttype.as_deref(),
            dataschema: self.dataschema.as_deref(),
            extensions: self.extensions.iter(),
            data: match &self.data {
                Some(EventData::Json(value)) => Some(DataView::Json(value)),
                Some(EventData::Base64(text)) => Some(DataView::Base64(text)),
                None => None,
            },
            received_at: None,
        }
        .serialize(serializer)
    }
}

/// Counts the bytes written to it, so a size is known without a buffer.
pub(super) struct ByteCounter(pub(super) usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
