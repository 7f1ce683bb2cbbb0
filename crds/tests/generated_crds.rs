//! The CRD YAML committed in `crds/` must match what the types generate.
//!
//! After changing the types, regenerate with
//! `LIFELINE_UPDATE_CRDS=1 cargo test -p lifeline-crds --test generated_crds`.

use std::path::Path;

#[test]
fn committed_crd_files_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("LIFELINE_UPDATE_CRDS").is_some();
    let mut drifted = Vec::new();
    for (file, generated) in lifeline_crds::crd_files() {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            drifted.push(file);
        }
    }
    assert!(
        drifted.is_empty(),
        "CRD files out of date: {drifted:?}; run LIFELINE_UPDATE_CRDS=1 cargo test -p lifeline-crds --test generated_crds"
    );
}

#[test]
fn crds_name_the_group_kinds_short_names_and_status_subresource() {
    let all = lifeline_crds::crds_yaml();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&all).unwrap();
    assert_eq!(docs.len(), 2);
    let fp = &docs[0];
    assert_eq!(fp["metadata"]["name"], "failoverpolicies.lifeline.dev");
    assert_eq!(fp["spec"]["scope"], "Namespaced");
    assert_eq!(fp["spec"]["names"]["shortNames"][0], "fp");
    let version = &fp["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Hostname", "Strategy", "Answer", "Ready", "Age"]);
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["ttl"]["default"], 30);
    assert_eq!(spec["properties"]["ttl"]["maximum"], 86400.0);
    assert_eq!(
        spec["properties"]["strategy"]["enum"],
        serde_json::json!(["Failover", "Weighted", "RoundRobin", "Geo"])
    );

    let mc = &docs[1];
    assert_eq!(mc["metadata"]["name"], "memberclusters.lifeline.dev");
    assert_eq!(mc["spec"]["scope"], "Cluster");
    assert_eq!(mc["spec"]["names"]["shortNames"][0], "mc");
    let columns: Vec<&str> = mc["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Region", "Zone", "Control Plane", "Age"]);
}

/// The bounds in the CRD schema are the ones the Rust validation checks: both come from
/// `lifeline_model::limits`, and this test reads them back out of the generated schema.
#[test]
fn schema_bounds_are_the_documented_limits() {
    use lifeline_model::limits as l;
    use serde_json::{Value, json};

    let all = lifeline_crds::crds_yaml();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&all).unwrap();
    let schema = |doc: &Value| doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    let fp = schema(&docs[0]);
    let spec = &fp["properties"]["spec"]["properties"];
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let range = |v: &Value| (num(&v["minimum"]), num(&v["maximum"]));

    assert_eq!(range(&spec["ttl"]), (l::TTL_MIN.into(), l::TTL_MAX.into()));
    assert_eq!(
        range(&spec["maxAnswers"]),
        (l::MAX_ANSWERS_MIN.into(), l::MAX_ANSWERS_MAX.into())
    );
    assert_eq!(spec["maxAnswers"]["default"], json!(l::MAX_ANSWERS_DEFAULT));
    assert_eq!(spec["targets"]["maxItems"], json!(l::TARGETS_MAX));
    let target = &spec["targets"]["items"]["properties"];
    assert_eq!(range(&target["priority"]), (0.0, l::PRIORITY_MAX.into()));
    assert_eq!(range(&target["weight"]), (0.0, l::WEIGHT_MAX.into()));
    assert_eq!(target["addresses"]["maxItems"], json!(l::ADDRESSES_MAX));
    let hc = &spec["healthCheck"];
    for field in ["unhealthyThreshold", "healthyThreshold"] {
        assert_eq!(
            range(&hc["properties"][field]),
            (l::THRESHOLD_MIN.into(), l::THRESHOLD_MAX.into()),
            "{field}"
        );
    }
    assert_eq!(
        hc["properties"]["http"]["properties"]["expectedStatus"]["maxItems"],
        json!(l::EXPECTED_STATUS_MAX)
    );
    assert_eq!(
        spec["whenAllUnhealthy"]["properties"]["fallbackAddresses"]["maxItems"],
        json!(l::ADDRESSES_MAX)
    );
    let failback = &spec["failback"];
    assert_eq!(
        range(&failback["properties"]["rampSteps"]),
        (l::RAMP_STEPS_MIN.into(), l::RAMP_STEPS_MAX.into())
    );

    // Duration bounds are CEL rules; each must name the limit's text.
    let rules = |v: &Value| -> Vec<String> {
        v["x-kubernetes-validations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["rule"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let has_rule = |v: &Value, field: &str, op: &str, text: &str| {
        let want = format!("duration(self.{field}) {op} duration('{text}')");
        assert!(
            rules(v).iter().any(|r| r.contains(&want)),
            "no rule {want:?} in {:?}",
            rules(v)
        );
    };
    has_rule(hc, "interval", ">=", l::PROBE_INTERVAL_MIN_TEXT);
    has_rule(hc, "interval", "<=", l::PROBE_INTERVAL_MAX_TEXT);
    has_rule(failback, "holdDown", "<=", l::LONG_DURATION_MAX_TEXT);
    has_rule(failback, "rampDuration", "<=", l::LONG_DURATION_MAX_TEXT);
    has_rule(
        &spec["onSourceUnavailable"],
        "maxStale",
        "<=",
        l::LONG_DURATION_MAX_TEXT,
    );
    assert_eq!(
        spec["failback"]["properties"]["holdDown"]["maxLength"],
        json!(lifeline_model::duration::MAX_TEXT)
    );

    let mc = schema(&docs[1]);
    assert_eq!(
        mc["properties"]["spec"]["properties"]["addresses"]["maxItems"],
        json!(l::CLUSTER_ADDRESSES_MAX)
    );
}
