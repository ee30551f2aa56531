//! The input model of spec section 1: label events and gold answers as JSON objects, parsed and
//! validated one record at a time. A bad record yields a [`ParseError`] that says what is wrong;
//! it never affects the records around it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

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
    #[error("`label` {0}")]
    BadLabel(String),
    #[error("`ts` {0}")]
    BadTimestamp(String),
    #[error("`op` must be \"upsert\" or \"delete\", not {0:?}")]
    BadOp(String),
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
    label: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: &'a RawValue,
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
    label: Option<&'a RawValue>,
    #[serde(borrow, default)]
    project: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    task: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
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
fn parse_label_for<'a>(op: Op, raw: Option<&'a RawValue>) -> Result<Option<RawLabel<'a>>, ParseError> {
    match op {
        Op::Delete => Ok(None),
        Op::Upsert => match raw {
            None => Err(ParseError::MissingLabel),
            Some(raw) => parse_label(raw).map(Some),
        },
    }
}

/// Parses a label value: a string, a number, a boolean, or an array of strings (a set).
pub fn parse_label(raw: &RawValue) -> Result<RawLabel<'_>, ParseError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<Cow<'_, str>>(text)
            .map(RawLabel::String)
            .map_err(|e| ParseError::BadLabel(e.to_string())),
        Some(b't') => Ok(RawLabel::Bool(true)),
        Some(b'f') => Ok(RawLabel::Bool(false)),
        Some(b'n') => Err(ParseError::MissingLabel),
        Some(b'[') => {
            let items: Vec<Cow<'_, str>> = serde_json::from_str::<Vec<Cow<'_, str>>>(text).map_err(|_| {
                ParseError::BadLabel("array must hold only strings (a multi-label set)".into())
            })?;
            let mut items = items;
            items.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            items.dedup();
            Ok(RawLabel::Set(items))
        }
        Some(b'{') => Err(ParseError::BadLabel(
            "must be a string, number, boolean or array of strings, not an object".into(),
        )),
        _ => {
            let value: f64 =
                text.parse().map_err(|_| ParseError::BadLabel(format!("{text} is not a number")))?;
            if !value.is_finite() {
                return Err(ParseError::BadLabel(format!("{text} is out of range for a number")));
            }
            Ok(RawLabel::Number { value, text })
        }
    }
}

/// Parses `ts`: an RFC 3339 string or integer epoch milliseconds.
pub fn parse_ts(raw: &RawValue) -> Result<i64, ParseError> {
    let text = raw.get();
    if text.starts_with('"') {
        let s: Cow<'_, str> =
            serde_json::from_str(text).map_err(|e| ParseError::BadTimestamp(e.to_string()))?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| ParseError::BadTimestamp(format!("{s:?} is not an RFC 3339 time ({e})")))
    } else {
        text.parse::<i64>().map_err(|_| {
            ParseError::BadTimestamp(format!(
                "{text} is neither an RFC 3339 string nor integer epoch milliseconds"
            ))
        })
    }
}

/// Parses one label event.
pub fn parse_label_event(record: &str) -> Result<LabelEvent<'_>, ParseError> {
    check_size(record)?;
    let raw: RawLabelEvent<'_> = serde_json::from_str(record).map_err(|e| ParseError::Json(e.to_string()))?;
    let op = parse_op(raw.op)?;
    let label = parse_label_for(op, raw.label)?;
    let ts_ms = parse_ts(raw.ts)?;
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
    let label = parse_label_for(op, raw.label)?;
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
        assert_eq!(ev.label, Some(RawLabel::Number { value: 2.5, text: "2.5" }));
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
