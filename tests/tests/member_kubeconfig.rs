//! Member kubeconfigs (as held in a Secret or a file): a malformed one is rejected with a
//! message naming what is wrong; a good one reaches the emulator.

use anyhow::{Result, ensure};
use lifeline_controller::kubernetes::member::{kube_config_from_bytes, kube_config_from_path};
use lifeline_tests::kube::{Emulator, EmulatorConfig, install_crypto_provider};

fn kubeconfig(current: Option<&str>, contexts: &str, clusters: &str, users: &str) -> String {
    let current = current
        .map(|c| format!("current-context: {c}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\n{current}contexts:\n{contexts}clusters:\n{clusters}users:\n{users}"
    )
}

const CONTEXT: &str = "- name: member\n  context: {cluster: east, user: lifeline}\n";
const CLUSTER: &str = "- name: east\n  cluster: {server: \"http://127.0.0.1:6443\"}\n";
const USER: &str = "- name: lifeline\n  user: {token: abc}\n";

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn error_of(bytes: &[u8]) -> String {
    match kube_config_from_bytes(bytes).await {
        Ok(c) => format!("unexpectedly accepted: {}", c.cluster_url),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_malformed_kubeconfig_is_rejected_with_a_message_naming_the_problem() -> Result<()> {
    install_crypto_provider();
    let server = |url: &str| format!("- name: east\n  cluster: {{server: \"{url}\"}}\n");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", b"  \n".to_vec(), "empty document"),
        ("binary", vec![0xff, 0xfe, 0x00], "not UTF-8"),
        ("broken YAML", b"clusters: [unclosed\n".to_vec(), "not a kubeconfig"),
        ("wrong shape", b"clusters: 42\n".to_vec(), "not a kubeconfig"),
        (
            "no server",
            kubeconfig(Some("member"), CONTEXT, "- name: east\n  cluster: {}\n", USER).into_bytes(),
            "cluster \"east\" has no server URL",
        ),
        (
            "not http",
            kubeconfig(Some("member"), CONTEXT, &server("ftp://127.0.0.1"), USER).into_bytes(),
            "must be an http:// or https:// URL",
        ),
        (
            "not a URL",
            kubeconfig(Some("member"), CONTEXT, &server("http://[::1"), USER).into_bytes(),
            "is not a URL",
        ),
        (
            "unknown current-context",
            kubeconfig(Some("nope"), CONTEXT, CLUSTER, USER).into_bytes(),
            "current-context \"nope\" is not among the contexts",
        ),
        (
            "unknown cluster",
            kubeconfig(Some("member"), CONTEXT, "- name: west\n  cluster: {server: \"http://127.0.0.1:1\"}\n", USER)
                .into_bytes(),
            "refers to cluster \"east\", which is not defined",
        ),
        (
            "unknown user",
            kubeconfig(Some("member"), CONTEXT, CLUSTER, "- name: someone\n  user: {}\n").into_bytes(),
            "refers to user \"lifeline\", which is not defined",
        ),
        (
            "ambiguous context",
            kubeconfig(
                None,
                &format!("{CONTEXT}- name: other\n  context: {{cluster: east}}\n"),
                CLUSTER,
                USER,
            )
            .into_bytes(),
            "current-context is not set and there are 2 contexts",
        ),
        (
            "no contexts",
            b"apiVersion: v1\nkind: Config\nclusters: []\n".to_vec(),
            "no contexts defined",
        ),
        (
            "bad CA",
            kubeconfig(
                Some("member"),
                CONTEXT,
                "- name: east\n  cluster: {server: \"https://127.0.0.1:6443\", certificate-authority-data: \"bm90IGEgY2VydA==\"}\n",
                USER,
            )
            .into_bytes(),
            "holds no PEM certificate",
        ),
        (
            "garbage certificate",
            kubeconfig(
                Some("member"),
                CONTEXT,
                &format!(
                    "- name: east\n  cluster: {{server: \"https://127.0.0.1:6443\", certificate-authority-data: \"{}\"}}\n",
                    base64_of("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
                ),
                USER,
            )
            .into_bytes(),
            "TLS material",
        ),
    ];
    for (what, bytes, expected) in cases {
        let message = error_of(&bytes).await;
        println!("{what}: {message}");
        ensure!(
            message.starts_with("invalid kubeconfig: "),
            "{what}: {message}"
        );
        ensure!(
            message.contains(expected),
            "{what}: {message:?} should say {expected:?}"
        );
    }
    let missing = kube_config_from_path(std::path::Path::new("/nonexistent/kubeconfig.yaml"))
        .await
        .map(|_| ())
        .unwrap_err();
    println!("missing file: {missing}");
    ensure!(missing.to_string().contains("/nonexistent/kubeconfig.yaml"));
    Ok(())
}

#[tokio::test]
async fn a_good_kubeconfig_from_bytes_or_a_file_reaches_the_api_server() -> Result<()> {
    install_crypto_provider();
    for emu in [
        Emulator::start(EmulatorConfig::http()).await?,
        Emulator::start(EmulatorConfig::https()).await?,
    ] {
        let config = kube_config_from_bytes(emu.kubeconfig_yaml().as_bytes()).await?;
        ensure!(config.cluster_url.to_string().starts_with(&emu.url()));
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("kubeconfig");
        emu.write_kubeconfig(&path)?;
        let config = kube_config_from_path(&path).await?;
        let client = kube::Client::try_from(config)?;
        let version = client.apiserver_version().await?;
        println!(
            "{}: server version {}.{}",
            emu.url(),
            version.major,
            version.minor
        );
    }
    Ok(())
}
