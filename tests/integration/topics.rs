//! The default topic names of `labelqc run` (spec section 4), shared by the Kafka tests and the
//! Kafka benchmark.

pub const LABELS: &str = "labelqc.labels";
pub const GOLD: &str = "labelqc.gold";
/// Every output topic; brokers that do not create topics on first use need them all.
pub const OUTPUTS: [&str; 10] = [
    "labelqc.scopes",
    "labelqc.annotators",
    "labelqc.pairs",
    "labelqc.items",
    "labelqc.deadletter",
    "labelqc.gating",
    "labelqc.alerts",
    "labelqc.scope_windows",
    "labelqc.leaderboard",
    "labelqc.routing",
];
