//! `lifeline validate` against the committed examples: the valid set passes, and every
//! invalid document fails with the exact message its first line promises.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use lifeline_controller::documents;
use lifeline_testkit::examples;

fn valid_set() -> Vec<PathBuf> {
    ["lifeline.yaml", "clusters.yaml", "policies.yaml"]
        .iter()
        .map(|f| examples::dir().join(f))
        .collect()
}

fn lifeline(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(args)
        .output()
        .expect("run lifeline")
}

#[test]
fn the_example_configuration_and_policies_are_valid() {
    let loaded = documents::load(&valid_set(), &[]);
    let problems: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(loaded.configs.len(), 1);
    assert_eq!(loaded.clusters.len(), 3);
    assert_eq!(loaded.policies.len(), 4);
    let strategies: Vec<String> = loaded
        .policies
        .iter()
        .map(|(_, p)| format!("{:?}", p.spec.strategy))
        .collect();
    assert_eq!(strategies, ["Failover", "Weighted", "RoundRobin", "Geo"]);
}

#[test]
fn the_replicated_configuration_example_is_valid() {
    let set: Vec<PathBuf> = ["lifeline-ha.yaml", "clusters.yaml", "policies.yaml"]
        .iter()
        .map(|f| examples::dir().join(f))
        .collect();
    let loaded = documents::load(&set, &[]);
    let problems: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{problems:#?}");
    let config = &loaded.configs[0].1;
    let (connect, prefix) = config.store.etcd_connect().expect("an etcd store");
    assert_eq!(connect.endpoints.len(), 3);
    assert_eq!(prefix, "/lifeline");
    assert!(connect.tls.is_some() && connect.user.is_some());
}

#[test]
fn validate_command_exits_zero_on_the_examples() {
    let args: Vec<_> = valid_set()
        .into_iter()
        .map(|p| p.into_os_string())
        .collect();
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let out = lifeline(&[&["validate".as_ref()], refs.as_slice()].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Each file in `examples/invalid/` starts with `# expect: <text>`; validating it next to
/// the example configuration and clusters must print a line for that file containing
/// `<text>`, and every problem printed must belong to that file.
#[test]
fn every_invalid_example_fails_with_its_expected_message() {
    let dir = examples::dir().join("invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 15,
        "expected at least 15 invalid examples, found {}",
        files.len()
    );

    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an `# expect:` first line", file.display()))
            .to_owned();
        let set = vec![
            examples::dir().join("lifeline.yaml"),
            examples::dir().join("clusters.yaml"),
            file.clone(),
        ];
        let loaded = documents::load(&set, &[]);
        let lines: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if !lines.iter().any(|l| l.contains(&expect)) {
            failures.push(format!(
                "{name}: expected a line containing {expect:?}, got {lines:#?}"
            ));
        }
        if let Some(stray) = loaded.problems.iter().find(|r| r.origin.file != *file) {
            failures.push(format!(
                "{name}: problem reported against another file: {stray}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn validate_command_prints_every_problem_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.yaml");
    std::fs::write(
        &file,
        "apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {name: many}\nspec:\n  hostname: -bad-\n  ttl: 0\n  targets:\n    - {cluster: a, weight: 2000}\n    - {cluster: a}\n  healthCheck:\n    tcp: {port: 0}\n    interval: soon\n",
    )
    .unwrap();
    let out = lifeline(&["validate".as_ref(), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let f = file.display();
    for expected in [
        format!("{f}: spec.hostname: \"-bad-\" is not a valid DNS name"),
        format!("{f}: spec.ttl: 0 is out of range: must be between 1 and 86400"),
        format!("{f}: spec.targets[0].weight: 2000 is out of range: must be between 0 and 1000"),
        format!("{f}: spec.targets[1]: duplicate target cluster \"a\" (also spec.targets[0])"),
        format!("{f}: spec.healthCheck.tcp.port: 0 is out of range: must be between 1 and 65535"),
        format!("{f}: spec.healthCheck.interval: invalid duration \"soon\""),
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(&expected)),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn a_ten_megabyte_file_is_refused_without_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.yaml");
    let line = "# padding padding padding padding padding padding padding padding\n";
    std::fs::write(&file, line.repeat(10 * 1024 * 1024 / line.len() + 1)).unwrap();
    let loaded = documents::load(std::slice::from_ref(&file), &[]);
    let lines: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("the limit is 1048576 bytes"), "{lines:?}");
}

#[test]
fn a_missing_file_is_reported_not_fatal() {
    let missing = examples::dir().join("does-not-exist.yaml");
    let mut set = valid_set();
    set.push(missing.clone());
    let loaded = documents::load(&set, &[]);
    assert_eq!(loaded.problems.len(), 1);
    assert!(
        loaded.problems[0]
            .to_string()
            .starts_with(&format!("{}: cannot read file", missing.display()))
    );
    assert_eq!(loaded.policies.len(), 4, "the readable files still load");
}

#[test]
fn crds_command_prints_the_committed_crd_files() {
    let out = lifeline(&["crds".as_ref()]);
    assert!(out.status.success());
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let committed = [
        std::fs::read_to_string(crds.join("failoverpolicies.lifeline.dev.yaml")).unwrap(),
        std::fs::read_to_string(crds.join("memberclusters.lifeline.dev.yaml")).unwrap(),
    ]
    .join("---\n");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

#[test]
fn a_file_with_thousands_of_small_documents_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.yaml");
    let mut text = String::from(
        "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {name: c}\nspec: {region: r, addressSource: Static, addresses: [\"192.0.2.1\"]}\n",
    );
    for i in 0..3000 {
        text += &format!(
            "---\napiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: p{i}}}\nspec: {{hostname: p{i}.global.example.com, targets: [{{cluster: c}}]}}\n"
        );
    }
    assert!(text.len() < 1024 * 1024);
    std::fs::write(&file, text).unwrap();
    let loaded = documents::load(&[examples::dir().join("lifeline.yaml"), file], &[]);
    let problems: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
    assert!(
        problems.is_empty(),
        "{:?}",
        &problems[..problems.len().min(3)]
    );
    assert_eq!(loaded.policies.len(), 3000);
}
