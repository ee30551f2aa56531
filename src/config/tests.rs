//! Tests of `config`.

use super::*;

#[test]
fn defaults_and_overrides() {
    assert_eq!(Config::parse("").unwrap(), Config::default());
    let c = Config::parse("[engine]\nworkers = 2\nepoch_events = 10\n").unwrap();
    assert_eq!(c.engine.workers, 2);
    assert_eq!(c.engine.epoch_events, 10);
}

#[test]
fn the_documented_file_states_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/labelqc.toml");
    let config = Config::load(&path).unwrap();
    assert_eq!(config.drift, DriftConfig::default());
    assert_eq!(config.outputs, OutputTopics::default());
    assert_eq!(config.engine, EngineSettings::default());
    assert_eq!(config.windows, WindowSettings::default());
    assert_eq!(config.cluster, ClusterSettings::default());
    assert_eq!(config.topics, TopicSettings::default());
    assert_eq!(config.preferences, labelqc_dataflows::preferences::PreferenceSettings::default());
    assert_eq!(config.truth, TruthSettings::default());
    assert_eq!(config.routing, RoutingSettings::default());
}

#[test]
fn a_value_out_of_range_in_a_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out-of-range.toml");
    std::fs::write(&path, "[truth]\nlive_tolerance = 2.0\n").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.contains("out-of-range.toml") && err.contains("truth.live_tolerance"), "{err}");
}

#[test]
fn variables_in_the_file_and_their_errors() {
    let text = "[kafka]\nbrokers = \"${BROKER}:9092\"\n[kafka.client]\n\"sasl.password\" = \"${PW}\"\n";
    let lookup = |name: &str| match name {
        "BROKER" => Some("kafka".to_string()),
        "PW" => Some("secret".to_string()),
        _ => None,
    };
    let c = Config::parse_with(text, &lookup).unwrap();
    assert_eq!(c.kafka.brokers, "kafka:9092");
    assert_eq!(c.kafka.client["sasl.password"], "secret");
    let err = Config::parse_with(text, &|_| None).unwrap_err().to_string();
    assert!(err.contains("${BROKER}") && err.contains("kafka.brokers") && err.contains("not set"), "{err}");
    // Unknown fields are still refused, with their line.
    let err = Config::parse_with("[kafka]\nbrokers = \"${BROKER}\"\nbrokerz = 1\n", &lookup).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `brokerz`") && err.to_string().contains("line 3"),
        "{err}"
    );
    let err = Config::parse_with("[kafka\nbrokers = \"${BROKER}\"\n", &lookup).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
}

#[test]
fn refuses_unknown_and_bad_fields() {
    let err = Config::parse("[engine]\nworkerz = 2\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `workerz`"), "{err}");
    let err = Config::parse("[engin]\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `engin`"), "{err}");
    let err = Config::parse("[engine]\nworkers = 0\n").unwrap_err().to_string();
    assert!(err.contains("engine.workers"), "{err}");
    let err = Config::parse("[drift]\ngate_treshold = 0.5\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `gate_treshold`"), "{err}");
    let err = Config::parse("[drift_projects.rlhf]\ngate_threshold = 2.0\n").unwrap_err().to_string();
    assert!(err.contains("gate_threshold"), "{err}");
    let c = Config::parse("[drift_projects.rlhf]\ngate_threshold = 0.9\n").unwrap();
    assert_eq!(c.drift_settings().for_project("rlhf").gate_threshold, 0.9);
    assert_eq!(c.drift_settings().for_project("other").gate_threshold, 0.7);
    let err = Config::parse("[windows]\nsizes = [\"1hour\"]\n").unwrap_err().to_string();
    assert!(err.contains("windows.sizes") && err.contains("1hour"), "{err}");
    let err = Config::parse("[cluster]\naddresses = [\"127.0.0.1:7000\"]\nprocess = 1\n").unwrap_err();
    assert!(err.to_string().contains("cluster.process"), "{err}");
    let err = Config::parse("[cluster]\naddresses = [\"127.0.0.1\"]\n").unwrap_err();
    assert!(err.to_string().contains("cluster.addresses"), "{err}");
    let c = Config::parse("[cluster]\naddresses = [\"a:1\", \"b:2\"]\nprocess = 1\n").unwrap();
    assert_eq!(c.cluster.process, 1);
    let err =
        Config::parse("[cluster]\naddresses = [\"a:1\", \"b:2\"]\napi_addresses = [\"a:9\"]\n").unwrap_err();
    assert!(err.to_string().contains("cluster.api_addresses") && err.to_string().contains("1 HTTP"), "{err}");
    let err = Config::parse("[cluster]\naddresses = [\"a:1\", \"b:2\"]\napi_addresses = [\"a:9\", \"b\"]\n")
        .unwrap_err();
    assert!(err.to_string().contains("cluster.api_addresses") && err.to_string().contains("\"b\""), "{err}");
    let err = Config::parse("[topics]\nreplication_factor = 0\n").unwrap_err();
    assert!(err.to_string().contains("topics.replication_factor"), "{err}");
    let err = Config::parse("[topics]\nlabels_partitions = 0\n").unwrap_err();
    assert!(err.to_string().contains("topics.labels_partitions"), "{err}");
    let err = Config::parse("[topics.config]\n\"cleanup.policy\" = \"delete\"\n").unwrap_err();
    assert!(err.to_string().contains("cleanup.policy"), "{err}");
    let err = Config::parse("[truth]\nrefresh_ms = 0\n").unwrap_err();
    assert!(err.to_string().contains("truth.refresh_ms"), "{err}");
    let err = Config::parse("[truth]\nlive_tolerance = 2.0\n").unwrap_err();
    assert!(err.to_string().contains("truth.live_tolerance"), "{err}");
    let err = Config::parse("[truth]\nrefresh = 10\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `refresh`"), "{err}");
    let err = Config::parse("[routing]\nmin_labels = 5\nmax_labels = 4\n").unwrap_err();
    assert!(err.to_string().contains("routing.max_labels"), "{err}");
    let err = Config::parse("[routing]\nconfidence = 1.5\n").unwrap_err();
    assert!(err.to_string().contains("routing.confidence"), "{err}");
    let err = Config::parse("[routing]\nconfidance = 0.9\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `confidance`"), "{err}");
    let c =
        Config::parse("[truth]\nrefresh_ms = 250\nclamp_gold = true\n[routing]\nmin_labels = 2\n").unwrap();
    assert_eq!((c.truth.refresh_ms, c.truth.clamp_gold, c.routing.min_labels), (250, true, 2));
    let c = Config::parse("[windows]\nsizes = [\"15m\", \"2d\"]\n").unwrap();
    assert_eq!(c.windows.sizes_ms().unwrap(), vec![900_000, 172_800_000]);
}
