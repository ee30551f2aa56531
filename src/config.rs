//! The validated configuration of labelqc, parsed once from a TOML file (every field documented
//! in `configs/labelqc.toml`; unknown fields are refused) and then overridden by CLI flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("invalid setting `{field}`: {message}")]
    Value { field: &'static str, message: String },
}

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    engine: RawEngine,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    workers: Option<usize>,
    epoch_events: Option<usize>,
    max_epochs_in_flight: Option<u64>,
}

/// How the dataflow engine runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// Timely worker threads.
    pub workers: usize,
    /// Input events per epoch (the unit of incremental update). Results do not depend on it.
    pub epoch_events: usize,
    /// Epochs submitted but not yet complete before the reader waits.
    pub max_epochs_in_flight: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { workers: 1, epoch_events: 100_000, max_epochs_in_flight: 2 }
    }
}

/// The validated configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub engine: EngineSettings,
}

impl Config {
    /// Reads and validates a TOML configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Invalid { message, .. } => ConfigError::Invalid { path: path.into(), message },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Invalid { path: PathBuf::new(), message: e.to_string() })?;
        let defaults = EngineSettings::default();
        let config = Config {
            engine: EngineSettings {
                workers: raw.engine.workers.unwrap_or(defaults.workers),
                epoch_events: raw.engine.epoch_events.unwrap_or(defaults.epoch_events),
                max_epochs_in_flight: raw
                    .engine
                    .max_epochs_in_flight
                    .unwrap_or(defaults.max_epochs_in_flight),
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that types alone do not constrain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.engine.workers == 0 || self.engine.workers > 1024 {
            return Err(ConfigError::Value {
                field: "engine.workers",
                message: format!("{} is out of range; use 1 to 1024 worker threads", self.engine.workers),
            });
        }
        if self.engine.epoch_events == 0 {
            return Err(ConfigError::Value {
                field: "engine.epoch_events",
                message: "must be at least 1".into(),
            });
        }
        if self.engine.max_epochs_in_flight == 0 {
            return Err(ConfigError::Value {
                field: "engine.max_epochs_in_flight",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let c = Config::parse("[engine]\nworkers = 2\nepoch_events = 10\n").unwrap();
        assert_eq!(c.engine.workers, 2);
        assert_eq!(c.engine.epoch_events, 10);
    }

    #[test]
    fn refuses_unknown_and_bad_fields() {
        let err = Config::parse("[engine]\nworkerz = 2\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `workerz`"), "{err}");
        let err = Config::parse("[engin]\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `engin`"), "{err}");
        let err = Config::parse("[engine]\nworkers = 0\n").unwrap_err().to_string();
        assert!(err.contains("engine.workers"), "{err}");
    }
}
