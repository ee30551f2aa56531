//! `labelqc topics create|check` through the Kafka admin API on both brokers, the check of
//! `labelqc run` at start, and the environment's part in the configuration (`${VAR}` in the file,
//! `LABELQC_KAFKA__CLIENT__*`), all through the real binary.
//!
//! librdkafka's mock cluster has neither CreateTopics nor DescribeConfigs: there `check` verifies
//! presence and partitions and says that configs were not verified, and `create` fails naming
//! what to create. tansu has both, and keeps the configs a topic is created with.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::admin::create_topics;
use crate::tansu::Tansu;
use crate::topics::{GOLD, LABELS, OUTPUTS};

/// `[topics]` matching the partitions the tests give their topics.
const SMALL: &str = "[topics]\nlabels_partitions = 2\ngold_partitions = 1\noutput_partitions = 1\n";

fn labelqc(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run labelqc")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("labelqc.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// A mock cluster with every topic of the default configuration but `skip`, with the partitions
/// of [`SMALL`].
fn mock_without(skip: &[&str]) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [LABELS, GOLD].into_iter().chain(OUTPUTS) {
        if !skip.contains(&topic) {
            cluster.create_topic(topic, if topic == LABELS { 2 } else { 1 }, 1).unwrap();
        }
    }
    let brokers = cluster.bootstrap_servers();
    (cluster, brokers)
}

#[test]
fn check_on_the_mock_cluster_names_each_missing_topic_and_says_configs_are_unverified() {
    let (_cluster, brokers) = mock_without(&[OUTPUTS[1], OUTPUTS[6]]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SMALL);
    let out = labelqc(&["topics", "check", "--config", &config, "--brokers", &brokers], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    for missing in [OUTPUTS[1], OUTPUTS[6]] {
        assert!(stdout.contains(&format!("MISSING {missing} (outputs.")), "{stdout}");
        assert!(stderr.contains(&format!("{missing} (outputs.")), "{stderr}");
    }
    assert!(stderr.contains("2 topic problems"), "{stderr}");
    assert!(stdout.contains(&format!("ok      {LABELS} (kafka.labels_topic): 2 partitions")), "{stdout}");
    assert!(stdout.contains("not verified") && stdout.contains("DescribeConfigs"), "{stdout}");

    // The mock cluster cannot create topics: create says so and names what to create.
    let out = labelqc(&["topics", "create", "--config", &config, "--brokers", &brokers], &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot create topics"), "{stderr}");
    assert!(stderr.contains(&format!("{} (1 partitions, cleanup.policy=compact)", OUTPUTS[1])), "{stderr}");

    // Partition counts that differ from [topics] are named; with every topic present, that is all.
    let (_cluster, brokers) = mock_without(&[]);
    let out = labelqc(&["topics", "check", "--brokers", &brokers], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success());
    assert!(
        stdout.contains(&format!(
            "WRONG   {LABELS} (kafka.labels_topic): {LABELS} has 2 partitions, [topics] says 12"
        )),
        "{stdout}"
    );
    assert!(stderr.contains("12 topic problems"), "{stderr}");
    let out = labelqc(&["topics", "check", "--config", &config, "--brokers", &brokers], &[]);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
}

/// `labelqc run` fails at once naming every missing topic (it used to wait 30 s for the delivery
/// of its first output and exit without a name).
#[test]
fn run_names_every_missing_output_topic_at_start() {
    let (_cluster, brokers) = mock_without(&[OUTPUTS[2]]);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["run", "--brokers", &brokers, "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("labelqc run still runs after 20 s with {} missing", OUTPUTS[2]);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&format!("{} (outputs.pairs) is missing", OUTPUTS[2])), "{stderr}");
    assert!(stderr.contains("labelqc topics create"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn the_environment_sets_variables_of_the_file_and_client_settings() {
    let (_cluster, brokers) = mock_without(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), &format!("[kafka]\nbrokers = \"${{LABELQC_TEST_BROKERS}}\"\n{SMALL}"));
    let args = ["topics", "check", "--config", &config];
    let out = labelqc(&args, &[("LABELQC_TEST_BROKERS", &brokers)]);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));

    // Unset: an error naming the variable, the field and the file.
    let out = labelqc(&args, &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("${LABELQC_TEST_BROKERS}")
            && stderr.contains("kafka.brokers")
            && stderr.contains(&config),
        "{stderr}"
    );

    // LABELQC_KAFKA__CLIENT__* reaches the Kafka client: librdkafka refuses the bogus value.
    let out = labelqc(
        &args,
        &[("LABELQC_TEST_BROKERS", &brokers), ("LABELQC_KAFKA__CLIENT__SECURITY_PROTOCOL", "bogus")],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("security.protocol") && stderr.contains("bogus"), "{stderr}");
}

/// The configs of a topic as the brokers describe them.
fn described(brokers: &str, topic: &str) -> BTreeMap<String, String> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let resources = [ResourceSpecifier::Topic(topic)];
    let results = runtime.block_on(admin.describe_configs(&resources, &AdminOptions::new())).unwrap();
    let resource = results.into_iter().next().unwrap().unwrap();
    resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))).collect()
}

#[test]
fn create_and_check_on_tansu() {
    let Some((_tansu, brokers)) = Tansu::start() else { return };
    // Made beforehand with other settings (no cleanup.policy: Kafka's default, delete).
    create_topics(&brokers, &[(GOLD, 2)]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), SMALL);
    let base = ["--config", &config, "--brokers", &brokers];

    let out = labelqc(&[&["topics", "create"][..], &base].concat(), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // Everything else was made; the topic made beforehand is left as it was, and named.
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("created {LABELS} (2 partitions, cleanup.policy=compact)")), "{stdout}");
    for topic in OUTPUTS {
        assert!(stdout.contains(&format!("created {topic} (1 partitions")), "{stdout}");
    }
    assert!(!stdout.contains(&format!("created {GOLD}")), "{stdout}");
    assert!(stdout.contains(&format!("WRONG   {GOLD} (kafka.gold_topic)")), "{stdout}");
    assert!(stderr.contains(&format!("{GOLD} has 2 partitions, [topics] says 1")), "{stderr}");
    assert!(stderr.contains(&format!("{GOLD} has cleanup.policy=delete, should be compact")), "{stderr}");
    assert!(stderr.contains("2 topic problems"), "{stderr}");
    // What the brokers hold, read independently of labelqc.
    assert_eq!(described(&brokers, LABELS).get("cleanup.policy").map(String::as_str), Some("compact"));
    assert_eq!(described(&brokers, OUTPUTS[0]).get("cleanup.policy").map(String::as_str), Some("compact"));
    let deadletter = OUTPUTS.iter().find(|t| t.ends_with("deadletter")).unwrap();
    assert_eq!(described(&brokers, deadletter).get("cleanup.policy").map(String::as_str), Some("delete"));

    // check: the same problems, and nothing else.
    let out = labelqc(&[&["topics", "check"][..], &base].concat(), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success());
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 11, "{stdout}");
    assert!(stderr.contains("2 topic problems"), "{stderr}");
    assert!(!stdout.contains("not verified"), "{stdout}");

    // Another gold topic: create makes it and everything checks out.
    let gold = "labelqc.gold.v2";
    let out = labelqc(&[&["topics", "create", "--gold-topic", gold][..], &base].concat(), &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("created ")).count(), 1, "{stdout}");
    let out = labelqc(&[&["topics", "check", "--gold-topic", gold][..], &base].concat(), &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 12, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{LABELS} (kafka.labels_topic): 2 partitions, replication factor 1, cleanup.policy=compact"
        )),
        "{stdout}"
    );
}
