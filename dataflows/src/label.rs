//! Label values: the answers annotators give, with the spec's equality (by JSON value, sets as
//! sets, numbers by exact decimal value: `1` equal to `1.0`, `18446744073709551615` not equal to
//! `18446744073709551614`) and its total order for consensus tie-breaks (numbers by value, then
//! strings, then `false`, `true`, then sets). Also the table that gives each distinct label its
//! id: a 64-bit hash of the label's canonical bytes, the same in every process that reads the
//! label; and the label's JSON as the report prints it (numbers exactly as their value).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;

use foldhash::fast::RandomState;
use serde::ser::{SerializeSeq, Serializer};

use crate::number::{Number, RawNumber};

/// Id of a distinct label value: the stable hash of its canonical bytes (see [`LabelTable`]).
pub type LabelId = u64;

/// A label value as the spec defines it. Equality and hashing follow the spec's comparison.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Label {
    /// A JSON number, as its exact decimal value: `1` and `1.0` are one label, shown as `1`.
    Number(Number),
    /// A JSON string.
    String(Box<str>),
    /// A JSON boolean.
    Bool(bool),
    /// A multi-label set: the distinct strings of a JSON array, sorted bytewise.
    Set(Box<[Box<str>]>),
}

impl Label {
    fn rank(&self) -> u8 {
        match self {
            Label::Number(_) => 0,
            Label::String(_) => 1,
            Label::Bool(_) => 2,
            Label::Set(_) => 3,
        }
    }

    /// The nearest 64-bit float of the value, if this label is a number: what interval and ratio
    /// distances use.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Label::Number(number) => Some(number.value()),
            _ => None,
        }
    }

    /// The spec's order: numbers by exact value, then strings bytewise, then `false`, `true`, then
    /// sets (compared element by element, bytewise).
    pub fn spec_cmp(&self, other: &Label) -> Ordering {
        match (self, other) {
            (Label::Number(a), Label::Number(b)) => a.exact_cmp(b),
            (Label::String(a), Label::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Label::Bool(a), Label::Bool(b)) => a.cmp(b),
            (Label::Set(a), Label::Set(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// The label as a [`RawLabel`] borrowing from it.
    pub fn to_raw(&self) -> RawLabel<'_> {
        match self {
            Label::Number(number) => RawLabel::Number(number.to_raw()),
            Label::String(s) => RawLabel::String(Cow::Borrowed(s)),
            Label::Bool(b) => RawLabel::Bool(*b),
            Label::Set(items) => RawLabel::Set(items.iter().map(|s| Cow::Borrowed(&**s)).collect()),
        }
    }

    /// The label as JSON text, a number exactly as its value (see [`Number::to_json_text`]).
    pub fn to_json_text(&self) -> String {
        match self {
            Label::Number(number) => number.to_json_text(),
            other => serde_json::to_string(&JsonLabel(other)).expect("a label is JSON"),
        }
    }
}

/// A label as the report's JSON shows it: a string, a boolean, an array of strings, or a number
/// written exactly (`18446744073709551615`, not `1.8446744073709552e19`). Use it with serde_json:
/// other serializers see a number as serde_json's raw-value token.
pub struct JsonLabel<'a>(pub &'a Label);

impl serde::Serialize for JsonLabel<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Label::Number(number) => {
                let raw = serde_json::value::RawValue::from_string(number.to_json_text())
                    .map_err(serde::ser::Error::custom)?;
                raw.serialize(serializer)
            }
            Label::String(s) => serializer.serialize_str(s),
            Label::Bool(b) => serializer.serialize_bool(*b),
            Label::Set(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items.iter() {
                    seq.serialize_element(&**item)?;
                }
                seq.end()
            }
        }
    }
}

/// Serializes a label field as [`JsonLabel`] (for `#[serde(serialize_with = ...)]`).
pub fn serialize_json<S: Serializer>(label: &Label, serializer: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&JsonLabel(label), serializer)
}

/// A label as parsed from one event, borrowing from the input line where it can.
#[derive(Clone, Debug, PartialEq)]
pub enum RawLabel<'a> {
    /// A number, as its exact value.
    Number(RawNumber<'a>),
    String(Cow<'a, str>),
    Bool(bool),
    /// Distinct elements, sorted bytewise.
    Set(Vec<Cow<'a, str>>),
}

impl RawLabel<'_> {
    /// Writes the canonical identity of this label into `buf`: two labels are equal under the
    /// spec exactly when their canonical bytes are equal.
    pub fn canonical_key(&self, buf: &mut Vec<u8>) {
        buf.clear();
        match self {
            RawLabel::Number(number) => {
                buf.push(0);
                number.canonical_key(buf);
            }
            RawLabel::String(s) => {
                buf.push(1);
                buf.extend_from_slice(s.as_bytes());
            }
            RawLabel::Bool(b) => {
                buf.push(2);
                buf.push(u8::from(*b));
            }
            RawLabel::Set(items) => {
                buf.push(3);
                for item in items {
                    buf.extend_from_slice(&(item.len() as u64).to_be_bytes());
                    buf.extend_from_slice(item.as_bytes());
                }
            }
        }
    }

    /// An owned [`Label`].
    pub fn to_label(&self) -> Label {
        match self {
            RawLabel::Number(number) => Label::Number(number.to_number()),
            RawLabel::String(s) => Label::String(s.as_ref().into()),
            RawLabel::Bool(b) => Label::Bool(*b),
            RawLabel::Set(items) => Label::Set(items.iter().map(|s| s.as_ref().into()).collect()),
        }
    }
}

/// Gives each distinct label value (under the spec's equality) its [`LabelId`], the stable hash of
/// its canonical bytes, and keeps the value behind every id it gave. Two values with one id are
/// refused (see [`IdCollision`]), never merged.
#[derive(Debug, Default)]
pub struct LabelTable {
    labels: HashMap<LabelId, (Box<[u8]>, Label), RandomState>,
    scratch: Vec<u8>,
}

impl LabelTable {
    /// The id of `raw`; remembers the value if it was not seen before.
    pub fn intern(&mut self, raw: &RawLabel<'_>) -> Result<LabelId, IdCollision> {
        raw.canonical_key(&mut self.scratch);
        let id = stable_id(&self.scratch);
        self.remember(id, || raw.to_label()).map(|()| id)
    }

    /// Remembers `label` under `id` (learnt from another process); fails if `id` stands for another
    /// value here.
    pub fn insert(&mut self, id: LabelId, label: &Label) -> Result<(), IdCollision> {
        label.to_raw().canonical_key(&mut self.scratch);
        self.remember(id, || label.clone())
    }

    /// Remembers the label whose canonical bytes are in `scratch` under `id`, unless `id` already
    /// stands for it; fails if `id` stands for another label.
    fn remember(&mut self, id: LabelId, label: impl FnOnce() -> Label) -> Result<(), IdCollision> {
        match self.labels.get(&id) {
            Some((key, _)) if **key == *self.scratch => Ok(()),
            Some((_, known)) => Err(IdCollision {
                id,
                kind: "label",
                first: known.to_json_text(),
                second: label().to_json_text(),
            }),
            None => {
                self.labels.insert(id, (self.scratch.as_slice().into(), label()));
                Ok(())
            }
        }
    }

    /// The label with id `id`. Panics on an id this table does not know.
    pub fn get(&self, id: LabelId) -> &Label {
        &self.labels[&id].1
    }

    /// Number of distinct labels seen.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no label was seen yet.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The id of a name or label from its bytes: XXH3-64, a fixed, documented hash, so that every
/// process (and every version of labelqc) gives a name the same id without coordination.
pub fn stable_id(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Two different names (or labels) whose ids are equal. With 64-bit ids this is vanishingly rare
/// (about one chance in 10^5 among ten million names); it is refused rather than let the two be
/// counted as one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the {kind}s {first} and {second} have the same 64-bit id {id:#018x}; labelqc cannot tell them \
     apart: rename one of them"
)]
pub struct IdCollision {
    pub id: u64,
    pub kind: &'static str,
    pub first: String,
    pub second: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> RawLabel<'_> {
        RawLabel::Number(RawNumber::parse(text).unwrap())
    }

    fn json(label: &Label) -> String {
        serde_json::to_string(&JsonLabel(label)).unwrap()
    }

    #[test]
    fn numbers_compare_by_value() {
        let mut table = LabelTable::default();
        let a = table.intern(&num("1")).unwrap();
        let b = table.intern(&num("1.0")).unwrap();
        let c = table.intern(&RawLabel::String("1".into())).unwrap();
        let d = table.intern(&RawLabel::Bool(true)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, table.intern(&num("1e0")).unwrap());
        assert_ne!(a, c);
        assert_ne!(c, d);
        assert_eq!(json(table.get(a)), "1");
        assert_eq!(table.intern(&num("-0.0")), table.intern(&num("0")));
        // Ids are the same in any table, whatever it saw first.
        let mut other = LabelTable::default();
        assert_eq!(other.intern(&RawLabel::Bool(true)).unwrap(), d);
        other.insert(a, table.get(a)).unwrap();
        assert_eq!(json(other.get(a)), "1");
        assert!(other.insert(a, table.get(c)).is_err(), "one id, two values");
    }

    #[test]
    fn big_integers_are_distinct_and_printed_exactly() {
        let mut table = LabelTable::default();
        let max = table.intern(&num("18446744073709551615")).unwrap();
        let below = table.intern(&num("18446744073709551614")).unwrap();
        assert_ne!(max, below);
        assert_eq!(json(table.get(max)), "18446744073709551615");
        assert_eq!(json(table.get(below)), "18446744073709551614");
        assert_eq!(table.get(max).spec_cmp(table.get(below)), Ordering::Greater);
        // Distances use the nearest float, which the two share.
        assert_eq!(table.get(max).as_number(), table.get(below).as_number());
        let huge = table.intern(&num("123456789012345678901234567890")).unwrap();
        assert_eq!(table.get(huge).to_json_text(), "123456789012345678901234567890");
    }

    #[test]
    fn spec_order() {
        let number = |t: &str| Label::Number(RawNumber::parse(t).unwrap().to_number());
        let labels = [
            Label::Set(vec!["a".into()].into()),
            Label::Bool(true),
            Label::Bool(false),
            Label::String("b".into()),
            Label::String("a".into()),
            number("10"),
            number("2"),
            number("9007199254740993"),
            number("9007199254740992"),
        ];
        let mut sorted = labels.to_vec();
        sorted.sort_by(|a, b| a.spec_cmp(b));
        let json: Vec<String> = sorted.iter().map(json).collect();
        assert_eq!(json.join(","), r#"2,10,9007199254740992,9007199254740993,"a","b",false,true,["a"]"#);
    }
}
