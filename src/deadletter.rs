//! Dead letters: what a refused input record carries of its raw bytes, the same in file mode
//! (`labelqc report --dead-letters FILE`) and in the live service's dead-letter topic.
//!
//! A dead letter keeps the record intact where it can and bounded where it must: UTF-8 input is
//! carried as text, anything else as base64 (`raw_encoding: "base64"`), never lossily; a record
//! over the excerpt limit is cut (on a character boundary for text) and says so (`truncated`),
//! while its whole size (`raw_bytes`) and SHA-256 (`raw_sha256`) still identify it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The most raw bytes a dead letter on a Kafka topic carries: far below the producer's default
/// `message.max.bytes` (1,000,000) even when every byte is a control character that JSON escapes
/// as six (`\u0001`).
pub const KAFKA_EXCERPT_BYTES: usize = 64 * 1024;

/// The raw bytes of a refused record, as a dead letter carries them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawExcerpt {
    /// The record's bytes (its first ones when `truncated`): as text when they are UTF-8,
    /// else base64 (standard alphabet, padded) as `raw_encoding` says.
    pub raw: String,
    /// `"base64"` when `raw` is base64 of the bytes; absent when `raw` is the text itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_encoding: Option<String>,
    /// The whole record's size in bytes.
    pub raw_bytes: u64,
    /// SHA-256 of the whole record, lowercase hex.
    pub raw_sha256: String,
    /// Whether `raw` holds only the record's first bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

impl RawExcerpt {
    /// The excerpt of `bytes` of at most `limit` bytes (before encoding).
    pub fn new(bytes: &[u8], limit: usize) -> RawExcerpt {
        let raw_sha256 = hex(&Sha256::digest(bytes));
        let (raw, raw_encoding, kept) = match std::str::from_utf8(bytes) {
            Ok(text) => {
                let mut end = text.len().min(limit);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                (text[..end].to_string(), None, end)
            }
            Err(_) => {
                let end = bytes.len().min(limit);
                let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes[..end]);
                (encoded, Some("base64".to_string()), end)
            }
        };
        RawExcerpt {
            raw,
            raw_encoding,
            raw_bytes: bytes.len() as u64,
            raw_sha256,
            truncated: kept < bytes.len(),
        }
    }

    /// The bytes `raw` stands for (the whole record unless `truncated`).
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        match self.raw_encoding.as_deref() {
            Some("base64") => base64::engine::general_purpose::STANDARD.decode(&self.raw),
            _ => Ok(self.raw.as_bytes().to_vec()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_as_text() {
        let excerpt = RawExcerpt::new("{\"a\": \"é\"}".as_bytes(), 1024);
        assert_eq!(excerpt.raw, "{\"a\": \"é\"}");
        assert_eq!(excerpt.raw_encoding, None);
        assert_eq!(excerpt.raw_bytes, 11);
        assert!(!excerpt.truncated);
        // SHA-256 of the record, as `sha256sum` prints it.
        assert_eq!(
            RawExcerpt::new(b"abc", 10).raw_sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn binary_is_base64_and_round_trips() {
        let bytes = [0xff, 0x00, 0xfe, b'{', 0x80];
        let excerpt = RawExcerpt::new(&bytes, 1024);
        assert_eq!(excerpt.raw_encoding.as_deref(), Some("base64"));
        assert_eq!(excerpt.bytes().unwrap(), bytes);
        let json = serde_json::to_string(&excerpt).unwrap();
        let back: RawExcerpt = serde_json::from_str(&json).unwrap();
        assert_eq!(back, excerpt);
    }

    #[test]
    fn long_records_are_cut_on_a_character_boundary() {
        let text = "é".repeat(10); // 20 bytes
        let excerpt = RawExcerpt::new(text.as_bytes(), 5);
        assert_eq!(excerpt.raw, "éé");
        assert!(excerpt.truncated);
        assert_eq!(excerpt.raw_bytes, 20);
        let binary = vec![0xffu8; 100];
        let excerpt = RawExcerpt::new(&binary, 10);
        assert_eq!(excerpt.bytes().unwrap().len(), 10);
        assert!(excerpt.truncated);
    }
}
