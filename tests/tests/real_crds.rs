//! Lifeline's CRDs and deploy manifests against a real kube-apiserver (built by
//! `tests/control-plane/build.sh`; these tests skip, saying so, when it is absent).
//!
//! - The CRDs apply and become Established, CEL rules and their cost budget included.
//! - Every invalid example that is a CR is rejected by the real server at the field path
//!   `lifeline validate` names, except the checks that need other objects (which only
//!   Lifeline can make), and those the server must accept.
//! - Every manifest in `deploy/` passes `kubectl apply --dry-run=server`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};
use lifeline_testkit::{ControlPlanes, control_plane::Options};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Checks that only Lifeline can make: they need other objects (the served zones, other
/// policies, the MemberClusters), which a schema cannot see.
const CROSS_OBJECT: &[&str] = &[
    "duplicate-hostname.yaml",
    "hostname-is-a-name-server.yaml",
    "hostname-outside-zones.yaml",
    "srv-on-static-cluster.yaml",
    "unknown-cluster.yaml",
];

/// The field path an `# expect:` line names: the text before the first `": "`, after an
/// optional `file#N: ` prefix.
fn expected_path(expect: &str) -> &str {
    let rest = match expect.split_once(": ") {
        Some((first, rest)) if first.contains(".yaml#") => rest,
        _ => expect,
    };
    rest.split_once(": ").map_or(rest, |(path, _)| path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_server_rejects_every_invalid_cr_at_the_field_lifeline_validate_names()
-> Result<()> {
    let Some(planes) = ControlPlanes::start(1, Options::default()).await else {
        return Ok(());
    };
    lifeline_tests::real::install_crds(&planes[0])?;
    let s = &planes[0];
    let (ok, out, err) = s.kubectl("admin", &["create", "namespace", "shop"], None);
    ensure!(ok, "{out}{err}");

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/examples/invalid"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut report = Vec::new();
    let mut disagreements = Vec::new();
    let mut checked = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file)?;
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .with_context(|| format!("{name} lacks an `# expect:` line"))?;
        // Only CRs: a file the YAML parser refuses, or one that is a configuration file,
        // never reaches an API server.
        let Ok(docs) = serde_saphyr::from_multiple::<Value>(&text) else {
            continue;
        };
        let docs: Vec<&Value> = docs.iter().filter(|d| !d.is_null()).collect();
        let is_cr = !docs.is_empty()
            && docs.iter().all(|d| {
                d["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("lifeline.dev/"))
            });
        if !is_cr {
            continue;
        }
        checked += 1;
        let field = expected_path(expect);
        let (accepted, out, err) = s.kubectl("admin", &["apply", "-f", &path_arg(file)], None);
        let server = format!("{out}{err}").trim().replace('\n', " | ");
        if CROSS_OBJECT.contains(&name.as_str()) {
            report.push(format!("{name}: lifeline only ({field}); server: {server}"));
            if !accepted {
                disagreements.push(format!(
                    "{name}: listed as a check only Lifeline can make, but the server refused it: {server}"
                ));
            }
            let (ok, out, err) = s.kubectl(
                "admin",
                &["delete", "--wait=false", "-f", &path_arg(file)],
                None,
            );
            ensure!(ok, "cleaning up {name}: {out}{err}");
            continue;
        }
        report.push(format!("{name}: {field} | server: {server}"));
        if accepted {
            disagreements.push(format!(
                "{name}: the server accepted it; lifeline validate says {expect:?}"
            ));
        } else if !server.contains(field) {
            disagreements.push(format!(
                "{name}: the server names another field than {field:?}: {server}"
            ));
        }
    }
    println!("{}", report.join("\n"));
    ensure!(checked >= 12, "only {checked} CR examples found");
    if !disagreements.is_empty() {
        bail!(
            "the real server and lifeline validate disagree:\n{}",
            disagreements.join("\n")
        );
    }
    // Nothing invalid was stored.
    let (ok, out, err) = s.kubectl("admin", &["get", "fp,mc", "-A", "-o", "name"], None);
    ensure!(ok && out.trim().is_empty(), "stored: {out}{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deploy_manifest_passes_a_server_side_dry_run() -> Result<()> {
    let Some(planes) = ControlPlanes::start(1, Options::default()).await else {
        return Ok(());
    };
    lifeline_tests::real::install_crds(&planes[0])?;
    let s = &planes[0];
    // A dry run cannot create a namespace for the objects after it; these exist first.
    for ns in ["lifeline-system", "shop", "demo", "web", "edge"] {
        let (ok, out, err) = s.kubectl("admin", &["create", "namespace", ns], None);
        ensure!(ok, "{out}{err}");
    }
    let files = [
        "deploy/rendered/single.yaml",
        "deploy/rendered/ha.yaml",
        "deploy/rbac/management-cluster.yaml",
        "deploy/rbac/member-cluster.yaml",
        "deploy/examples/clusters.yaml",
        "deploy/examples/policies.yaml",
        "deploy/kind/manifests/management/lifeline-demo.yaml",
        "deploy/kind/manifests/member/hello.yaml",
        "deploy/kind/manifests/member/reader-token.yaml",
    ]
    .map(|f| repo().join(f));
    let mut failures = Vec::new();
    for file in &files {
        let (ok, out, err) = s.kubectl(
            "admin",
            &["apply", "--dry-run=server", "-f", &path_arg(file)],
            None,
        );
        println!("{}: {}", file.display(), out.lines().count());
        if !ok {
            failures.push(format!("{}: {err}", file.display()));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
