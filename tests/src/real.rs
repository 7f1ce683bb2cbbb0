//! Set-up shared by everything that runs on real kube-apiservers (the test kit's
//! `ControlPlanes`): kubectl as the administrator, Lifeline's CRDs, and LoadBalancer
//! Services whose status the test writes, as a cloud controller would.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Result, ensure};
use lifeline_testkit::control_plane::ApiServer;
use serde_json::{Value, json};

/// A path in the repository.
pub fn repo(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)
}

/// `kubectl` as the administrator; its output, or an error with everything it said.
pub fn kubectl(s: &ApiServer, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let (ok, out, err) = s.kubectl("admin", args, stdin);
    ensure!(ok, "kubectl {} on {}: {out}{err}", args.join(" "), s.name());
    Ok(out)
}

/// Server-side apply of one object.
pub fn apply(s: &ApiServer, doc: &Value) -> Result<()> {
    kubectl(
        s,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&doc.to_string()),
    )?;
    Ok(())
}

/// Server-side apply of a file of the repository.
pub fn apply_file(s: &ApiServer, file: &str) -> Result<()> {
    kubectl(
        s,
        &[
            "apply",
            "--server-side",
            "-f",
            &repo(file).display().to_string(),
        ],
        None,
    )?;
    Ok(())
}

/// Lets Lifeline's management identity read exactly these kubeconfig Secrets: the
/// `lifeline-kubeconfigs` Role of `deploy/rbac/management-cluster.yaml` names the
/// Secrets it may read, and an operator lists their own there.
pub fn allow_kubeconfig_secrets(s: &ApiServer, names: &[String]) -> Result<()> {
    let patch = json!([{"op": "replace", "path": "/rules/0/resourceNames", "value": names}]);
    kubectl(
        s,
        &[
            "-n",
            "lifeline-system",
            "patch",
            "role",
            "lifeline-kubeconfigs",
            "--type=json",
            "-p",
            &patch.to_string(),
        ],
        None,
    )?;
    Ok(())
}

/// Lifeline's CRDs, applied and Established.
pub fn install_crds(s: &ApiServer) -> Result<()> {
    for crd in ["failoverpolicies", "memberclusters"] {
        apply_file(s, &format!("crds/{crd}.lifeline.dev.yaml"))?;
    }
    kubectl(
        s,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/failoverpolicies.lifeline.dev",
            "crd/memberclusters.lifeline.dev",
        ],
        None,
    )?;
    Ok(())
}

/// A LoadBalancer Service `ns/name` labelled for Lifeline, answering on `addresses`.
pub fn load_balancer_service(
    s: &ApiServer,
    ns: &str,
    name: &str,
    port: u16,
    addresses: &[IpAddr],
) -> Result<()> {
    apply(
        s,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": ns, "name": name, "labels": {"lifeline.dev/global": "true"}},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": port}]}
        }),
    )?;
    set_load_balancer(s, ns, name, addresses)
}

/// Writes the Service's `status.loadBalancer.ingress` (a real server refuses loopback
/// addresses in EndpointSlices, but not here).
pub fn set_load_balancer(s: &ApiServer, ns: &str, name: &str, addresses: &[IpAddr]) -> Result<()> {
    let ingress: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"ip": a.to_string()}))
        .collect();
    let status = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    kubectl(
        s,
        &[
            "-n",
            ns,
            "patch",
            "service",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    )?;
    Ok(())
}
