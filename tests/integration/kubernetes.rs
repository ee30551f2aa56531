//! The Kubernetes example in `deploy/kubernetes/`, parsed and checked for the references between
//! its objects and against labelqc itself: every file kustomize lists exists and parses; the
//! ConfigMap the pods mount exists and holds a configuration that labelqc's own parser accepts
//! (with the environment the pods get); the container arguments are valid `labelqc` commands and
//! name the mounted file; the Secret of the SASL password is the one kustomize generates and its
//! variable sets `[kafka.client] "sasl.password"`; the probes ask `/healthz` and `/readyz` on the
//! port of the configured HTTP listener, which listens on every interface; the Service selects the
//! pods and targets that port; the grace period outlasts the service's shutdown timeout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use labelqc::cli::{Cli, Command, TopicsCommand};
use labelqc::config::Config;
use serde::Deserialize;
use serde_yaml_ng::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every object of the files that kustomization.yaml lists, and the kustomization itself.
fn load() -> (Value, Vec<Value>) {
    let read = |name: &str| {
        std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("deploy/kubernetes/{name}: {e}"))
    };
    let kustomization: Value = serde_yaml_ng::from_str(&read("kustomization.yaml")).unwrap();
    let mut objects = Vec::new();
    for resource in kustomization["resources"].as_sequence().expect("resources") {
        let name = resource.as_str().unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&read(name)) {
            let object = Value::deserialize(document).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(object["apiVersion"].is_string() && object["kind"].is_string(), "{name}: {object:?}");
            objects.push(object);
        }
    }
    (kustomization, objects)
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
}

/// The container's environment: literal values as they are, values from a Secret as a stand-in
/// (after checking that the Secret is the generated one and has the key).
fn environment(container: &Value, kustomization: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_sequence().map(Vec::as_slice).unwrap_or_default() {
        let name = str_of(&var["name"], "env name").to_string();
        if let Some(value) = var["value"].as_str() {
            env.insert(name, value.to_string());
        } else if let Some(secret) = var["valueFrom"].get("secretKeyRef") {
            let (secret_name, key) = (str_of(&secret["name"], "secret name"), str_of(&secret["key"], "key"));
            let generator = kustomization["secretGenerator"]
                .as_sequence()
                .and_then(|g| g.iter().find(|g| g["name"] == secret_name))
                .unwrap_or_else(|| panic!("{name}: no secretGenerator makes the Secret {secret_name}"));
            let keys: Vec<&str> = generator["files"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|f| {
                    let f = f.as_str().unwrap();
                    f.split_once('=').map_or(Path::new(f).file_name().unwrap().to_str().unwrap(), |(k, _)| k)
                })
                .collect();
            assert!(
                keys.contains(&key),
                "{name}: the Secret {secret_name} has no key {key} (keys: {keys:?})"
            );
            env.insert(name, format!("<{secret_name}/{key}>"));
        } else {
            panic!("{name}: neither a value nor a secretKeyRef");
        }
    }
    env
}

/// The configuration a container reads: its `--config` file must be a key of a ConfigMap mounted
/// at that path; parsed with `${VAR}` and `LABELQC_KAFKA__CLIENT__*` from the container's env.
fn container_config(
    pod: &Value,
    container: &Value,
    config: &Path,
    env: &BTreeMap<String, String>,
    objects: &[Value],
) -> (Config, String) {
    let (mount_dir, file) = (config.parent().unwrap(), config.file_name().unwrap().to_str().unwrap());
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| Path::new(str_of(&m["mountPath"], "mountPath")) == mount_dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {}", mount_dir.display()));
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
    let config_map = find(objects, "ConfigMap", str_of(&volume["configMap"]["name"], "configMap name"));
    let text = str_of(&config_map["data"][file], &format!("the ConfigMap's {file}")).to_string();
    let mut parsed = Config::parse_with(&text, &|name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("the ConfigMap's {file}: {e}"));
    let overrides = labelqc::env::client_overrides(env.iter().map(|(k, v)| (k.into(), v.into()))).unwrap();
    parsed.kafka.client.extend(overrides);
    (parsed, text)
}

/// The port number a probe or Service names: a number, or the name of a container port.
fn port_number(port: &Value, container: &Value) -> i64 {
    if let Some(number) = port.as_i64() {
        return number;
    }
    let name = str_of(port, "port");
    container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("the container has no port named {name}"))
}

fn parse_args(container: &Value) -> Command {
    let args: Vec<&str> =
        container["args"].as_sequence().unwrap().iter().map(|a| str_of(a, "argument")).collect();
    assert!(container["command"].is_null(), "the image's entrypoint is labelqc; give args only");
    Cli::try_parse_from(std::iter::once("labelqc").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("args {args:?} are not a labelqc command: {e}"))
        .command
}

#[test]
fn the_kubernetes_example_is_consistent_with_itself_and_with_labelqc() {
    let (kustomization, objects) = load();
    let statefulset = find(&objects, "StatefulSet", "labelqc");
    let pod = &statefulset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let image = str_of(&container["image"], "image");
    assert!(image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))), "{image}: tag it with the version");

    let Command::Run(run) = parse_args(container) else {
        panic!("the StatefulSet does not run `labelqc run`")
    };
    let config_path = run.config.expect("--config");
    let env = environment(container, &kustomization);
    let (config, text) = container_config(pod, container, &config_path, &env, &objects);
    assert!(run.http.is_none(), "the listener comes from the ConfigMap");
    // The SASL password: from the Secret, through the variable, into [kafka.client].
    assert_eq!(
        config.kafka.client.get("sasl.password").map(String::as_str),
        Some("<labelqc-kafka/sasl-password>")
    );
    assert!(!text.contains("sasl.password\" ="), "the password is not written in the ConfigMap");

    // Probes on the listener's port, which must listen on the pod's address.
    let listen = config.http.listen;
    assert!(listen.ip().is_unspecified(), "[http] listen = {listen}: probes come from outside the pod");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(str_of(&get["path"], probe), path, "{probe}");
        assert_eq!(port_number(&get["port"], container), i64::from(listen.port()), "{probe}");
    }

    // The governing Service selects these pods and targets the listener's port.
    let service = find(&objects, "Service", str_of(&statefulset["spec"]["serviceName"], "serviceName"));
    let labels = &statefulset["spec"]["template"]["metadata"]["labels"];
    let selector = service["spec"]["selector"].as_mapping().unwrap();
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(&labels[key.as_str().unwrap()], value, "Service selector {key:?}");
    }
    for (key, value) in statefulset["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&labels[key.as_str().unwrap()], value, "StatefulSet selector {key:?}");
    }
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(port_number(&service_port["targetPort"], container), i64::from(listen.port()));

    // SIGTERM: the grace period outlasts the shutdown timeout.
    let grace_ms =
        1000 * statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap();
    let shutdown_ms = config.kafka.shutdown_timeout_ms as i64;
    assert!(
        grace_ms > shutdown_ms,
        "terminationGracePeriodSeconds {grace_ms} ms <= shutdown_timeout_ms {shutdown_ms}"
    );

    // The Job that makes the topics: `labelqc topics create` on the same configuration.
    let job = find(&objects, "Job", "labelqc-topics");
    let job_pod = &job["spec"]["template"]["spec"];
    let job_container = &job_pod["containers"][0];
    let Command::Topics(TopicsCommand::Create(args)) = parse_args(job_container) else {
        panic!("the Job does not run `labelqc topics create`")
    };
    let job_env = environment(job_container, &kustomization);
    let (job_config, _) = container_config(job_pod, job_container, &args.config.unwrap(), &job_env, &objects);
    assert_eq!(job_config, config, "the Job and the StatefulSet read the same configuration");
    assert_eq!(job_container["image"], container["image"]);
    // The Job's pods are not the Service's.
    let job_labels = &job["spec"]["template"]["metadata"]["labels"];
    assert!(selector.iter().any(|(k, v)| &job_labels[k.as_str().unwrap()] != v));
}
