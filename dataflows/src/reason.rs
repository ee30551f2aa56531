//! What is said about input: why a record was refused ([`ParseError`], grouped into a few
//! [`ReasonKind`]s for counts), and the likely mistakes in records that were accepted
//! ([`InputWarning`]). Reasons name the field, the value and the problem in the producer's terms:
//! `NaN`, a byte-order mark, an empty message or a Kafka tombstone, never a position inside the
//! record or a type name of this code.

use crate::label::IdCollision;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    #[error("the record is {bytes} bytes, over the {limit}-byte limit; split or shorten it")]
    TooLarge { bytes: usize, limit: usize },
    #[error(
        "a Kafka tombstone (a message with no value): label and gold topics carry JSON objects; \
         remove a label with {{\"op\": \"delete\", ...}}"
    )]
    Tombstone,
    #[error("the record is empty")]
    Empty,
    /// Not UTF-8 text; the detail names the byte, or UTF-16.
    #[error("{0}")]
    NotUtf8(String),
    /// Not JSON; the detail names the problem and where (by the text there).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// `NaN` or `Infinity`, which JSON does not have, in a field (when known).
    #[error(
        "{} is {token}, which is not JSON (pandas writes NaN for a missing value): send a number, or \
         leave the field out", .field.as_ref().map_or("a value".to_string(), |f| format!("`{f}`"))
    )]
    NotANumber { field: Option<String>, token: String },
    /// Valid JSON, but not an object: what it is instead.
    #[error("{0}, not a JSON object; each record is one object like {{\"item_id\": ..., \"label\": ...}}")]
    NotObject(&'static str),
    #[error("`{field}` is missing or null; {}", missing_hint(field))]
    Missing { field: &'static str },
    #[error("`label` is missing or null; it is required unless `op` is \"delete\"")]
    MissingLabel,
    #[error(
        "`annotator_id` is missing: this looks like a gold answer (`item_id` and `label`, no annotator \
         or `ts`); gold answers go to the gold input (--gold, or the gold topic)"
    )]
    LooksLikeGold,
    /// A field whose value is not allowed; the detail holds the value and the problem.
    #[error("`{field}` {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error(transparent)]
    IdCollision(#[from] IdCollision),
}

fn missing_hint(field: &str) -> &'static str {
    match field {
        "item_id" => "every record names the item it is about",
        "annotator_id" => "every label event names who gave the label",
        "ts" => "every label event has its event time (an RFC 3339 string or epoch milliseconds)",
        "left" | "right" => "a preference event names both systems it compares, `left` and `right`",
        _ => "it is required",
    }
}

/// The few kinds of reasons, for counts of refused records (file mode's summary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReasonKind {
    NotUtf8,
    Empty,
    TooLarge,
    NotJson,
    NotObject,
    MissingField,
    InvalidValue,
    LooksLikeGold,
    IdCollision,
}

impl ReasonKind {
    /// A short name (`not_json`, ...), as dead-letter files carry it.
    pub fn name(self) -> &'static str {
        match self {
            ReasonKind::NotUtf8 => "not_utf8",
            ReasonKind::Empty => "empty",
            ReasonKind::TooLarge => "too_large",
            ReasonKind::NotJson => "not_json",
            ReasonKind::NotObject => "not_an_object",
            ReasonKind::MissingField => "missing_field",
            ReasonKind::InvalidValue => "invalid_value",
            ReasonKind::LooksLikeGold => "looks_like_gold",
            ReasonKind::IdCollision => "id_collision",
        }
    }

    /// The kind in words.
    pub fn describe(self) -> &'static str {
        match self {
            ReasonKind::NotUtf8 => "not UTF-8 text",
            ReasonKind::Empty => "empty (or a Kafka tombstone)",
            ReasonKind::TooLarge => "over the 1 MiB limit",
            ReasonKind::NotJson => "not JSON",
            ReasonKind::NotObject => "JSON, but not an object",
            ReasonKind::MissingField => "a required field missing",
            ReasonKind::InvalidValue => "a field with a value that is not allowed",
            ReasonKind::LooksLikeGold => "a gold answer where a label event belongs",
            ReasonKind::IdCollision => "an id colliding with another name's",
        }
    }
}

impl ParseError {
    /// The kind of this reason.
    pub fn kind(&self) -> ReasonKind {
        match self {
            ParseError::TooLarge { .. } => ReasonKind::TooLarge,
            ParseError::Tombstone | ParseError::Empty => ReasonKind::Empty,
            ParseError::NotUtf8(_) => ReasonKind::NotUtf8,
            ParseError::NotJson(_) => ReasonKind::NotJson,
            ParseError::NotANumber { .. } | ParseError::Invalid { .. } => ReasonKind::InvalidValue,
            ParseError::NotObject(_) => ReasonKind::NotObject,
            ParseError::Missing { .. } | ParseError::MissingLabel => ReasonKind::MissingField,
            ParseError::LooksLikeGold => ReasonKind::LooksLikeGold,
            ParseError::IdCollision(_) => ReasonKind::IdCollision,
        }
    }

    /// The warning a refused record also counts as, if any: a label event that looks like a
    /// gold answer.
    pub fn warning(&self) -> Option<InputWarning> {
        matches!(self, ParseError::LooksLikeGold).then_some(InputWarning::LabelLooksLikeGold)
    }
}

/// A likely mistake in the input (spec section 1): accepted (or, for a label event without an
/// annotator, refused) and named, in file mode on stderr after the run and live as
/// `labelqc_input_warnings_total{topic,kind}` and a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InputWarning {
    /// A label event's `ts` is before 1973: epoch seconds sent as milliseconds?
    TsBefore1973,
    /// One value sent both as a number and as a string (`1` and `"1"`) in one scope.
    NumberAndString,
    /// A label event without `annotator_id`: a gold answer on the label input?
    LabelLooksLikeGold,
    /// A gold answer with an `annotator_id`: a label event on the gold input?
    GoldWithAnnotator,
    /// A scope with both plain label events and preference events (spec 2.2).
    MixedKinds,
}

impl InputWarning {
    /// Every warning, in a fixed order.
    pub const ALL: [InputWarning; 5] = [
        InputWarning::TsBefore1973,
        InputWarning::NumberAndString,
        InputWarning::LabelLooksLikeGold,
        InputWarning::GoldWithAnnotator,
        InputWarning::MixedKinds,
    ];

    /// The `kind` label of the warning counter.
    pub fn name(self) -> &'static str {
        match self {
            InputWarning::TsBefore1973 => "ts_before_1973",
            InputWarning::NumberAndString => "number_and_string",
            InputWarning::LabelLooksLikeGold => "label_looks_like_gold",
            InputWarning::GoldWithAnnotator => "gold_with_annotator_id",
            InputWarning::MixedKinds => "mixed_kinds",
        }
    }

    /// What the records have, and the likely cause.
    pub fn describe(self) -> &'static str {
        match self {
            InputWarning::TsBefore1973 => {
                "have a `ts` before 1973: epoch seconds sent as milliseconds? (multiply by 1000)"
            }
            InputWarning::NumberAndString => {
                "send a value both as a number and as a string in one scope (`1` and \"1\" are two \
                 different labels): make the producers agree on one"
            }
            InputWarning::LabelLooksLikeGold => {
                "have no `annotator_id` and look like gold answers (refused): is a gold file given \
                 as labels?"
            }
            InputWarning::GoldWithAnnotator => {
                "carry an `annotator_id`, which gold answers do not have (ignored): is a label file \
                 given as gold?"
            }
            InputWarning::MixedKinds => {
                "arrive in a scope that has both plain label events and preference events (`left`, \
                 `right`): give comparisons a task of their own (the report names the scope in its \
                 `warnings`; its preference numbers use its preference events only)"
            }
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`InputWarning`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Warnings(u8);

impl Warnings {
    pub fn add(&mut self, warning: InputWarning) {
        self.0 |= warning.bit();
    }

    pub fn contains(self, warning: InputWarning) -> bool {
        self.0 & warning.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The warnings in the set.
    pub fn iter(self) -> impl Iterator<Item = InputWarning> {
        InputWarning::ALL.into_iter().filter(move |w| self.contains(*w))
    }
}

impl FromIterator<InputWarning> for Warnings {
    fn from_iter<I: IntoIterator<Item = InputWarning>>(warnings: I) -> Warnings {
        let mut set = Warnings::default();
        for warning in warnings {
            set.add(warning);
        }
        set
    }
}

/// At most 40 characters of `text`, for a reason (`…` where cut).
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// The reason for text that is not UTF-8: UTF-16 named as such, else the first bad byte and the
/// text before it.
pub(crate) fn not_utf8(bytes: &[u8], error: &std::str::Utf8Error) -> ParseError {
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return ParseError::NotUtf8(
            "UTF-16 text (it starts with a UTF-16 byte-order mark); labelqc reads UTF-8: convert it, \
             e.g. with `iconv -f UTF-16 -t UTF-8`"
                .into(),
        );
    }
    let at = error.valid_up_to();
    let before = std::str::from_utf8(&bytes[..at]).expect("valid up to here");
    let before: String = before.chars().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
    ParseError::NotUtf8(format!(
        "not UTF-8 text: byte 0x{:02X} after {before:?} (Latin-1 or Windows-1252? convert it to UTF-8)",
        bytes[at]
    ))
}

/// Names of values that JSON does not have but some writers emit.
const NOT_NUMBERS: [&str; 9] =
    ["NaN", "-NaN", "nan", "Infinity", "-Infinity", "inf", "-inf", "undefined", "None"];

/// The reason for text that serde_json could not parse: `NaN` and its kin named with their field,
/// a byte-order mark inside the record or NUL bytes (UTF-16) named as such; otherwise serde_json's
/// message with the text where it stopped instead of a line and column.
pub(crate) fn syntax_error(body: &str, error: &serde_json::Error) -> ParseError {
    if error.classify() == serde_json::error::Category::Eof {
        return ParseError::NotJson("the record ends before its JSON is complete (cut short?)".into());
    }
    if body.contains('\0') {
        return ParseError::NotJson(
            "the text holds NUL bytes: UTF-16 text? labelqc reads UTF-8: convert it, e.g. with \
             `iconv -f UTF-16 -t UTF-8`"
                .into(),
        );
    }
    let at = byte_offset(body, error.line(), error.column());
    // The start of the word the parser stopped in.
    let in_word = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
    let mut start = at;
    while start > 0 && in_word(body.as_bytes()[start - 1]) {
        start -= 1;
    }
    let word_end =
        body[start..].find(|c: char| !c.is_ascii() || !in_word(c as u8)).map_or(body.len(), |n| start + n);
    let word = &body[start..word_end];
    if let Some(token) = NOT_NUMBERS.iter().find(|t| **t == word) {
        return ParseError::NotANumber { field: field_before(&body[..start]), token: token.to_string() };
    }
    if body[at..].starts_with('\u{feff}') {
        return ParseError::NotJson(
            "a byte-order mark (U+FEFF) inside the record; only one at its very start is ignored".into(),
        );
    }
    let message = error.to_string();
    let message = match message.split(" at line ").next().unwrap_or_default() {
        "expected ident" | "expected value" => "expected a JSON value",
        "trailing characters" => "text after the end of the JSON object",
        other => other,
    };
    let rest = &body[start..];
    if rest.is_empty() {
        ParseError::NotJson(format!("{message}, at the end"))
    } else {
        ParseError::NotJson(format!("{message}, at `{}`", excerpt(rest)))
    }
}

/// The byte offset of serde_json's 1-based line and (byte) column, on a character boundary.
fn byte_offset(body: &str, line: usize, column: usize) -> usize {
    let line_start: usize = body.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum();
    let mut at = (line_start + column.saturating_sub(1)).min(body.len());
    while !body.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The key whose value starts where `before` ends (`{"label": ` gives `label`), if it is one.
fn field_before(before: &str) -> Option<String> {
    let before = before.trim_end().strip_suffix(':')?.trim_end().strip_suffix('"')?;
    let start = before.rfind('"')?;
    Some(before[start + 1..].to_string())
}
