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
