//! The input model of spec section 1: label events and gold answers as JSON objects, parsed and
//! validated one record at a time, as real producers write them (a byte-order mark, integer ids,
//! fractional `ts`, number labels of any size). A bad record yields a [`ParseError`] that names
//! the field, the value and the problem; it never affects the records around it. Likely mistakes
//! in records that are accepted are named as [`InputWarning`]s.
//!
//! Each field is first taken as its raw JSON text (serde_json's `RawValue`, borrowed from the
//! record), then read by the rules of its field, so that a number keeps its exact digits and a
//! refusal is phrased here rather than by serde.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::label::RawLabel;
use crate::number::{NumberError, RawNumber};
use crate::reason::{excerpt, syntax_error};

pub use crate::reason::{InputWarning, ParseError, ReasonKind, Warnings};

mod preference;
pub use preference::{normalised_outcome, Choice, Outcome, PairResult, Preference, TIE};

/// The largest record accepted, in bytes (spec: a message over 1 MiB is refused).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The longest id or scope name accepted (`item_id`, `annotator_id`, `project`, `task`), in
/// bytes. Names travel in every output key and value that mentions them; a longer one is refused
/// at input, so that no output can outgrow what a Kafka topic takes.
pub const MAX_NAME_BYTES: usize = 1024;

/// The longest label accepted, in bytes of its text (a set: of all its strings).
pub const MAX_LABEL_BYTES: usize = 4096;

/// Refuses a name or label over its limit.
fn check_length(field: &'static str, value: &str, length: usize, limit: usize) -> Result<(), ParseError> {
    if length > limit {
        return Err(invalid(
            field,
            format!(
                "is {length} bytes (\"{}\"), over the {limit}-byte limit; it names something, it does not hold it",
                excerpt(value)
            ),
        ));
    }
    Ok(())
}

/// The project or task of an event that names none.
pub const DEFAULT_SCOPE_NAME: &str = "default";

/// 1973-01-01T00:00:00Z in epoch milliseconds: an event time before it is most likely epoch
/// seconds sent as milliseconds (spec section 1), and is named in a warning.
pub const TS_WARN_BEFORE_MS: i64 = 94_694_400_000;

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
    /// The item's id; an integer id as its decimal digits.
    pub item_id: Cow<'a, str>,
    /// The annotator's id; an integer id as its decimal digits.
    pub annotator_id: Cow<'a, str>,
    /// `Some` for an upsert, `None` for a delete.
    pub label: Option<RawLabel<'a>>,
    /// Event time, epoch milliseconds (a fractional number floored).
    pub ts_ms: i64,
    /// Time spent, milliseconds (a fractional number floored).
    pub duration_ms: Option<u64>,
    pub op: Op,
    /// Likely mistakes in the record (see [`InputWarning`]).
    pub warnings: Warnings,
    /// The compared systems and the choice of a preference event (spec 2.2); `None` for a plain
    /// label event (no `left` or `right`).
    pub preference: Option<Preference<'a>>,
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
    /// Likely mistakes in the record (see [`InputWarning`]).
    pub warnings: Warnings,
}

/// The fields of a record as raw JSON text; `None` where a field is absent or `null`. Other
/// fields are ignored.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    item_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    annotator_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    label: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    project: Option<&'a RawValue>,
    #[serde(borrow, default)]
    task: Option<&'a RawValue>,
    #[serde(borrow, default)]
    duration_ms: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<&'a RawValue>,
    #[serde(borrow, default)]
    left: Option<&'a RawValue>,
    #[serde(borrow, default)]
    right: Option<&'a RawValue>,
}

/// The text of a record as it arrived, a file's line or a Kafka message's value (`None`: a
/// tombstone, a message with no value): refused when it is empty, over [`MAX_RECORD_BYTES`] or
/// not UTF-8 (UTF-16 named as such).
pub fn record_text(payload: Option<&[u8]>) -> Result<&str, ParseError> {
    let bytes = payload.ok_or(ParseError::Tombstone)?;
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(ParseError::TooLarge { bytes: bytes.len(), limit: MAX_RECORD_BYTES });
    }
    std::str::from_utf8(bytes).map_err(|error| crate::reason::not_utf8(bytes, &error))
}

/// JSON's whitespace.
const WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];

/// The record without the UTF-8 byte-order mark it may start with.
pub fn strip_bom(record: &str) -> &str {
    record.strip_prefix('\u{feff}').unwrap_or(record)
}

/// Reads the fields of one record: a JSON object (after an optional byte-order mark).
fn fields(record: &str) -> Result<Fields<'_>, ParseError> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(ParseError::TooLarge { bytes: record.len(), limit: MAX_RECORD_BYTES });
    }
    let body = strip_bom(record);
    let start = body.trim_start_matches(WHITESPACE);
    if start.is_empty() {
        return Err(ParseError::Empty);
    }
    if !start.starts_with('{') {
        // Some other JSON value, or not JSON at all.
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(body) {
            Ok(_) => ParseError::NotObject(match start.as_bytes()[0] {
                b'[' => "a JSON array",
                b'"' => "a JSON string",
                b't' | b'f' => "a JSON boolean",
                b'n' => "JSON null",
                _ => "a JSON number",
            }),
            Err(error) => syntax_error(body, &error),
        });
    }
    serde_json::from_str(body).map_err(|error| syntax_error(body, &error))
}

/// The kind of JSON value `text` is, for reasons.
fn json_kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

fn invalid(field: &'static str, detail: String) -> ParseError {
    ParseError::Invalid { field, detail }
}

/// A JSON string's content, borrowed unless it has escapes.
fn string_of<'a>(field: &'static str, text: &'a str) -> Result<Cow<'a, str>, ParseError> {
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).map(Cow::Owned).map_err(|error| {
        let problem = error.to_string();
        let problem = problem.split(" at line ").next().unwrap_or_default();
        invalid(field, format!("{} has an invalid escape ({problem})", excerpt(text)))
    })
}

/// A field that must be a string (`project`, `task`, `op`).
fn string_field<'a>(field: &'static str, raw: &'a RawValue) -> Result<Cow<'a, str>, ParseError> {
    let text = raw.get();
    if text.starts_with('"') {
        string_of(field, text)
    } else {
        Err(invalid(field, format!("is {} ({}); it must be a string", json_kind(text), excerpt(text))))
    }
}

/// `item_id` or `annotator_id`: a non-empty string, or an integer taken as its decimal digits.
fn id_field<'a>(field: &'static str, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, ParseError> {
    let raw = raw.ok_or(ParseError::Missing { field })?;
    let text = raw.get();
    match text.as_bytes()[0] {
        b'"' => {
            let id = string_of(field, text)?;
            if id.is_empty() {
                return Err(invalid(field, "is empty (\"\"); an id has at least one character".into()));
            }
            check_length(field, &id, id.len(), MAX_NAME_BYTES)?;
            Ok(id)
        }
        b'-' | b'0'..=b'9' => {
            let digits = text.strip_prefix('-').unwrap_or(text);
            if digits.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(Cow::Borrowed(text));
            }
            let hint = match RawNumber::parse(text)
                .ok()
                .and_then(|n| n.floor_i64().filter(|f| *f as f64 == n.value()))
            {
                Some(whole) => format!(" (written as a float: send {whole} or \"{whole}\")"),
                None => String::new(),
            };
            Err(invalid(field, format!("{text} is not an integer; an id is a string or an integer{hint}")))
        }
        _ => Err(invalid(
            field,
            format!("is {} ({}); an id is a string or an integer", json_kind(text), excerpt(text)),
        )),
    }
}

/// A number field (`ts`, `duration_ms`) floored to an integer.
fn floored(field: &'static str, text: &str, unit: &str) -> Result<i64, ParseError> {
    // The common case, a plain integer, without the exact decimal.
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(value) = text.parse::<i64>() {
            return Ok(value);
        }
    }
    let number = RawNumber::parse(text).map_err(|error| match error {
        NumberError::Syntax => invalid(field, format!("{} is not a JSON number", excerpt(text))),
        NumberError::OutOfRange => invalid(field, format!("{} is out of range for {unit}", excerpt(text))),
    })?;
    number.floor_i64().ok_or_else(|| invalid(field, format!("{} is out of range for {unit}", excerpt(text))))
}

/// `ts`: an RFC 3339 string or epoch milliseconds (a fraction floored).
fn ts_field(raw: Option<&RawValue>) -> Result<i64, ParseError> {
    let raw = raw.ok_or(ParseError::Missing { field: "ts" })?;
    let text = raw.get();
    match text.as_bytes()[0] {
        b'"' => {
            let value = string_of("ts", text)?;
            chrono::DateTime::parse_from_rfc3339(&value).map(|t| t.timestamp_millis()).map_err(|error| {
                let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
                let problem = if digits {
                    format!(
                        "is a string of digits; epoch milliseconds are a JSON number ({value}), not a string"
                    )
                } else {
                    format!("is not an RFC 3339 time like \"2026-03-01T09:12:44Z\" ({error})")
                };
                invalid("ts", format!("{} {problem}", excerpt(text)))
            })
        }
        b'-' | b'0'..=b'9' => floored("ts", text, "epoch milliseconds"),
        _ => Err(invalid(
            "ts",
            format!(
                "is {} ({}); it must be an RFC 3339 string or epoch milliseconds",
                json_kind(text),
                excerpt(text)
            ),
        )),
    }
}

/// `duration_ms`: a non-negative number of milliseconds (a fraction floored).
fn duration_field(raw: &RawValue) -> Result<u64, ParseError> {
    let text = raw.get();
    if !matches!(text.as_bytes()[0], b'-' | b'0'..=b'9') {
        return Err(invalid(
            "duration_ms",
            format!("is {} ({}); it must be a number of milliseconds", json_kind(text), excerpt(text)),
        ));
    }
    let ms = floored("duration_ms", text, "milliseconds")?;
    u64::try_from(ms).map_err(|_| invalid("duration_ms", format!("{text} is negative")))
}

/// `op`: `"upsert"` (also when absent) or `"delete"`.
fn op_field(raw: Option<&RawValue>) -> Result<Op, ParseError> {
    let Some(raw) = raw else { return Ok(Op::Upsert) };
    match &*string_field("op", raw)? {
        "upsert" => Ok(Op::Upsert),
        "delete" => Ok(Op::Delete),
        _ => Err(invalid("op", format!("{} is neither \"upsert\" nor \"delete\"", excerpt(raw.get())))),
    }
}

/// `project` or `task`: a string, [`DEFAULT_SCOPE_NAME`] when absent.
fn scope_field<'a>(field: &'static str, raw: Option<&'a RawValue>) -> Result<Cow<'a, str>, ParseError> {
    match raw {
        None => Ok(Cow::Borrowed(DEFAULT_SCOPE_NAME)),
        Some(raw) => {
            let name = string_field(field, raw)?;
            check_length(field, &name, name.len(), MAX_NAME_BYTES)?;
            Ok(name)
        }
    }
}

/// `label`: a string, a number (exact), a boolean, or an array of strings (a set).
fn label_value(raw: &RawValue) -> Result<RawLabel<'_>, ParseError> {
    let text = raw.get();
    match text.as_bytes()[0] {
        b'"' => {
            let label = string_of("label", text)?;
            check_length("label", &label, label.len(), MAX_LABEL_BYTES)?;
            Ok(RawLabel::String(label))
        }
        b't' => Ok(RawLabel::Bool(true)),
        b'f' => Ok(RawLabel::Bool(false)),
        b'[' => {
            let elements: Vec<&RawValue> =
                serde_json::from_str(text).expect("an array checked by the parser");
            let mut items = Vec::with_capacity(elements.len());
            for element in elements {
                let element = element.get();
                if !element.starts_with('"') {
                    return Err(invalid(
                        "label",
                        format!(
                            "{} holds {} ({}); a multi-label set is an array of strings",
                            excerpt(text),
                            json_kind(element),
                            excerpt(element)
                        ),
                    ));
                }
                items.push(string_of("label", element)?);
            }
            let length = items.iter().map(|i| i.len()).sum();
            check_length("label", text, length, MAX_LABEL_BYTES)?;
            items.sort_unstable_by(|a: &Cow<'_, str>, b| a.as_bytes().cmp(b.as_bytes()));
            items.dedup();
            Ok(RawLabel::Set(items))
        }
        b'{' => Err(invalid(
            "label",
            format!(
                "is an object ({}); a label is a string, number, boolean or array of strings",
                excerpt(text)
            ),
        )),
        _ => RawNumber::parse(text).map(RawLabel::Number).map_err(|error| match error {
            NumberError::Syntax => invalid("label", format!("{} is not a JSON number", excerpt(text))),
            NumberError::OutOfRange => invalid(
                "label",
                format!("{} is {error}; labelqc cannot measure distances to it", excerpt(text)),
            ),
        }),
    }
}

/// The label of an upsert (required) or a delete (ignored).
fn label_field(op: Op, raw: Option<&RawValue>) -> Result<Option<RawLabel<'_>>, ParseError> {
    match (op, raw) {
        (Op::Delete, _) => Ok(None),
        (Op::Upsert, None) => Err(ParseError::MissingLabel),
        (Op::Upsert, Some(raw)) => label_value(raw).map(Some),
    }
}

/// Parses one label event. A record without `annotator_id` but with a `label` is refused as
/// [`ParseError::LooksLikeGold`]. A record with `left` and `right` is a preference event
/// ([`Preference`]); one with only one of them, one system on both sides, or a label other than
/// `"left"`, `"right"`, `"tie"` or a number is refused.
pub fn parse_label_event(record: &str) -> Result<LabelEvent<'_>, ParseError> {
    let fields = fields(record)?;
    let item_id = id_field("item_id", fields.item_id)?;
    let annotator_id = match fields.annotator_id {
        Some(raw) => id_field("annotator_id", Some(raw))?,
        None if fields.label.is_some() && fields.ts.is_none() => return Err(ParseError::LooksLikeGold),
        None => return Err(ParseError::Missing { field: "annotator_id" }),
    };
    let op = op_field(fields.op)?;
    let label = label_field(op, fields.label)?;
    let preference = preference::preference(fields.left, fields.right, label.as_ref(), fields.label)?;
    let ts_ms = ts_field(fields.ts)?;
    let duration_ms = fields.duration_ms.map(duration_field).transpose()?;
    let mut warnings = Warnings::default();
    if ts_ms < TS_WARN_BEFORE_MS {
        warnings.add(InputWarning::TsBefore1973);
    }
    Ok(LabelEvent {
        project: scope_field("project", fields.project)?,
        task: scope_field("task", fields.task)?,
        item_id,
        annotator_id,
        label,
        ts_ms,
        duration_ms,
        op,
        warnings,
        preference,
    })
}

/// Parses one gold answer. An `annotator_id` is ignored but named in a warning
/// ([`InputWarning::GoldWithAnnotator`]).
pub fn parse_gold_event(record: &str) -> Result<GoldEvent<'_>, ParseError> {
    let fields = fields(record)?;
    let item_id = id_field("item_id", fields.item_id)?;
    let op = op_field(fields.op)?;
    let label = label_field(op, fields.label)?;
    let mut warnings = Warnings::default();
    if fields.annotator_id.is_some() {
        warnings.add(InputWarning::GoldWithAnnotator);
    }
    Ok(GoldEvent {
        project: scope_field("project", fields.project)?,
        task: scope_field("task", fields.task)?,
        item_id,
        label,
        op,
        warnings,
    })
}

#[cfg(test)]
mod tests;
