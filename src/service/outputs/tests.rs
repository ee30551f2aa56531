use super::*;

#[test]
fn keys_are_json_arrays_that_never_collide() {
    assert_eq!(key(&["a/b", "c"]), r#"["a/b","c"]"#);
    assert_ne!(key(&["a/b", "c"]), key(&["a", "b/c"]));
    assert_eq!(key(&["say \"hi\""]), r#"["say \"hi\""]"#);
}

#[test]
fn an_item_also_publishes_its_route_and_its_tombstone() {
    let key = RecordKey { project: "p".into(), task: "t".into(), entity: Entity::Item("i/1".into()) };
    let item = br#"{"consensus":"x","tied":false,"trusted":{"label":"x","tied":false,"n":3},"truth":{"label":"x","posterior":[{"label":"x","p":0.97},{"label":"y","p":0.03}]},"route":"settled"}"#;
    let out = messages(&key, Some(item), "now");
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].topic, out[1].topic), (OutputTopic::Items, OutputTopic::Routing));
    assert_eq!(out[1].key, r#"["p","t","i/1"]"#);
    let route: serde_json::Value = serde_json::from_slice(out[1].value.as_deref().unwrap()).unwrap();
    assert_eq!(
        route,
        serde_json::json!({"project": "p", "task": "t", "item_id": "i/1", "route": "settled",
                           "trusted_labels": 3, "truth_label": "x", "posterior": 0.97})
    );
    let gone = messages(&key, None, "now");
    assert_eq!(
        gone.iter().map(|m| (m.topic, m.value.is_none())).collect::<Vec<_>>(),
        vec![(OutputTopic::Items, true), (OutputTopic::Routing, true)]
    );
    // A scope record has no route message.
    let scope = RecordKey { project: "p".into(), task: "t".into(), entity: Entity::Scope };
    assert_eq!(messages(&scope, Some(b"{}"), "now").len(), 1);
}

#[test]
fn a_route_carries_the_truth_label_as_the_item_writes_it() {
    // As the route was formed through `serde_json::Value` (its fields in name order): the same
    // bytes for labels a `Value` holds exactly.
    let through_value = |object: &[u8]| {
        let item: serde_json::Value = serde_json::from_slice(object).unwrap();
        let truth = &item["truth"];
        let posterior = truth["posterior"].as_array().and_then(|ps| {
            ps.iter().find(|p| p["label"] == truth["label"]).map(|p| p["p"].as_f64().unwrap())
        });
        let value = serde_json::json!({
            "route": item["route"],
            "trusted_labels": item["trusted"]["n"].as_u64().unwrap_or(0),
            "truth_label": if truth.is_null() { serde_json::Value::Null } else { truth["label"].clone() },
            "posterior": posterior,
        });
        with_names("p", "t", Some("i"), &serde_json::to_vec(&value).unwrap())
    };
    for label in [r#""x""#, r#""say \"hi\"""#, "3", "1.5", "true", r#"["a","b"]"#, "18446744073709551615"] {
        let object = format!(
            r#"{{"consensus":{label},"trusted":{{"label":{label},"n":2}},"truth":{{"label":{label},"posterior":[{{"label":"z","p":0.25}},{{"label":{label},"p":0.75}}]}},"route":"settled"}}"#
        );
        let route = route_value("p", "t", "i", object.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(route).unwrap(),
            String::from_utf8(through_value(object.as_bytes())).unwrap()
        );
    }
    // Without truth and trust; and a number no `f64` holds, which the route now keeps exact.
    let object = br#"{"consensus":null,"route":"needs_labels"}"#;
    assert_eq!(route_value("p", "t", "i", object), Some(through_value(object)));
    let object = br#"{"truth":{"label":123456789012345678901234567890,"posterior":[{"label":123456789012345678901234567890,"p":1.0}]},"route":"settled"}"#;
    let route: serde_json::Value =
        serde_json::from_slice(&route_value("p", "t", "i", object).unwrap()).unwrap();
    assert_eq!(route["posterior"], 1.0);
    let route = String::from_utf8(route_value("p", "t", "i", object).unwrap()).unwrap();
    assert!(route.ends_with(r#""truth_label":123456789012345678901234567890}"#), "{route}");
    assert_eq!(route_value("p", "t", "i", b"[1]"), None);
}

#[test]
fn stamps_are_not_compared() {
    let object = br#"{"project":"p","n":1}"#.to_vec();
    let one = stamp(object.clone(), "2026-01-01T00:00:00.000Z");
    let two = stamp(object.clone(), "2026-01-02T00:00:00.000Z");
    assert_eq!(one, br#"{"project":"p","n":1,"updated_at":"2026-01-01T00:00:00.000Z"}"#.to_vec());
    assert_eq!(unstamped(&one), Some(object));
    assert_eq!(value_hash(OutputTopic::Scopes, &one), value_hash(OutputTopic::Scopes, &two));
    assert_ne!(value_hash(OutputTopic::Items, &one), value_hash(OutputTopic::Items, &two));
}

#[test]
fn only_differences_are_published() {
    let mut published = Published::default();
    let record = |key: &str, value: Option<&str>| Message {
        topic: OutputTopic::Pairs,
        key: key.to_string(),
        value: value.map(|v| v.as_bytes().to_vec()),
    };
    published.read_back(OutputTopic::Pairs, "[\"x\"]", Some(b"1"));
    published.read_back(OutputTopic::Pairs, "[\"y\"]", Some(b"1"));
    published.read_back(OutputTopic::Pairs, "[\"z\"]", Some(b"1"));
    published.read_back(OutputTopic::Pairs, "[\"z\"]", None);
    // The same value is not sent again; a new value or a new key is.
    assert!(!published.observe(&record("[\"x\"]", Some("1"))));
    assert!(published.observe(&record("[\"x\"]", Some("2"))));
    assert!(published.observe(&record("[\"w\"]", Some("1"))));
    // A key the topic holds, absent now, gets its tombstone; one it does not hold gets none.
    let current: HashSet<_, RandomState> =
        [record("[\"x\"]", None), record("[\"w\"]", None)].iter().map(record_key).collect();
    assert_eq!(published.vanished(&current), vec![record("[\"y\"]", None)]);
    assert!(!published.observe(&record("[\"z\"]", None)));
    assert!(published.observe(&record("[\"x\"]", None)));
}
