//! Creating topics through the Kafka admin API, for brokers that do not create them on first use
//! (tansu). Shared with `benches/kafka.rs`.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

/// Creates each `(name, partitions)` topic, with one replica, on `brokers`; panics with the
/// broker's answer if one cannot be created (an existing topic included).
pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("Kafka admin client");
    let topics: Vec<NewTopic> = topics
        .iter()
        .map(|&(name, partitions)| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let results = runtime
        .block_on(admin.create_topics(&topics, &options))
        .unwrap_or_else(|error| panic!("cannot create topics on {brokers}: {error}"));
    for result in results {
        if let Err((topic, code)) = result {
            panic!("cannot create topic {topic} on {brokers}: {code}");
        }
    }
}
