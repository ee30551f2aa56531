//! The Kafka topics of `labelqc run`, through the admin API: which the configuration needs and
//! with which settings ([`plan`]), which of them are missing or set otherwise ([`check`], the
//! `labelqc topics check` command and the check of `labelqc run` at start), and making the missing
//! ones ([`create`], `labelqc topics create`).
//!
//! Settings: the input topics and every keyed output are `cleanup.policy=compact` (each holds the
//! current record per key; spec section 1: keying input by label identity makes it safe to
//! compact, and the service rebuilds its state from the input on start, so deleting old input
//! would lose labels). The dead-letter topic is `cleanup.policy=delete`: its keys are positions,
//! each used once, so compaction would never free anything. Partition counts, the replication
//! factor and extra topic configs come from `[topics]`.
//!
//! Brokers differ in what they answer: librdkafka's mock cluster has no CreateTopics and no
//! DescribeConfigs (its topics are made by the embedding program), so there topic configs are
//! reported as not verified rather than guessed; brokers that describe only the configs set on a
//! topic (tansu) are read as Kafka's defaults for the others (`cleanup.policy=delete`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Config;

/// How long a metadata request, or an admin request, may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `create` waits for the topics it made to appear in the brokers' metadata.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(15);
/// Kafka's default `cleanup.policy`, for brokers that describe only the configs set on a topic.
const DEFAULT_CLEANUP_POLICY: &str = "delete";

/// Why the topics could not be checked or made.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("cannot create a Kafka admin client: {0}; check [kafka] brokers and [kafka.client]")]
    Client(KafkaError),
    #[error("cannot read the list of topics from {brokers}: {source}; check that the brokers are up and [kafka.client] security settings")]
    Metadata { brokers: String, source: KafkaError },
    #[error("cannot create topics: the brokers at {brokers} do not support the admin API (CreateTopics, DescribeConfigs; librdkafka's mock cluster does not); create them with your Kafka tools: {wanted}")]
    Unsupported { brokers: String, wanted: String },
    #[error("cannot create topics on {brokers}: {failures}")]
    Create { brokers: String, failures: String },
    #[error("cannot start the admin client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{} on {brokers}: {}; {hint}", count(.problems.len(), "topic problem"), join(.problems))]
    Problems { brokers: String, problems: Vec<Problem>, hint: &'static str },
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn join(problems: &[Problem]) -> String {
    problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("; ")
}

/// One topic as the configuration wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    /// The setting that names it: `kafka.labels_topic`, `outputs.scopes`, ...
    pub setting: &'static str,
    pub partitions: i32,
    /// Replicas per partition; -1: the brokers' default (not checked).
    pub replication_factor: i32,
    /// Topic configs, `cleanup.policy` among them.
    pub config: BTreeMap<String, String>,
}

/// Every topic of a configuration: the two input topics, then every output topic.
pub fn plan(config: &Config) -> Vec<TopicSpec> {
    let settings = &config.topics;
    let spec = |setting, name: &str, partitions, policy: &str| {
        let mut topic_config = settings.config.clone();
        topic_config.insert("cleanup.policy".into(), policy.into());
        TopicSpec {
            name: name.to_string(),
            setting,
            partitions,
            replication_factor: settings.replication_factor,
            config: topic_config,
        }
    };
    let mut topics = vec![
        spec("kafka.labels_topic", &config.kafka.labels_topic, settings.labels_partitions, "compact"),
        spec("kafka.gold_topic", &config.kafka.gold_topic, settings.gold_partitions, "compact"),
    ];
    for (setting, name) in config.outputs.all() {
        let policy = if setting == "outputs.deadletter" { "delete" } else { "compact" };
        topics.push(spec(setting, name, settings.output_partitions, policy));
    }
    topics
}

/// What is wrong with one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub topic: String,
    pub setting: &'static str,
    pub kind: ProblemKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    Missing,
    Partitions {
        expected: i32,
        actual: i32,
    },
    Replication {
        expected: i32,
        actual: i32,
    },
    /// A topic config differs; `actual` is `None` when it is not set and has no known default.
    Config {
        key: String,
        expected: String,
        actual: Option<String>,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Problem { topic, setting, kind } = self;
        match kind {
            ProblemKind::Missing => write!(f, "{topic} ({setting}) is missing"),
            ProblemKind::Partitions { expected, actual } => {
                write!(f, "{topic} has {actual} partitions, [topics] says {expected}")
            }
            ProblemKind::Replication { expected, actual } => {
                write!(f, "{topic} has replication factor {actual}, [topics] says {expected}")
            }
            ProblemKind::Config { key, expected, actual: Some(actual) } => {
                write!(f, "{topic} has {key}={actual}, should be {expected}")
            }
            ProblemKind::Config { key, expected, actual: None } => {
                write!(f, "{topic} has no {key}, should be {expected}")
            }
        }
    }
}

/// A topic as the brokers describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicState {
    pub spec: TopicSpec,
    /// `None` when the topic does not exist.
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    /// Its configs, when the brokers could describe them.
    pub config: Option<BTreeMap<String, String>>,
}

/// The outcome of a check: every topic's state and every problem found.
#[derive(Debug)]
pub struct Check {
    pub brokers: String,
    pub topics: Vec<TopicState>,
    pub problems: Vec<Problem>,
    /// Why topic configs were not verified (the brokers cannot describe them), if they were not.
    pub unverified: Option<String>,
}

impl Check {
    /// The missing topics.
    pub fn missing(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.kind == ProblemKind::Missing)
    }

    /// One line per topic, for people: `ok`, `MISSING` or `WRONG`, then what was found.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for state in &self.topics {
            let spec = &state.spec;
            let problems: Vec<&Problem> = self.problems.iter().filter(|p| p.topic == spec.name).collect();
            let Some(partitions) = state.partitions else {
                lines.push(format!("MISSING {} ({})", spec.name, spec.setting));
                continue;
            };
            let mut found = format!("{partitions} partitions");
            if let Some(replicas) = state.replication_factor {
                found += &format!(", replication factor {replicas}");
            }
            if let Some(config) = &state.config {
                for key in spec.config.keys() {
                    let value = config.get(key).map_or("(not set)", String::as_str);
                    found += &format!(", {key}={value}");
                }
            }
            if problems.is_empty() {
                lines.push(format!("ok      {} ({}): {found}", spec.name, spec.setting));
            } else {
                let wrong: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                lines.push(format!("WRONG   {} ({}): {}", spec.name, spec.setting, wrong.join("; ")));
            }
        }
        if let Some(reason) = &self.unverified {
            lines.push(format!(
                "note: topic configs (cleanup.policy, [topics.config]) not verified: {reason}"
            ));
        }
        lines
    }
}

/// An admin client of the configured brokers, with the configured client settings.
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    brokers: String,
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    /// Connects lazily: the first request fails if the brokers cannot be reached.
    pub fn new(config: &Config) -> Result<Admin, TopicsError> {
        let mut client_config = ClientConfig::new();
        client_config.set("bootstrap.servers", &config.kafka.brokers);
        for (key, value) in &config.kafka.client {
            client_config.set(key, value);
        }
        let client = client_config.create().map_err(TopicsError::Client)?;
        let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(TopicsError::Runtime)?;
        Ok(Admin { client, brokers: config.kafka.brokers.clone(), runtime })
    }

    fn options() -> AdminOptions {
        AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT)).operation_timeout(Some(REQUEST_TIMEOUT))
    }

    /// Partition count and replication factor of every topic on the brokers, and the id of a
    /// broker. Asks for all topics: a request naming a topic could create it on brokers that
    /// create topics on first use.
    fn list(&self) -> Result<Listing, TopicsError> {
        let metadata = self
            .client
            .inner()
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map_err(|source| TopicsError::Metadata { brokers: self.brokers.clone(), source })?;
        let topics = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| {
                let replicas = t.partitions().iter().map(|p| p.replicas().len() as i32).min().unwrap_or(0);
                (t.name().to_string(), (t.partitions().len() as i32, replicas))
            })
            .collect();
        Ok(Listing { topics, broker: metadata.brokers().first().map(|b| b.id()) })
    }

    /// The configs of `topics`, asked of one broker (any broker answers for topics; librdkafka
    /// would otherwise wait for a controller, which the mock cluster never names).
    fn describe(
        &self,
        topics: &[&str],
        broker: Option<i32>,
    ) -> Result<HashMap<String, BTreeMap<String, String>>, Describe> {
        let resources: Vec<ResourceSpecifier> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let options = Admin::options().broker_id(broker);
        let results = match self.runtime.block_on(self.client.describe_configs(&resources, &options)) {
            Ok(results) => results,
            Err(KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature)) => {
                return Err(Describe::Unsupported)
            }
            Err(error) => {
                return Err(Describe::Failed(format!("DescribeConfigs failed on {}: {error}", self.brokers)))
            }
        };
        let mut configs = HashMap::new();
        for (topic, result) in topics.iter().zip(results) {
            let resource = result.map_err(|code| {
                Describe::Failed(format!("cannot describe the configs of {topic}: {code}"))
            })?;
            let entries = resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect();
            configs.insert(topic.to_string(), entries);
        }
        Ok(configs)
    }
}

/// The topics on the brokers, and one broker's id.
struct Listing {
    topics: HashMap<String, (i32, i32)>,
    broker: Option<i32>,
}

/// Why configs could not be described.
enum Describe {
    /// The brokers have no DescribeConfigs (nor, then, CreateTopics): librdkafka's mock cluster.
    Unsupported,
    Failed(String),
}

/// Checks `topics` on the brokers: every missing topic, and every partition count, replication
/// factor (when one is configured) and topic config that differs. A config the brokers do not
/// describe counts as Kafka's default (`cleanup.policy=delete`) or, for others, as not set.
///
/// Errors: the brokers cannot be reached or refuse the metadata request. Brokers that cannot
/// describe configs are not an error: the check says so in [`Check::unverified`].
pub fn check(admin: &Admin, topics: &[TopicSpec]) -> Result<Check, TopicsError> {
    let listing = admin.list()?;
    let present = &listing.topics;
    let existing: Vec<&str> =
        topics.iter().filter(|t| present.contains_key(&t.name)).map(|t| t.name.as_str()).collect();
    let described =
        if existing.is_empty() { Ok(HashMap::new()) } else { admin.describe(&existing, listing.broker) };
    let (configs, unverified) = match described {
        Ok(configs) => (Some(configs), None),
        Err(Describe::Unsupported) => (
            None,
            Some(format!(
                "the brokers at {} do not support DescribeConfigs (librdkafka's mock cluster does not)",
                admin.brokers
            )),
        ),
        Err(Describe::Failed(reason)) => (None, Some(reason)),
    };
    let mut states = Vec::new();
    let mut problems = Vec::new();
    for spec in topics {
        let problem = |kind| Problem { topic: spec.name.clone(), setting: spec.setting, kind };
        let Some(&(partitions, replicas)) = present.get(&spec.name) else {
            problems.push(problem(ProblemKind::Missing));
            states.push(TopicState {
                spec: spec.clone(),
                partitions: None,
                replication_factor: None,
                config: None,
            });
            continue;
        };
        if partitions != spec.partitions {
            problems.push(problem(ProblemKind::Partitions { expected: spec.partitions, actual: partitions }));
        }
        if spec.replication_factor > 0 && replicas != spec.replication_factor {
            problems.push(problem(ProblemKind::Replication {
                expected: spec.replication_factor,
                actual: replicas,
            }));
        }
        let config = configs.as_ref().map(|configs| {
            let mut config = configs.get(&spec.name).cloned().unwrap_or_default();
            config.entry("cleanup.policy".into()).or_insert_with(|| DEFAULT_CLEANUP_POLICY.into());
            config
        });
        if let Some(config) = &config {
            for (key, expected) in &spec.config {
                let actual = config.get(key);
                let same = match (key.as_str(), actual) {
                    // A list: compare as a set ("compact,delete" is "delete,compact").
                    ("cleanup.policy", Some(actual)) => policy_set(actual) == policy_set(expected),
                    (_, actual) => actual == Some(expected),
                };
                if !same {
                    problems.push(problem(ProblemKind::Config {
                        key: key.clone(),
                        expected: expected.clone(),
                        actual: actual.cloned(),
                    }));
                }
            }
        }
        states.push(TopicState {
            spec: spec.clone(),
            partitions: Some(partitions),
            replication_factor: Some(replicas),
            config,
        });
    }
    Ok(Check { brokers: admin.brokers.clone(), topics: states, problems, unverified })
}

fn policy_set(policy: &str) -> std::collections::BTreeSet<&str> {
    policy.split(',').map(str::trim).filter(|p| !p.is_empty()).collect()
}

/// Creates the topics of `topics` that do not exist, with their partitions, replication factor
/// and configs, and returns their names once the brokers list them. Existing topics are left as
/// they are (a check reports how they differ).
///
/// Errors: the brokers cannot be reached, cannot create topics at all (librdkafka's mock cluster),
/// or refuse some topic (each named with the brokers' reason).
pub fn create(admin: &Admin, topics: &[TopicSpec]) -> Result<Vec<String>, TopicsError> {
    let listing = admin.list()?;
    let missing: Vec<&TopicSpec> = topics.iter().filter(|t| !listing.topics.contains_key(&t.name)).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let unsupported = || {
        let wanted = missing.iter().map(|t| describe_spec(t)).collect::<Vec<_>>().join("; ");
        TopicsError::Unsupported { brokers: admin.brokers.clone(), wanted }
    };
    // Brokers without the admin API (the mock cluster) leave a CreateTopics request waiting for a
    // controller until it times out; a DescribeConfigs asked of one broker tells at once.
    if let Err(Describe::Unsupported) = admin.describe(&[missing[0].name.as_str()], listing.broker) {
        return Err(unsupported());
    }
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|spec| {
            let mut topic =
                NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
            for (key, value) in &spec.config {
                topic = topic.set(key, value);
            }
            topic
        })
        .collect();
    let results = admin.runtime.block_on(admin.client.create_topics(&new_topics, &Admin::options()));
    let results = match results {
        Ok(results) => results,
        Err(KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature)) => return Err(unsupported()),
        Err(source) => {
            return Err(TopicsError::Create { brokers: admin.brokers.clone(), failures: source.to_string() })
        }
    };
    let mut created = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            // Made meanwhile by someone else: the check that follows says whether it is right.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => failures.push(format!("{name}: {code}")),
        }
    }
    if !failures.is_empty() {
        return Err(TopicsError::Create { brokers: admin.brokers.clone(), failures: failures.join("; ") });
    }
    // Topics appear in the metadata of every broker a moment after they are made.
    let deadline = Instant::now() + PROPAGATION_TIMEOUT;
    while Instant::now() < deadline {
        let present = admin.list()?.topics;
        if created.iter().all(|name| present.contains_key(name)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(created)
}

/// `name (N partitions, key=value, ...)`, what a topic should be, for people.
pub fn describe_spec(spec: &TopicSpec) -> String {
    let mut text = format!("{} ({} partitions", spec.name, spec.partitions);
    if spec.replication_factor > 0 {
        text += &format!(", replication factor {}", spec.replication_factor);
    }
    for (key, value) in &spec.config {
        text += &format!(", {key}={value}");
    }
    text + ")"
}

/// The check of `labelqc run` at start, before it reads anything: fails naming every missing
/// topic, input and output, so that none is found missing only when the first output is
/// published; logs a warning for each topic config that differs (an input topic that is not
/// compacted loses labels). Partition counts are not compared: the service reads any number.
///
/// The outer error is a broker that cannot be reached (the service waits that out and calls
/// again); the inner one is a topic problem or a client that cannot be made, which waiting does
/// not mend.
pub fn check_at_start(config: &Config) -> Result<Result<(), TopicsError>, KafkaError> {
    let admin = match Admin::new(config) {
        Ok(admin) => admin,
        Err(error) => return Ok(Err(error)),
    };
    let check = match check(&admin, &plan(config)) {
        Ok(check) => check,
        Err(TopicsError::Metadata { source, .. }) => return Err(source),
        Err(error) => return Ok(Err(error)),
    };
    let missing: Vec<Problem> = check.missing().cloned().collect();
    if !missing.is_empty() {
        return Ok(Err(TopicsError::Problems {
            brokers: check.brokers,
            problems: missing,
            hint: "create them with `labelqc topics create` (same --config), or with your Kafka tools",
        }));
    }
    for problem in &check.problems {
        if let ProblemKind::Config { .. } = problem.kind {
            tracing::warn!(topic = %problem.topic, setting = problem.setting, "{problem}");
        }
    }
    if let Some(reason) = &check.unverified {
        tracing::info!(%reason, "topic configs not verified");
    }
    Ok(Ok(()))
}
