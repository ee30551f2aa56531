//! The input model of spec section 1: label events and gold answers as JSON objects, parsed and
//! validated one record at a time. A bad record yields a [`ParseError`] that says what is wrong;
//! it never affects the records around it.

use std::borrow::Cow;

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::label::RawLabel;

/// The largest record accepted, in bytes (spec: a message over 1 MiB is refused).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The project or task of an event that names none.
pub const DEFAULT_SCOPE_NAME: &str = "default";

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("record is {bytes} bytes, over the {limit}-byte limit; split or shorten it")]
    TooLarge { bytes: usize, limit: usize },
    #[error("not a valid record: {0}")]
    Json(String),
    #[error("`label` is missing or null; it is required unless `op` is \"delete\"")]
    MissingLabel,
    #[error("`op` must be \"upsert\" or \"delete\", not {0:?}")]
    BadOp(String),
    #[error(transparent)]
    IdCollision(#[from] crate::label::IdCollision),
}

/// What an event does to the label (or gold answer) with its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set the label, replacing any earlier one with the same identity.
    Upsert,
    /// Remove the label with this identity, if there is one.
    Delete,
}

/// One label event (spec section 1), borrowing from its source line.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelEvent<'a> {
    pub project: Cow<'a, str>,
    pub task: Cow<'a, str>,
    pub item_id: Cow<'a, str>,
    pub annotator_id: Cow<'a, str>,
    /// `Some` for an upsert, `None` for a delete.
    pub label: Option<RawLabel<'a>>,
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    pub duration_ms: Option<u64>,
    pub op: Op,
}

/// One gold answer (spec section 1), borrowing from its source line.
#[derive(Clone, Debug, PartialEq)]
pub struct GoldEvent<'a> {
    pub project: Cow<'a, str>,
    pub task: Cow<'a, str>,
    pub item_id: Cow<'a, str>,
    /// `Some` for an upsert, `None` for a delete.
    pub label: Option<RawLabel<'a>>,
    pub op: Op,
}

#[derive(Deserialize)]
struct RawLabelEvent<'a> {
    #[serde(borrow)]
    item_id: Cow<'a, str>,
    #[serde(borrow)]
    annotator_id: Cow<'a, str>,
    #[serde(borrow, default)]
    label: Option<LabelValue<'a>>,
    ts: Timestamp,
    #[serde(borrow, default)]
    project: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    task: Option<Cow<'a, str>>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RawGoldEvent<'a> {
    #[serde(borrow)]
    item_id: Cow<'a, str>,
    #[serde(borrow, default)]
    label: Option<LabelValue<'a>>,
    #[serde(borrow, default)]
    project: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    task: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
}

/// A label value as it is deserialised: a string, a number, a boolean or an array of strings.
struct LabelValue<'a>(RawLabel<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for LabelValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LabelVisitor(std::marker::PhantomData))
    }
}

struct LabelVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for LabelVisitor<'a> {
    type Value = LabelValue<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a `label` that is a string, number, boolean or array of strings")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(LabelValue(RawLabel::String(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(LabelValue(RawLabel::String(Cow::Owned(v.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(LabelValue(RawLabel::String(Cow::Owned(v))))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(LabelValue(RawLabel::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(LabelValue(RawLabel::Number(v as f64)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(LabelValue(RawLabel::Number(v as f64)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(LabelValue(RawLabel::Number(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(SetElement(item)) = seq.next_element()? {
            items.push(item);
        }
        items.sort_unstable_by(|a: &Cow<'_, str>, b| a.as_bytes().cmp(b.as_bytes()));
        items.dedup();
        Ok(LabelValue(RawLabel::Set(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom("`label` must be a string, number, boolean or array of strings, not an object"))
    }
}

/// One element of a multi-label set: a string.
struct SetElement<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for SetElement<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ElementVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ElementVisitor<'a> {
            type Value = SetElement<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("only strings in a `label` array (a multi-label set)")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(SetElement(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SetElement(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(ElementVisitor(std::marker::PhantomData))
    }
}

/// `ts`: an RFC 3339 string or integer epoch milliseconds, as epoch milliseconds.
struct Timestamp(i64);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a `ts` that is an RFC 3339 string or integer epoch milliseconds")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Timestamp(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom(format!("`ts` {v} is out of range for epoch milliseconds")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "`ts` {v} is neither an RFC 3339 string nor integer epoch milliseconds"
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| Timestamp(t.timestamp_millis()))
                    .map_err(|e| E::custom(format!("`ts` {v:?} is not an RFC 3339 time ({e})")))
            }
        }
        deserializer.deserialize_any(TimestampVisitor)
    }
}

fn check_size(record: &str) -> Result<(), ParseError> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(ParseError::TooLarge { bytes: record.len(), limit: MAX_RECORD_BYTES });
    }
    Ok(())
}

fn parse_op(op: Option<Cow<'_, str>>) -> Result<Op, ParseError> {
    match op.as_deref() {
        None | Some("upsert") => Ok(Op::Upsert),
        Some("delete") => Ok(Op::Delete),
        Some(other) => Err(ParseError::BadOp(other.to_string())),
    }
}

fn scope_name(name: Option<Cow<'_, str>>) -> Cow<'_, str> {
    name.unwrap_or(Cow::Borrowed(DEFAULT_SCOPE_NAME))
}

/// The label of an upsert (required) or a delete (ignored).
fn label_for(op: Op, label: Option<LabelValue<'_>>) -> Result<Option<RawLabel<'_>>, ParseError> {
    match (op, label) {
        (Op::Delete, _) => Ok(None),
        (Op::Upsert, None) => Err(ParseError::MissingLabel),
        (Op::Upsert, Some(LabelValue(label))) => Ok(Some(label)),
    }
}

/// Parses one label event.
pub fn parse_label_event(record: &str) -> Result<LabelEvent<'_>, ParseError> {
    check_size(record)?;
    let raw: RawLabelEvent<'_> = serde_json::from_str(record).map_err(|e| ParseError::Json(e.to_string()))?;
    let op = parse_op(raw.op)?;
    let label = label_for(op, raw.label)?;
    let ts_ms = raw.ts.0;
    Ok(LabelEvent {
        project: scope_name(raw.project),
        task: scope_name(raw.task),
        item_id: raw.item_id,
        annotator_id: raw.annotator_id,
        label,
        ts_ms,
        duration_ms: raw.duration_ms,
        op,
    })
}

/// Parses one gold answer.
pub fn parse_gold_event(record: &str) -> Result<GoldEvent<'_>, ParseError> {
    check_size(record)?;
    let raw: RawGoldEvent<'_> = serde_json::from_str(record).map_err(|e| ParseError::Json(e.to_string()))?;
    let op = parse_op(raw.op)?;
    let label = label_for(op, raw.label)?;
    Ok(GoldEvent {
        project: scope_name(raw.project),
        task: scope_name(raw.task),
        item_id: raw.item_id,
        label,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_event() {
        let ev = parse_label_event(
            r#"{"item_id":"i1","annotator_id":"a","label":["y","x","y"],"ts":"2025-01-06T08:00:00Z","project":"p","task":"t","duration_ms":1200}"#,
        )
        .unwrap();
        assert_eq!(ev.project, "p");
        assert_eq!(ev.task, "t");
        assert_eq!(ev.label, Some(RawLabel::Set(vec!["x".into(), "y".into()])));
        assert_eq!(ev.ts_ms, 1_736_150_400_000);
        assert_eq!(ev.duration_ms, Some(1200));
        assert_eq!(ev.op, Op::Upsert);
    }

    #[test]
    fn defaults_and_epoch_ms() {
        let ev = parse_label_event(r#"{"item_id":"i","annotator_id":"a","label":2.5,"ts":1700000000000}"#)
            .unwrap();
        assert_eq!(ev.project, DEFAULT_SCOPE_NAME);
        assert_eq!(ev.task, DEFAULT_SCOPE_NAME);
        assert_eq!(ev.label, Some(RawLabel::Number(2.5)));
        assert_eq!(ev.ts_ms, 1_700_000_000_000);
    }

    #[test]
    fn delete_needs_no_label() {
        let ev = parse_label_event(r#"{"item_id":"i","annotator_id":"a","ts":1,"op":"delete"}"#).unwrap();
        assert_eq!(ev.op, Op::Delete);
        assert_eq!(ev.label, None);
    }

    #[test]
    fn refuses_bad_records_with_reasons() {
        let cases = [
            ("not json", "not a valid record"),
            (r#"{"annotator_id":"a","label":1,"ts":1}"#, "missing field `item_id`"),
            (r#"{"item_id":1,"annotator_id":"a","label":1,"ts":1}"#, "invalid type"),
            (r#"{"item_id":"i","annotator_id":"a","ts":1}"#, "`label` is missing"),
            (r#"{"item_id":"i","annotator_id":"a","label":null,"ts":1}"#, "`label` is missing"),
            (r#"{"item_id":"i","annotator_id":"a","label":{"x":1},"ts":1}"#, "not an object"),
            (r#"{"item_id":"i","annotator_id":"a","label":[1,2],"ts":1}"#, "only strings"),
            (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":"yesterday"}"#, "RFC 3339"),
            (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1.5}"#, "epoch milliseconds"),
            (r#"{"item_id":"i","annotator_id":"a","label":1}"#, "missing field `ts`"),
            (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1,"op":"remove"}"#, "`op` must be"),
            (r#"{"item_id":"i","annotator_id":"a","label":1,"ts":1,"duration_ms":-4}"#, "invalid value"),
        ];
        for (record, reason) in cases {
            let err = parse_label_event(record).expect_err(record).to_string();
            assert!(err.contains(reason), "{record}: {err}");
        }
        let big = format!(
            r#"{{"item_id":"{}","annotator_id":"a","label":1,"ts":1}}"#,
            "x".repeat(MAX_RECORD_BYTES)
        );
        assert!(matches!(parse_label_event(&big), Err(ParseError::TooLarge { .. })));
    }

    #[test]
    fn gold_answers() {
        let g = parse_gold_event(r#"{"item_id":"g1","label":"x","task":"t"}"#).unwrap();
        assert_eq!(g.label, Some(RawLabel::String("x".into())));
        assert_eq!(g.task, "t");
        assert_eq!(g.project, DEFAULT_SCOPE_NAME);
        assert!(parse_gold_event(r#"{"item_id":"g1"}"#).is_err());
        assert_eq!(parse_gold_event(r#"{"item_id":"g1","op":"delete"}"#).unwrap().op, Op::Delete);
    }
}
