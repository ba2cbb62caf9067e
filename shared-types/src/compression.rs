//! Compressed envelopes on the queue: fewer bytes for RabbitMQ to write, sync and deliver.
//!
//! A quorum queue writes every message to its write-ahead log, and each time that log reaches
//! `raft.wal_max_size_bytes` (512 MiB by default) the broker rolls it and moves what it held to
//! segment files, a burst of disk writes that delays confirms and deliveries for a moment
//! (docs/benchmarks.md, forty-first round). A batch of JSON events compresses several times over,
//! so the log rolls that much less often. A compressed body carries the AMQP `content_encoding`
//! [`LZ4_ENCODING`] (the LZ4 frame format, which the `lz4` command line tool reads); a body without
//! one is plain JSON, so readers take both and a publisher can switch either way at any time.

use std::io::{Read, Write};

/// AMQP `content_encoding` of a body compressed with LZ4 (frame format).
pub const LZ4_ENCODING: &str = "lz4";

/// Bodies shorter than this go out as they are: a single event's few hundred bytes shrink little,
/// and compressing them would cost more than it saves.
pub const COMPRESS_MIN_BYTES: usize = 1024;

/// Most bytes one body may expand to: RabbitMQ's default largest message (`max_message_size`),
/// so a reader never holds more for one message than the broker would have taken plain.
pub const MAX_DECOMPRESSED_BYTES: usize = 128 * 1024 * 1024;

/// How a publisher writes envelopes on the queue (`WARREN_PUBLISH_COMPRESSION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain JSON: what every reader of every Warren version takes.
    #[default]
    Off,
    /// LZ4 for bodies of at least [`COMPRESS_MIN_BYTES`]; readers from this version on.
    Lz4,
}

/// A body as it goes on the queue, with the `content_encoding` to publish it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBody {
    /// The bytes to publish.
    pub body: Vec<u8>,
    /// `None` for plain JSON.
    pub content_encoding: Option<&'static str>,
}

/// Why a body could not be taken off the queue: permanent, so the message is dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// A `content_encoding` this build does not read.
    #[error("unsupported content encoding {0:?}; this build reads \"lz4\" and none")]
    Unsupported(String),
    /// Not a valid LZ4 frame.
    #[error("the body is not valid LZ4: {0}")]
    Corrupt(std::io::Error),
    /// It would expand beyond [`MAX_DECOMPRESSED_BYTES`].
    #[error("the body expands beyond {MAX_DECOMPRESSED_BYTES} bytes")]
    TooLarge,
}

impl Compression {
    /// Reads the setting's text: `off` or `lz4`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "off" => Some(Self::Off),
            "lz4" => Some(Self::Lz4),
            _ => None,
        }
    }

    /// `body` as this setting publishes it.
    pub fn encode(self, body: Vec<u8>) -> EncodedBody {
        if self == Self::Off || body.len() < COMPRESS_MIN_BYTES {
            return EncodedBody {
                body,
                content_encoding: None,
            };
        }
        // Writing to a Vec cannot fail; should the encoder ever report an error, the plain body
        // is still a valid message.
        match lz4_frame(&body) {
            Ok(compressed) => EncodedBody {
                body: compressed,
                content_encoding: Some(LZ4_ENCODING),
            },
            Err(_) => EncodedBody {
                body,
                content_encoding: None,
            },
        }
    }
}

/// `body` written with the `content_encoding` another message came with, whatever its size: for
/// a message derived from that one and published with a copy of its properties.
pub fn encode_like(
    body: Vec<u8>,
    content_encoding: Option<&str>,
) -> Result<Vec<u8>, DecompressError> {
    match content_encoding {
        None | Some("") | Some("identity") => Ok(body),
        Some(LZ4_ENCODING) => lz4_frame(&body).map_err(DecompressError::Corrupt),
        Some(other) => Err(DecompressError::Unsupported(other.to_owned())),
    }
}

/// `body` as one LZ4 frame.
fn lz4_frame(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(body.len() / 4));
    encoder.write_all(body)?;
    encoder.finish().map_err(std::io::Error::other)
}

/// The plain bytes of a body published with `content_encoding`.
pub fn decompress<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
) -> Result<std::borrow::Cow<'a, [u8]>, DecompressError> {
    match content_encoding {
        None | Some("") | Some("identity") => Ok(std::borrow::Cow::Borrowed(body)),
        Some(LZ4_ENCODING) => {
            let limit = MAX_DECOMPRESSED_BYTES as u64;
            let mut plain = Vec::with_capacity(body.len().saturating_mul(4));
            lz4_flex::frame::FrameDecoder::new(body)
                .take(limit + 1)
                .read_to_end(&mut plain)
                .map_err(DecompressError::Corrupt)?;
            if plain.len() as u64 > limit {
                return Err(DecompressError::TooLarge);
            }
            Ok(std::borrow::Cow::Owned(plain))
        }
        Some(other) => Err(DecompressError::Unsupported(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_body() -> Vec<u8> {
        let events: Vec<String> = (0..100)
            .map(|n| {
                format!(
                    r#"{{"specversion":"1.0","id":"e-{n}","source":"/t","type":"page.viewed","data":{{"n":{n}}}}}"#
                )
            })
            .collect();
        format!("[{}]", events.join(",")).into_bytes()
    }

    #[test]
    fn a_batch_is_compressed_and_read_back_byte_for_byte() {
        let body = batch_body();
        let encoded = Compression::Lz4.encode(body.clone());
        assert_eq!(encoded.content_encoding, Some(LZ4_ENCODING));
        assert!(
            encoded.body.len() * 3 < body.len(),
            "{} bytes",
            encoded.body.len()
        );
        let plain = decompress(&encoded.body, encoded.content_encoding).unwrap();
        assert_eq!(plain.as_ref(), body.as_slice());
    }

    #[test]
    fn small_bodies_and_the_off_setting_stay_plain() {
        let small = br#"{"v":1}"#.to_vec();
        assert_eq!(
            Compression::Lz4.encode(small.clone()),
            EncodedBody {
                body: small,
                content_encoding: None
            }
        );
        let body = batch_body();
        assert_eq!(Compression::Off.encode(body.clone()).body, body);
        assert_eq!(decompress(&body, None).unwrap().as_ref(), body.as_slice());
    }

    #[test]
    fn unknown_encodings_and_corrupt_frames_are_refused() {
        assert!(matches!(
            decompress(b"x", Some("gzip")),
            Err(DecompressError::Unsupported(name)) if name == "gzip"
        ));
        assert!(matches!(
            decompress(b"not lz4 at all", Some(LZ4_ENCODING)),
            Err(DecompressError::Corrupt(_))
        ));
    }

    #[test]
    fn a_body_that_expands_past_the_limit_is_refused() {
        let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 0..=(MAX_DECOMPRESSED_BYTES / zeros.len()) {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 1024 * 1024, "{} bytes", bomb.len());
        assert!(matches!(
            decompress(&bomb, Some(LZ4_ENCODING)),
            Err(DecompressError::TooLarge)
        ));
    }

    #[test]
    fn a_derived_message_is_written_in_its_originals_encoding_whatever_its_size() {
        let small = br#"{"v":1}"#.to_vec();
        let compressed = encode_like(small.clone(), Some(LZ4_ENCODING)).unwrap();
        assert_ne!(compressed, small);
        assert_eq!(
            decompress(&compressed, Some(LZ4_ENCODING))
                .unwrap()
                .as_ref(),
            small.as_slice()
        );
        assert_eq!(encode_like(small.clone(), None).unwrap(), small);
        assert!(encode_like(small, Some("br")).is_err());
    }

    #[test]
    fn the_setting_reads_off_and_lz4_only() {
        assert_eq!(Compression::parse("off"), Some(Compression::Off));
        assert_eq!(Compression::parse("lz4"), Some(Compression::Lz4));
        assert_eq!(Compression::parse("gzip"), None);
    }
}
