//! Comparing JSON reports: numbers within a tolerance (integers exactly, where both are written as
//! integers), `null` only where `null` is expected.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::Value;

/// `lines` in a seeded random order, one per line: input whose arrival order must not matter.
pub fn shuffled(mut lines: Vec<&str>, seed: u64) -> String {
    lines.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    lines.join("\n") + "\n"
}

/// Checks that every key of `expected` is in `actual` with an equal value (numbers within
/// `tolerance`). With `exact_keys`, `actual` may hold no keys that `expected` lacks.
pub fn mismatches(expected: &Value, actual: &Value, tolerance: f64, exact_keys: bool) -> Vec<String> {
    let mut out = Vec::new();
    walk(expected, actual, tolerance, exact_keys, "$", &mut out);
    out
}

fn walk(
    expected: &Value,
    actual: &Value,
    tolerance: f64,
    exact_keys: bool,
    path: &str,
    out: &mut Vec<String>,
) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                match a.get(key) {
                    Some(got) => walk(value, got, tolerance, exact_keys, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}: missing, expected {value}")),
                }
            }
            if exact_keys {
                for key in a.keys().filter(|k| !e.contains_key(*k)) {
                    out.push(format!("{path}.{key}: unexpected {}", a[key]));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!("{path}: {} elements, expected {}", a.len(), e.len()));
                return;
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                walk(x, y, tolerance, exact_keys, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(e), Value::Number(a)) if e.is_f64() || a.is_f64() => {
            let (x, y) = (e.as_f64().unwrap_or(f64::NAN), a.as_f64().unwrap_or(f64::NAN));
            if x.is_nan() || y.is_nan() || (x - y).abs() > tolerance {
                out.push(format!("{path}: {a}, expected {e}"));
            }
        }
        (e, a) => {
            if e != a {
                out.push(format!("{path}: {a}, expected {e}"));
            }
        }
    }
}
