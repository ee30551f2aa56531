//! The validated configuration of labelqc, parsed once from a TOML file (every field documented
//! in `configs/labelqc.toml`; unknown fields are refused), with the environment's variables
//! applied (`${VAR}` in string values, `LABELQC_KAFKA__CLIENT__*`: see [`crate::env`]), and then
//! overridden by CLI flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use labelqc_dataflows::drift::{DriftConfig, DriftSettings};
use labelqc_dataflows::routing::RoutingSettings;
use labelqc_dataflows::truth::TruthSettings;
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
    #[error("config file {path}: {source}")]
    Env { path: PathBuf, source: crate::env::EnvError },
    #[error("cannot apply the environment: {0}")]
    Overrides(crate::env::EnvError),
}

/// The cores of this machine (1 when it cannot be told).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How the dataflow engine runs (`[engine]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Timely worker threads; by default one per core of the machine. A Dawid–Skene fit of a large
    /// scope shares its passes over as many threads of its process. The processes of a cluster
    /// need the same number: set it there.
    pub workers: usize,
    /// Input events per epoch (the unit of incremental update). Results do not depend on it.
    pub epoch_events: usize,
    /// Epochs submitted but not yet complete before the reader waits.
    pub max_epochs_in_flight: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { workers: cores(), epoch_events: 100_000, max_epochs_in_flight: 2 }
    }
}

/// Where `labelqc run` reads from (`[kafka]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    /// Consumer group: offsets of processed input are committed under it.
    pub group_id: String,
    /// Topic of label events.
    pub labels_topic: String,
    /// Topic of gold answers.
    pub gold_topic: String,
    /// Longest time an epoch stays open while input flows, in milliseconds.
    pub epoch_interval_ms: u64,
    /// How long the pipeline may stay full (`engine.max_epochs_in_flight` epochs in flight and
    /// an open epoch of `engine.epoch_events` messages) before the input partitions are paused.
    pub pause_after_ms: u64,
    /// Publish each epoch's outputs and commit its input offsets in one Kafka transaction.
    pub exactly_once: bool,
    /// On SIGTERM or SIGINT, how long the service may take to publish and commit what it has read
    /// before it gives up (the offsets of what it could not deliver stay uncommitted), in
    /// milliseconds. A second signal stops it at once.
    pub shutdown_timeout_ms: u64,
    /// The producer's `transactional.id` in exactly-once mode; one per running process.
    pub transactional_id: String,
    /// Settings passed to librdkafka as they are, for consumer and producer alike
    /// (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ...).
    pub client: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            group_id: "labelqc".into(),
            labels_topic: "labelqc.labels".into(),
            gold_topic: "labelqc.gold".into(),
            epoch_interval_ms: 100,
            pause_after_ms: 500,
            exactly_once: false,
            shutdown_timeout_ms: 20_000,
            transactional_id: "labelqc".into(),
            client: BTreeMap::new(),
        }
    }
}

/// Where `labelqc run` publishes (`[outputs]`): the topics of spec section 4.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputTopics {
    pub scopes: String,
    pub annotators: String,
    pub pairs: String,
    pub items: String,
    /// Each item's route, for the labelling platform, keyed `["project","task","item_id"]`.
    pub routing: String,
    /// Per-scope numbers over each tumbling window, keyed `project/task/size/start`.
    pub scope_windows: String,
    pub gating: String,
    pub alerts: String,
    pub deadletter: String,
    /// One system's leaderboard entry per key `["project","task","system"]` (spec 2.2).
    pub leaderboard: String,
}

impl Default for OutputTopics {
    fn default() -> Self {
        OutputTopics {
            scopes: "labelqc.scopes".into(),
            annotators: "labelqc.annotators".into(),
            pairs: "labelqc.pairs".into(),
            items: "labelqc.items".into(),
            routing: "labelqc.routing".into(),
            scope_windows: "labelqc.scope_windows".into(),
            gating: "labelqc.gating".into(),
            alerts: "labelqc.alerts".into(),
            deadletter: "labelqc.deadletter".into(),
            leaderboard: "labelqc.leaderboard".into(),
        }
    }
}

impl OutputTopics {
    /// Every output topic with the setting that names it (`outputs.scopes`, ...).
    pub fn all(&self) -> [(&'static str, &str); 10] {
        [
            ("outputs.scopes", &self.scopes),
            ("outputs.annotators", &self.annotators),
            ("outputs.pairs", &self.pairs),
            ("outputs.items", &self.items),
            ("outputs.routing", &self.routing),
            ("outputs.scope_windows", &self.scope_windows),
            ("outputs.gating", &self.gating),
            ("outputs.alerts", &self.alerts),
            ("outputs.deadletter", &self.deadletter),
            ("outputs.leaderboard", &self.leaderboard),
        ]
    }
}

/// How `labelqc topics create` makes the topics and what `labelqc topics check` expects of them
/// (`[topics]`): partition counts, the replication factor, and topic configs for every topic.
/// `cleanup.policy` is set by labelqc itself: `compact` on the input topics and the keyed
/// outputs, `delete` on the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    /// Partitions of the labels topic: the most timely workers (over all processes) that can read
    /// it in parallel.
    pub labels_partitions: i32,
    /// Partitions of the gold topic.
    pub gold_partitions: i32,
    /// Partitions of each output topic.
    pub output_partitions: i32,
    /// Replicas of each partition; -1 takes the brokers' `default.replication.factor`.
    pub replication_factor: i32,
    /// Topic configs set on every topic on creation and verified by `check`
    /// (`min.insync.replicas`, `min.compaction.lag.ms`, ...), as Kafka names them.
    pub config: BTreeMap<String, String>,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            labels_partitions: 12,
            gold_partitions: 3,
            output_partitions: 6,
            replication_factor: -1,
            config: BTreeMap::new(),
        }
    }
}

/// Tumbling event-time windows (`[windows]`): per-scope numbers over each window next to the
/// all-time ones.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowSettings {
    /// Window sizes: a number and a unit, `s`, `m`, `h` or `d` (`"1h"`, `"1d"`). Empty: none.
    pub sizes: Vec<String>,
}

impl Default for WindowSettings {
    fn default() -> Self {
        WindowSettings { sizes: vec!["1h".into(), "1d".into()] }
    }
}

impl WindowSettings {
    /// The sizes in milliseconds, or the first that is not a size.
    pub fn sizes_ms(&self) -> Result<Vec<i64>, ConfigError> {
        let mut sizes = Vec::with_capacity(self.sizes.len());
        for size in &self.sizes {
            let bad = || ConfigError::Value {
                field: "windows.sizes",
                message: format!(
                    "{size:?} is not a window size; write a number and a unit, like \"1h\" or \"1d\""
                ),
            };
            let split = size.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let n: i64 = size[..split].parse().map_err(|_| bad())?;
            let unit = match &size[split..] {
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad()),
            };
            if n == 0 || n > 366 * 86_400_000 / unit {
                return Err(bad());
            }
            if sizes.contains(&(n * unit)) {
                return Err(ConfigError::Value {
                    field: "windows.sizes",
                    message: format!("{size:?} is listed twice"),
                });
            }
            sizes.push(n * unit);
        }
        if sizes.len() > 4 {
            return Err(ConfigError::Value {
                field: "windows.sizes",
                message: "at most 4 window sizes".into(),
            });
        }
        Ok(sizes)
    }
}

/// The HTTP endpoint (`[http]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of /metrics, /healthz, /readyz and the query API.
    pub listen: SocketAddr,
    /// The bearer token every query API request (`/v1/...`) must carry; none: the API is open
    /// (it answers only on `listen`, loopback by default). Put it in the environment with
    /// `${VAR}`.
    pub api_token: Option<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { listen: SocketAddr::from(([127, 0, 0, 1], 9898)), api_token: None }
    }
}

/// Several `labelqc run` processes as one timely cluster (`[cluster]`). Each process reads its
/// share of the input partitions and keeps its share of the state; at least once, each publishes
/// its share of the output keys and answers the query API for them (exactly once, the first
/// publishes every output); the first process (index 0) commits every input offset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// `host:port` of every process, where the processes connect to each other: the same list,
    /// in the same order, in every process. Empty: this process runs alone.
    pub addresses: Vec<String>,
    /// This process's index in `addresses` (flag `--process`).
    pub process: usize,
    /// `host:port` of every process's HTTP listener (`http.listen`) as the other processes reach
    /// it, in the order of `addresses`: a query API request for a key another process publishes
    /// is forwarded there. Empty: such a request is answered `503`, naming this setting.
    pub api_addresses: Vec<String>,
}

/// The validated configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub engine: EngineSettings,
    pub kafka: KafkaSettings,
    pub outputs: OutputTopics,
    pub http: HttpSettings,
    pub windows: WindowSettings,
    pub cluster: ClusterSettings,
    pub topics: TopicSettings,
    /// Drift signals, gates and alerts of every project (`[drift]`) ...
    pub drift: DriftConfig,
    /// ... and of named projects (`[drift_projects.NAME]`), whose unset fields take the
    /// built-in defaults.
    pub drift_projects: BTreeMap<String, DriftConfig>,
    /// Pairwise preferences (`[preferences]`): `position_margin`, the margin of the
    /// position-bias flag (spec 2.2; default 0.1).
    pub preferences: labelqc_dataflows::preferences::PreferenceSettings,
    /// Dawid–Skene truth inference (`[truth]`).
    pub truth: TruthSettings,
    /// Routing of items for the labelling platform (`[routing]`).
    pub routing: RoutingSettings,
}

impl Config {
    /// The configuration of a command: the TOML file at `path` (the defaults without one), with
    /// this process's environment applied (see [`crate::env`]), validated.
    pub fn from_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let overrides = crate::env::client_overrides(std::env::vars_os()).map_err(ConfigError::Overrides)?;
        for (property, value) in overrides {
            tracing::debug!(%property, variable = crate::env::client_variable(&property), "kafka client setting from the environment");
            config.kafka.client.insert(property, value);
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML configuration file, `${VAR}` taken from this process's
    /// environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse_with(&text, &|name| std::env::var(name).ok()).map_err(|e| match e {
            ConfigError::Invalid { message, .. } => ConfigError::Invalid { path: path.into(), message },
            ConfigError::Env { source, .. } => ConfigError::Env { path: path.into(), source },
            // A value out of range: name the file it is in, as for a parse error.
            value @ ConfigError::Value { .. } => {
                ConfigError::Invalid { path: path.into(), message: value.to_string() }
            }
            other => other,
        })
    }

    /// Parses and validates TOML text, `${VAR}` taken from this process's environment.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates TOML text, `${VAR}` in string values replaced by `lookup(VAR)`.
    pub fn parse_with(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let invalid =
            |e: toml::de::Error| ConfigError::Invalid { path: PathBuf::new(), message: e.to_string() };
        let expanded = match crate::env::expand(text, lookup) {
            Ok(expanded) => expanded,
            // Not TOML: the parser of the configuration says where.
            Err(source @ crate::env::EnvError::Toml(_)) => {
                return Err(match toml::from_str::<Config>(text) {
                    Err(e) => invalid(e),
                    Ok(_) => ConfigError::Env { path: PathBuf::new(), source },
                })
            }
            Err(source) => return Err(ConfigError::Env { path: PathBuf::new(), source }),
        };
        let config: Config = toml::from_str(&expanded).map_err(invalid)?;
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
        let p = &self.preferences;
        if !(0.0..0.5).contains(&p.position_margin) {
            return Err(ConfigError::Value {
                field: "preferences.position_margin",
                message: format!("{} is out of range; a margin is a share in [0, 0.5)", p.position_margin),
            });
        }
        if !(p.tie_rate_max > 0.0 && p.tie_rate_max < 1.0) {
            return Err(ConfigError::Value {
                field: "preferences.tie_rate_max",
                message: format!("{} is out of range; a tie rate limit is a share in (0, 1)", p.tie_rate_max),
            });
        }
        for (field, value) in [
            ("preferences.window_days", i64::from(p.window_days)),
            ("preferences.min_decisive", p.min_decisive),
            ("preferences.min_comparisons", p.min_comparisons),
        ] {
            if value < 1 {
                return Err(ConfigError::Value { field, message: format!("{value} must be at least 1") });
            }
        }
        if self.engine.epoch_events == 0 {
            return Err(ConfigError::Value {
                field: "engine.epoch_events",
                message: "must be at least 1".into(),
            });
        }
        let inputs = [
            ("kafka.labels_topic", self.kafka.labels_topic.as_str()),
            ("kafka.gold_topic", &self.kafka.gold_topic),
        ];
        for (field, topic) in inputs.into_iter().chain(self.outputs.all()) {
            if topic.trim().is_empty() {
                return Err(ConfigError::Value { field, message: "a topic name is required".into() });
            }
        }
        let topics = &self.topics;
        for (field, partitions) in [
            ("topics.labels_partitions", topics.labels_partitions),
            ("topics.gold_partitions", topics.gold_partitions),
            ("topics.output_partitions", topics.output_partitions),
        ] {
            if partitions < 1 {
                return Err(ConfigError::Value {
                    field,
                    message: format!("{partitions} partitions; use at least 1"),
                });
            }
        }
        if topics.replication_factor == 0 || topics.replication_factor < -1 {
            return Err(ConfigError::Value {
                field: "topics.replication_factor",
                message: format!(
                    "{}; use at least 1 replica, or -1 for the brokers' default.replication.factor",
                    topics.replication_factor
                ),
            });
        }
        if topics.config.contains_key("cleanup.policy") {
            return Err(ConfigError::Value {
                field: "topics.config",
                message: "labelqc sets cleanup.policy itself (compact, or delete for the dead-letter topic); remove it".into(),
            });
        }
        if self.kafka.epoch_interval_ms == 0 {
            return Err(ConfigError::Value {
                field: "kafka.epoch_interval_ms",
                message: "must be at least 1".into(),
            });
        }
        if self.http.api_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(ConfigError::Value {
                field: "http.api_token",
                message: "is empty; leave it out to serve the API without a token".into(),
            });
        }
        if self.kafka.shutdown_timeout_ms == 0 {
            return Err(ConfigError::Value {
                field: "kafka.shutdown_timeout_ms",
                message: "must be at least 1".into(),
            });
        }
        if self.engine.max_epochs_in_flight == 0 {
            return Err(ConfigError::Value {
                field: "engine.max_epochs_in_flight",
                message: "must be at least 1".into(),
            });
        }
        self.windows.sizes_ms()?;
        let cluster = &self.cluster;
        if !cluster.addresses.is_empty() && cluster.process >= cluster.addresses.len() {
            return Err(ConfigError::Value {
                field: "cluster.process",
                message: format!(
                    "{} is not an index into cluster.addresses ({} addresses): use 0 to {}",
                    cluster.process,
                    cluster.addresses.len(),
                    cluster.addresses.len() - 1
                ),
            });
        }
        if cluster.addresses.is_empty() && cluster.process != 0 {
            return Err(ConfigError::Value {
                field: "cluster.process",
                message: "a process index needs cluster.addresses, the address of every process".into(),
            });
        }
        if !cluster.api_addresses.is_empty() && cluster.api_addresses.len() != cluster.addresses.len() {
            return Err(ConfigError::Value {
                field: "cluster.api_addresses",
                message: format!(
                    "names {} HTTP listeners for {} processes: list every process's, in the order of \
                     cluster.addresses, or none",
                    cluster.api_addresses.len(),
                    cluster.addresses.len()
                ),
            });
        }
        for (field, addresses) in
            [("cluster.addresses", &cluster.addresses), ("cluster.api_addresses", &cluster.api_addresses)]
        {
            for address in addresses {
                let port =
                    address.rsplit_once(':').and_then(|(host, port)| (!host.is_empty()).then_some(port));
                if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                    return Err(ConfigError::Value {
                        field,
                        message: format!("{address:?} is not host:port"),
                    });
                }
            }
        }
        let setting = |e: labelqc_dataflows::truth::SettingsError| ConfigError::Value {
            field: e.field,
            message: e.message,
        };
        self.truth.validate().map_err(setting)?;
        self.routing.validate().map_err(setting)?;
        self.drift_settings()
            .validate()
            .map_err(|e| ConfigError::Value { field: "drift", message: e.to_string() })
    }

    /// The drift settings of every project.
    pub fn drift_settings(&self) -> DriftSettings {
        DriftSettings { defaults: self.drift.clone(), projects: self.drift_projects.clone() }
    }
}

#[cfg(test)]
mod tests;
