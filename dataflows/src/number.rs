//! Number labels as exact decimals: a JSON number's exact value decides which label it is and
//! where it sorts (`18446744073709551615` and `18446744073709551614` are two labels; `1`, `1.0`
//! and `1e0` are one), and is what the report prints back; the nearest 64-bit float is kept beside
//! it for interval and ratio distances (spec section 1).
//!
//! A number is `sign × digits × 10^exponent` with the digits stripped of leading and trailing
//! zeros, so that every value has one form. [`RawNumber`] is that form borrowed from the input
//! text (no allocation on the parsing path); [`Number`] owns it.

use std::cmp::Ordering;

/// The largest exponent accepted, in either direction (`1e-1000000000` is refused rather than
/// carried as a number nobody can use).
const MAX_EXPONENT: i64 = 1_000_000_000;

/// Why a JSON number cannot be a label, `ts` or `duration_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// The text is not a JSON number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
    #[error("not a JSON number")]
    Syntax,
    /// Beyond the range of a 64-bit float (about ±1.8e308), or an exponent beyond ±10^9.
    #[error("beyond the range of a 64-bit float (about ±1.8e308)")]
    OutOfRange,
}

/// A JSON number as an exact decimal, borrowing its digits from the input text.
#[derive(Clone, Copy, Debug)]
pub struct RawNumber<'a> {
    negative: bool,
    /// The significant digits are `head` followed by `tail` (the integer and the fraction part of
    /// the text, stripped of leading and trailing zeros); both empty for zero.
    head: &'a str,
    tail: &'a str,
    /// The value is `digits × 10^exponent`.
    exponent: i64,
    /// The nearest 64-bit float.
    value: f64,
}

impl<'a> RawNumber<'a> {
    /// Parses the text of a JSON number (RFC 8259 section 6, exactly: no `+`, no leading zeros,
    /// no `NaN`).
    pub fn parse(text: &'a str) -> Result<RawNumber<'a>, NumberError> {
        let bytes = text.as_bytes();
        let mut i = 0;
        let negative = bytes.first() == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        // The integer part's value while it is exact in a float (up to 15 digits).
        let mut small: u64 = 0;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            small = small.wrapping_mul(10).wrapping_add(u64::from(bytes[i] - b'0'));
            i += 1;
        }
        let mut int = &text[int_start..i];
        if int.is_empty() || (int.len() > 1 && int.starts_with('0')) {
            return Err(NumberError::Syntax);
        }
        let mut frac = "";
        if bytes.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac = &text[start..i];
            if frac.is_empty() {
                return Err(NumberError::Syntax);
            }
        }
        let mut exponent: i64 = 0;
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            let minus = match bytes.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                let digit = i64::from(bytes[i] - b'0');
                // Saturate: anything past the bound is refused below.
                exponent = (exponent * 10 + digit).min(MAX_EXPONENT + 1);
                i += 1;
            }
            if start == i {
                return Err(NumberError::Syntax);
            }
            if minus {
                exponent = -exponent;
            }
        }
        if i != bytes.len() {
            return Err(NumberError::Syntax);
        }
        if exponent.abs() > MAX_EXPONENT {
            return Err(NumberError::OutOfRange);
        }
        let value = if frac.is_empty() && exponent == 0 && int.len() <= 15 {
            // An integer below 10^15 is exactly a float: no need for the general parser.
            let value = small as f64;
            if negative {
                -value
            } else {
                value
            }
        } else {
            let value: f64 = text.parse().map_err(|_| NumberError::Syntax)?;
            if !value.is_finite() {
                return Err(NumberError::OutOfRange);
            }
            value
        };
        // value = (int ++ frac) × 10^(exponent − len(frac)); strip trailing zeros, then leading.
        frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            let trimmed = int.trim_end_matches('0');
            exponent += (int.len() - trimmed.len()) as i64;
            int = trimmed;
        }
        exponent -= frac.len() as i64;
        int = int.trim_start_matches('0');
        if int.is_empty() {
            frac = frac.trim_start_matches('0');
        }
        if int.is_empty() && frac.is_empty() {
            return Ok(RawNumber { negative: false, head: "", tail: "", exponent: 0, value: 0.0 });
        }
        Ok(RawNumber { negative, head: int, tail: frac, exponent, value })
    }

    /// The nearest 64-bit float.
    pub fn value(&self) -> f64 {
        self.value
    }

    fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        self.head.bytes().chain(self.tail.bytes())
    }

    fn len(&self) -> i64 {
        (self.head.len() + self.tail.len()) as i64
    }

    /// The largest integer not above the value (`1764460800000.5` is `1764460800000`, `-1.5` is
    /// `-2`), if it fits in an `i64`.
    pub fn floor_i64(&self) -> Option<i64> {
        // Digits before the decimal point.
        let point = self.len() + self.exponent;
        if point > 19 {
            return None;
        }
        let mut int: i128 = 0;
        for digit in self.digits().take(point.max(0) as usize) {
            int = int * 10 + i128::from(digit - b'0');
        }
        for _ in 0..self.exponent.max(0) {
            int *= 10;
        }
        // With the trailing zeros stripped, a negative exponent means a fraction.
        let fractional = self.exponent < 0;
        let floor = if self.negative { -int - i128::from(fractional) } else { int };
        i64::try_from(floor).ok()
    }

    /// The sign of the value: `Less` below zero, `Equal` for zero (also `-0`), `Greater` above
    /// (what a preference on a symmetric scale says: negative for the left system, spec 2.2).
    pub fn sign(&self) -> Ordering {
        if self.head.is_empty() && self.tail.is_empty() {
            Ordering::Equal
        } else if self.negative {
            Ordering::Less
        } else {
            Ordering::Greater
        }
    }

    /// The same magnitude with the opposite sign, exactly (zero stays zero).
    pub fn negated(&self) -> RawNumber<'a> {
        let negative = self.sign() != Ordering::Equal && !self.negative;
        RawNumber { negative, value: -self.value + 0.0, ..*self }
    }

    /// Writes the canonical identity of the value: equal for equal values, whatever the text.
    pub(crate) fn canonical_key(&self, buf: &mut Vec<u8>) {
        buf.push(if self.negative { b'-' } else { b'+' });
        buf.extend_from_slice(&self.exponent.to_be_bytes());
        buf.extend_from_slice(self.head.as_bytes());
        buf.extend_from_slice(self.tail.as_bytes());
    }

    /// An owned [`Number`].
    pub fn to_number(&self) -> Number {
        let mut digits = String::with_capacity(self.len() as usize);
        digits.push_str(self.head);
        digits.push_str(self.tail);
        Number { negative: self.negative, digits: digits.into(), exponent: self.exponent, value: self.value }
    }
}

impl PartialEq for RawNumber<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.negative == other.negative && self.exponent == other.exponent && self.digits().eq(other.digits())
    }
}

/// A number label: its exact decimal value and the nearest 64-bit float.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Number {
    negative: bool,
    /// The significant digits, without leading or trailing zeros; empty for zero.
    digits: Box<str>,
    /// The value is `digits × 10^exponent`.
    exponent: i64,
    value: f64,
}

impl Number {
    /// The nearest 64-bit float: what interval and ratio distances use.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The number borrowed as a [`RawNumber`].
    pub fn to_raw(&self) -> RawNumber<'_> {
        RawNumber {
            negative: self.negative,
            head: &self.digits,
            tail: "",
            exponent: self.exponent,
            value: self.value,
        }
    }

    /// Orders by exact value.
    pub fn exact_cmp(&self, other: &Number) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.magnitude_cmp(other),
            (true, true) => other.magnitude_cmp(self),
        }
    }

    fn magnitude_cmp(&self, other: &Number) -> Ordering {
        match (self.digits.is_empty(), other.digits.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        // The position of the leading digit decides, then the digits themselves (with no
        // trailing zeros, a longer run of equal leading digits is the larger number).
        let lead = |n: &Number| n.digits.len() as i64 + n.exponent;
        lead(self).cmp(&lead(other)).then_with(|| self.digits.as_bytes().cmp(other.digits.as_bytes()))
    }

    /// The number as JSON text, exactly: an integer as its digits (`18446744073709551615`), a
    /// fraction in decimal notation (`0.25`), or, far from 1, in exponent notation (`1.5e-12`).
    pub fn to_json_text(&self) -> String {
        if self.digits.is_empty() {
            return "0".to_string();
        }
        let mut out = String::with_capacity(self.digits.len() + 8);
        if self.negative {
            out.push('-');
        }
        // Digits before the decimal point.
        let point = self.digits.len() as i64 + self.exponent;
        if self.exponent >= 0 {
            // An integer: at most 309 digits, as the value is a finite float.
            out.push_str(&self.digits);
            out.extend(std::iter::repeat_n('0', self.exponent as usize));
        } else if point > 0 {
            let (int, frac) = self.digits.split_at(point as usize);
            out.push_str(int);
            out.push('.');
            out.push_str(frac);
        } else if point > -6 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&self.digits);
        } else {
            let (first, rest) = self.digits.split_at(1);
            out.push_str(first);
            if !rest.is_empty() {
                out.push('.');
                out.push_str(rest);
            }
            out.push('e');
            out.push_str(&(point - 1).to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        RawNumber::parse(text).unwrap().canonical_key(&mut buf);
        buf
    }

    fn text(t: &str) -> String {
        RawNumber::parse(t).unwrap().to_number().to_json_text()
    }

    #[test]
    fn one_value_one_key() {
        for same in ["1", "1.0", "1e0", "10e-1", "0.1e1", "1.000E+0"] {
            assert_eq!(key(same), key("1"), "{same}");
        }
        assert_eq!(key("0"), key("-0.0"));
        assert_eq!(key("0"), key("0e5"));
        assert_ne!(key("18446744073709551615"), key("18446744073709551614"));
        assert_ne!(key("9007199254740993"), key("9007199254740992"));
        assert_ne!(key("1"), key("-1"));
        assert_ne!(key("0.1"), key("0.10000000000000001"));
    }

    #[test]
    fn prints_exactly() {
        assert_eq!(text("18446744073709551615"), "18446744073709551615");
        assert_eq!(text("4.0"), "4");
        assert_eq!(text("1e3"), "1000");
        assert_eq!(text("-2.50"), "-2.5");
        assert_eq!(text("0.000125"), "0.000125");
        assert_eq!(text("1.5e-12"), "1.5e-12");
        assert_eq!(text("-3e-9"), "-3e-9");
        assert_eq!(text("123456789012345678901234567890.5"), "123456789012345678901234567890.5");
        assert_eq!(text("-0"), "0");
        for t in ["0.000125", "1.5e-12", "123.456", "1e300", "-7e-300"] {
            let printed = text(t);
            assert_eq!(key(&printed), key(t), "{t} printed as {printed}");
        }
    }

    #[test]
    fn orders_by_exact_value() {
        let mut values =
            ["18446744073709551615", "-1", "18446744073709551614", "0", "1e-20", "-1.5", "2", "1.5"]
                .map(|t| RawNumber::parse(t).unwrap().to_number());
        values.sort_by(Number::exact_cmp);
        let printed: Vec<String> = values.iter().map(Number::to_json_text).collect();
        assert_eq!(
            printed,
            ["-1.5", "-1", "0", "1e-20", "1.5", "2", "18446744073709551614", "18446744073709551615"]
        );
        assert_eq!(values[6].value(), values[7].value(), "one nearest float, two labels");
    }

    #[test]
    fn signs_and_negation_are_exact() {
        fn parse(text: &str) -> RawNumber<'_> {
            RawNumber::parse(text).unwrap()
        }
        assert_eq!(parse("-2.5").sign(), Ordering::Less);
        assert_eq!(parse("-0.0").sign(), Ordering::Equal);
        assert_eq!(parse("0e7").sign(), Ordering::Equal);
        assert_eq!(parse("1e-300").sign(), Ordering::Greater);
        assert_eq!(parse("-2.5").negated(), parse("2.5"));
        assert_eq!(parse("18446744073709551615").negated(), parse("-18446744073709551615"));
        assert_eq!(
            parse("-18446744073709551615").negated().to_number().to_json_text(),
            "18446744073709551615"
        );
        assert_eq!(parse("0").negated(), parse("0"));
        assert_eq!(parse("0").negated().value().to_bits(), 0.0f64.to_bits(), "no negative zero");
        assert_eq!(parse("3").negated().value(), -3.0);
    }

    #[test]
    fn floors() {
        let floor = |t: &str| RawNumber::parse(t).unwrap().floor_i64();
        assert_eq!(floor("1764460800000.0"), Some(1_764_460_800_000));
        assert_eq!(floor("1764460800500.5"), Some(1_764_460_800_500));
        assert_eq!(floor("1.7644608e12"), Some(1_764_460_800_000));
        assert_eq!(floor("-1.5"), Some(-2));
        assert_eq!(floor("0.25"), Some(0));
        assert_eq!(floor("9223372036854775807"), Some(i64::MAX));
        assert_eq!(floor("9223372036854775808"), None);
        assert_eq!(floor("1e30"), None);
        assert_eq!(floor("1e-30"), Some(0));
    }

    #[test]
    fn refuses_what_is_not_a_json_number() {
        for bad in ["", "-", "01", "1.", ".5", "+1", "1e", "NaN", "Infinity", "1 ", "0x10"] {
            assert_eq!(RawNumber::parse(bad).unwrap_err(), NumberError::Syntax, "{bad:?}");
        }
        assert_eq!(RawNumber::parse("1e400").unwrap_err(), NumberError::OutOfRange);
        assert_eq!(RawNumber::parse("1e-99999999999").unwrap_err(), NumberError::OutOfRange);
        assert_eq!(RawNumber::parse("1e-400").unwrap().value(), 0.0);
    }
}
