//! The environment's part in the configuration, so that secrets (a SASL password, a key's
//! passphrase) need not be written into the TOML file: `${VAR}` in any string value of the file
//! is replaced by the variable's value, and `LABELQC_KAFKA__CLIENT__<NAME>` variables set
//! `[kafka.client]` settings, overriding the file.

use std::collections::BTreeMap;

use toml_edit::{DocumentMut, Item, Value};

/// The prefix of the variables that set `[kafka.client]` settings: `LABELQC_KAFKA__CLIENT__`
/// followed by the librdkafka property in upper case with `_` for `.`
/// (`LABELQC_KAFKA__CLIENT__SASL_PASSWORD` sets `"sasl.password"`).
pub const CLIENT_PREFIX: &str = "LABELQC_KAFKA__CLIENT__";

/// Why the environment could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("`{field}` refers to ${{{variable}}}, which is not set; set it, or write the value in the file")]
    Unset { field: String, variable: String },
    #[error(
        "`{field}` has a `${{` that does not start a variable: write ${{NAME}} (letters, digits and _), \
         or $${{ for a literal ${{"
    )]
    Malformed { field: String },
    #[error("the variable {variable} is not valid UTF-8")]
    NotUnicode { variable: String },
    #[error("the file is not valid TOML: {0}")]
    Toml(String),
}

/// Replaces `${VAR}` in every string value of a TOML document by `lookup(VAR)`; `$${` stands for
/// a literal `${`, and any other `$` is kept. Keys, comments and layout are kept, so that errors
/// found later point at the lines of the original file.
///
/// Errors: a variable that `lookup` does not know ([`EnvError::Unset`], naming it and the field
/// that refers to it), a `${` not followed by a name and `}` ([`EnvError::Malformed`]), text that
/// is not TOML.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut document: DocumentMut =
        text.parse().map_err(|e: toml_edit::TomlError| EnvError::Toml(e.to_string()))?;
    let mut path = Vec::new();
    for (key, item) in document.as_table_mut().iter_mut() {
        path.push(key.get().to_string());
        expand_item(item, &mut path, lookup)?;
        path.pop();
    }
    Ok(document.to_string())
}

fn expand_item(
    item: &mut Item,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), EnvError> {
    match item {
        Item::Value(value) => expand_value(value, path, lookup),
        Item::Table(table) => {
            for (key, item) in table.iter_mut() {
                path.push(key.get().to_string());
                expand_item(item, path, lookup)?;
                path.pop();
            }
            Ok(())
        }
        Item::ArrayOfTables(tables) => {
            for (i, table) in tables.iter_mut().enumerate() {
                path.push(i.to_string());
                for (key, item) in table.iter_mut() {
                    path.push(key.get().to_string());
                    expand_item(item, path, lookup)?;
                    path.pop();
                }
                path.pop();
            }
            Ok(())
        }
        Item::None => Ok(()),
    }
}

fn expand_value(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), EnvError> {
    match value {
        Value::String(s) if s.value().contains('$') => {
            let field = field_name(path);
            let expanded = substitute(s.value(), &field, lookup)?;
            let decor = s.decor().clone();
            *s = toml_edit::Formatted::new(expanded);
            *s.decor_mut() = decor;
        }
        Value::Array(array) => {
            for (i, value) in array.iter_mut().enumerate() {
                path.push(i.to_string());
                expand_value(value, path, lookup)?;
                path.pop();
            }
        }
        Value::InlineTable(table) => {
            for (key, value) in table.iter_mut() {
                path.push(key.get().to_string());
                expand_value(value, path, lookup)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// `kafka.client."sasl.password"`: the dotted path, quoting parts that hold a dot.
fn field_name(path: &[String]) -> String {
    let parts: Vec<String> =
        path.iter().map(|p| if p.contains('.') { format!("{p:?}") } else { p.clone() }).collect();
    parts.join(".")
}

/// Substitutes the variables of one string.
fn substitute(text: &str, field: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| EnvError::Malformed { field: field.into() })?;
            let name = &after[..end];
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(EnvError::Malformed { field: field.into() });
            }
            let value =
                lookup(name).ok_or_else(|| EnvError::Unset { field: field.into(), variable: name.into() })?;
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The `[kafka.client]` settings given by `LABELQC_KAFKA__CLIENT__<NAME>` variables among `vars`:
/// `NAME` in lower case with `.` for `_` (librdkafka's properties are lower case and use no `_`).
/// Errors: such a variable whose value is not UTF-8.
pub fn client_overrides<I>(vars: I) -> Result<BTreeMap<String, String>, EnvError>
where
    I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
{
    let mut settings = BTreeMap::new();
    for (name, value) in vars {
        let Some(property) = name.to_str().and_then(|n| n.strip_prefix(CLIENT_PREFIX)) else { continue };
        if property.is_empty() {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| EnvError::NotUnicode { variable: format!("{CLIENT_PREFIX}{property}") })?;
        settings.insert(property.to_ascii_lowercase().replace('_', "."), value);
    }
    Ok(settings)
}

/// The variable that sets a `[kafka.client]` property: the inverse of [`client_overrides`].
pub fn client_variable(property: &str) -> String {
    format!("{CLIENT_PREFIX}{}", property.to_ascii_uppercase().replace('.', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn expands_variables_in_string_values_only() {
        let text = "# ${NOT_A_VALUE}\n[kafka]\nbrokers = \"${HOST}:9092\" # ${ALSO_NOT}\n\
                    [kafka.client]\n\"sasl.password\" = '${PW}'\n\"x\" = \"$${PW} and $5\"\n\
                    [cluster]\naddresses = [\"${HOST}:7000\", \"b:7000\"]\n";
        let out = expand(text, &vars(&[("HOST", "kafka-0"), ("PW", "s3cr\"et")])).unwrap();
        let table: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(table["kafka"]["brokers"].as_str(), Some("kafka-0:9092"));
        assert_eq!(table["kafka"]["client"]["sasl.password"].as_str(), Some("s3cr\"et"));
        assert_eq!(table["kafka"]["client"]["x"].as_str(), Some("${PW} and $5"));
        assert_eq!(table["cluster"]["addresses"][0].as_str(), Some("kafka-0:7000"));
        assert!(out.starts_with("# ${NOT_A_VALUE}\n"), "{out}");
        assert!(out.contains("# ${ALSO_NOT}"), "{out}");
        // Lines stay where they were.
        assert_eq!(out.lines().count(), text.lines().count());
    }

    #[test]
    fn an_unset_or_malformed_variable_is_an_error_naming_it() {
        let err = expand("[kafka.client]\n\"sasl.password\" = \"${KAFKA_PW}\"\n", &vars(&[])).unwrap_err();
        assert_eq!(
            err,
            EnvError::Unset { field: "kafka.client.\"sasl.password\"".into(), variable: "KAFKA_PW".into() }
        );
        assert!(err.to_string().contains("${KAFKA_PW}"), "{err}");
        for bad in ["${}", "${1X}", "${X", "${X-Y}"] {
            let err = expand(&format!("[kafka]\nbrokers = \"{bad}\"\n"), &vars(&[("X", "1")])).unwrap_err();
            assert_eq!(err, EnvError::Malformed { field: "kafka.brokers".into() }, "{bad}");
        }
        // Text without `$` is returned as it is, invalid TOML included (its parser names the error).
        assert_eq!(expand("[engine\n", &vars(&[])).unwrap(), "[engine\n");
    }

    #[test]
    fn client_variables_name_librdkafka_properties() {
        let env = [
            ("LABELQC_KAFKA__CLIENT__SASL_PASSWORD", "pw"),
            ("LABELQC_KAFKA__CLIENT__SSL_KEY_PASSWORD", "kp"),
            ("LABELQC_KAFKA__CLIENT__", "ignored"),
            ("LABELQC_LOG", "debug"),
        ];
        let overrides = client_overrides(env.map(|(k, v)| (k.into(), v.into()))).unwrap();
        let expected: BTreeMap<String, String> =
            [("sasl.password", "pw"), ("ssl.key.password", "kp")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(overrides, expected);
        assert_eq!(client_variable("sasl.password"), "LABELQC_KAFKA__CLIENT__SASL_PASSWORD");
    }
}
