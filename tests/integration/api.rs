//! The query API of `labelqc run` (spec section 4) against `labelqc report` over the same input,
//! on librdkafka's mock cluster: the scopes (with a scope of comparisons' `preferences`),
//! annotators, items, gates and leaderboards it answers are the report's; an unknown entity is a
//! 404; with `http.api_token` a request without the token is a
//! 401; the OpenAPI document describes exactly the routes served.

use std::collections::BTreeSet;

use serde_json::Value;

use labelqc::gen::preferences::{PreferenceSpec, PreferenceTraffic};

use crate::compare::mismatches;
use crate::http::{get, get_with};
use crate::scenario::{mock_cluster, produce, report, start_service, wait_for_events, Setup, GOLD, LABELS};

fn json(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = get(addr, path).unwrap_or_else(|| panic!("no answer to {path}"));
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
}

/// A path segment, percent-encoded.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn the_api_answers_what_the_report_says() {
    let (cluster, brokers) = mock_cluster();
    let mut s = Setup::new(cluster, brokers, 113);
    // And a scope of comparisons (task `preference`), for its `preferences` and leaderboard.
    let spec = PreferenceSpec { events: 600, systems: 4, annotators: 12, ..Default::default() };
    let mut traffic = PreferenceTraffic::new(&spec).unwrap();
    let mut comparisons = Vec::new();
    for _ in 0..spec.events {
        traffic.next_event(None, &mut comparisons);
    }
    s.labels.extend(String::from_utf8(comparisons).unwrap().lines().map(String::from));
    produce(&s.producer, GOLD, &s.gold);
    produce(&s.producer, LABELS, &s.labels);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("labelqc.toml");
    std::fs::write(&config, "[http]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let service = start_service(&s.brokers, &["--config", config.to_str().unwrap()]);
    wait_for_events(&service, s.labels.len() as u64, s.gold.len() as u64);
    let expected = report(&s.labels, &s.gold);
    let addr = &service.1;

    let (status, scopes) = json(addr, "/v1/scopes");
    assert_eq!(status, 200);
    let scopes = scopes.as_array().unwrap();
    let report_scopes = expected["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), report_scopes.len());
    let with_comparisons = report_scopes.iter().filter(|s| s["preferences"].is_object()).count();
    assert_eq!(with_comparisons, 1, "the comparisons' scope has its preference numbers");
    // Live Dawid–Skene truth becomes the report's once the scopes stop changing for
    // `truth.refresh_ms`: ask again until it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let problems = answers_vs_report(addr, report_scopes);
        if problems.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{problems:#?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    unknown_paths_answer_404(addr);
}

/// Two processes as one cluster, each publishing its share of the keys: each answers every
/// request the report can check, for its own keys from what it published and for the other's by
/// forwarding the request (`cluster.api_addresses`), the bearer token with it; unknown paths are
/// 404s on both.
#[test]
fn every_process_of_a_cluster_answers_the_whole_api() {
    let (cluster, brokers) = mock_cluster();
    let s = Setup::new(cluster, brokers, 131);
    produce(&s.producer, GOLD, &s.gold);
    produce(&s.producer, LABELS, &s.labels);
    let ports: Vec<u16> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let list =
        |ports: &[u16]| ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect::<Vec<_>>().join(", ");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    let settings = format!(
        "[http]\napi_token = \"s3cret\"\n[cluster]\naddresses = [{}]\napi_addresses = [{}]\n",
        list(&ports[..2]),
        list(&ports[2..])
    );
    std::fs::write(&config, settings).unwrap();
    let config = config.to_str().unwrap();
    let start = |process: usize| {
        let http = format!("127.0.0.1:{}", ports[2 + process]);
        let process = process.to_string();
        crate::scenario::start_service_at(
            &s.brokers,
            &http,
            &["--config", config, "--process", &process],
            &[],
        )
    };
    let later = start(1);
    let leader = start(0);
    wait_for_events(&leader, s.labels.len() as u64, s.gold.len() as u64);
    let expected = report(&s.labels, &s.gold);
    let report_scopes = expected["scopes"].as_array().unwrap();
    let token = [("Authorization", "Bearer s3cret")];
    for service in [&leader, &later] {
        let addr = &service.1;
        assert_eq!(get(addr, "/v1/annotators/default/default/ann-00001").unwrap().0, 401);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let problems = answers_vs_report_with(addr, report_scopes, &token);
            if problems.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{addr}: {problems:#?}");
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}

/// The differences between the API's answers and the report's scopes.
fn answers_vs_report(addr: &str, report_scopes: &[Value]) -> Vec<String> {
    answers_vs_report_with(addr, report_scopes, &[])
}

/// [`answers_vs_report`], each request with `headers`.
fn answers_vs_report_with(addr: &str, report_scopes: &[Value], headers: &[(&str, &str)]) -> Vec<String> {
    let json = |addr: &str, path: &str| -> (u16, Value) {
        let (status, body) = get_with(addr, path, headers).unwrap_or_else(|| panic!("no answer to {path}"));
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
    };
    let mut problems = Vec::new();
    for scope in report_scopes {
        let (project, task) = (scope["project"].as_str().unwrap(), scope["task"].as_str().unwrap());
        let mut summary = scope.clone();
        // The leaderboard is asked for on its own (below).
        for field in ["pairs", "annotators", "items", "alerts", "windows", "leaderboard"] {
            summary.as_object_mut().unwrap().remove(field);
        }
        let path = format!("/v1/scopes/{}/{}", segment(project), segment(task));
        let (status, mut answer) = json(addr, &path);
        assert_eq!(status, 200, "{path}");
        answer.as_object_mut().unwrap().remove("updated_at");
        problems.extend(mismatches(&summary, &answer, 1e-9, true));
        for annotator in scope["annotators"].as_array().unwrap() {
            let name = annotator["annotator_id"].as_str().unwrap();
            let path = format!("/v1/annotators/{}/{}/{}", segment(project), segment(task), segment(name));
            let (status, answer) = json(addr, &path);
            assert_eq!(status, 200, "{path}");
            problems.extend(mismatches(annotator, &answer, 1e-9, false));
            // May this annotator take a task? The gate, in one request.
            let path = format!("/v1/gates/{}/{}", segment(project), segment(name));
            let (status, gate) = json(addr, &path);
            assert_eq!(status, 200, "{path}");
            assert_eq!(gate["state"], annotator["gate"]["state"], "{path}");
        }
        for (item, consensus) in scope["items"].as_object().unwrap() {
            let path = format!("/v1/items/{}/{}/{}", segment(project), segment(task), segment(item));
            let (status, answer) = json(addr, &path);
            assert_eq!(status, 200, "{path}");
            problems.extend(mismatches(consensus, &answer, 1e-9, false));
        }
        let path = format!("/v1/leaderboard/{}/{}", segment(project), segment(task));
        let (status, mut board) = json(addr, &path);
        assert_eq!(status, 200, "{path}");
        // Each entry names its scope, which the report's entries, inside their scope, do not.
        for entry in board.as_array_mut().unwrap() {
            let entry = entry.as_object_mut().unwrap();
            assert_eq!((&entry["project"], &entry["task"]), (&scope["project"], &scope["task"]), "{path}");
            entry.remove("project");
            entry.remove("task");
        }
        match scope.get("leaderboard") {
            Some(expected) => problems.extend(mismatches(expected, &board, 1e-9, true)),
            None => assert_eq!(board, Value::Array(Vec::new()), "{path}: no preference events"),
        }
    }
    problems
}

/// Unknown entities are 404s.
fn unknown_paths_answer_404(addr: &str) {
    for path in [
        "/v1/scopes/nope/default",
        "/v1/annotators/default/default/nobody",
        "/v1/items/default/default/no-such-item",
        "/v1/gates/default/nobody",
        "/v1/leaderboard/nope/default",
    ] {
        let (status, answer) = json(addr, path);
        assert_eq!(status, 404, "{path}");
        assert!(answer["error"].as_str().is_some_and(|e| e.starts_with("no ")), "{path}: {answer}");
    }
}

#[test]
fn a_token_guards_the_api() {
    let (cluster, brokers) = mock_cluster();
    let s = Setup::new(cluster, brokers, 127);
    produce(&s.producer, LABELS, &s.labels[..50]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("labelqc.toml");
    std::fs::write(&config, "[http]\nlisten = \"127.0.0.1:0\"\napi_token = \"${LABELQC_TEST_TOKEN}\"\n")
        .unwrap();
    let service = crate::scenario::start_service_with_env(
        &s.brokers,
        &["--config", config.to_str().unwrap()],
        &[("LABELQC_TEST_TOKEN", "s3cret")],
    );
    wait_for_events(&service, 50, 0);
    let addr = &service.1;
    assert_eq!(get(addr, "/v1/scopes").unwrap().0, 401);
    assert_eq!(get_with(addr, "/v1/scopes", &[("Authorization", "Bearer wrong")]).unwrap().0, 401);
    let (status, body) = get_with(addr, "/v1/scopes", &[("Authorization", "Bearer s3cret")]).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!serde_json::from_str::<Value>(&body).unwrap().as_array().unwrap().is_empty(), "{body}");
    // Metrics and health stay open to the scraper and the orchestrator.
    assert_eq!(get(addr, "/metrics").unwrap().0, 200);
    assert_eq!(get(addr, "/healthz").unwrap().0, 200);
}

#[test]
fn the_openapi_document_describes_the_routes_served() {
    let document: Value = serde_json::from_str(labelqc::api::OPENAPI).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let paths: BTreeSet<&str> = document["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    let served: BTreeSet<&str> = [
        "/v1/scopes",
        "/v1/scopes/{project}/{task}",
        "/v1/gates/{project}/{annotator_id}",
        "/v1/annotators/{project}/{task}/{annotator_id}",
        "/v1/items/{project}/{task}/{item_id}",
        "/v1/leaderboard/{project}/{task}",
    ]
    .into();
    assert_eq!(paths, served);
    let source = include_str!("../../src/http.rs");
    for path in &served {
        assert!(source.contains(&format!("\"{path}\"")), "{path} is not routed in src/http.rs");
    }
    // Each operation answers 401 and, with a path parameter, 404 too.
    for (path, item) in document["paths"].as_object().unwrap() {
        let responses = &item["get"]["responses"];
        assert!(responses["401"].is_object(), "{path}");
        assert_eq!(responses["404"].is_object(), path.contains('{'), "{path}");
    }
}
