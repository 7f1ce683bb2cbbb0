//! The Kubernetes API emulator, checked with independent clients over real loopback
//! sockets: kubectl (when installed), kube-rs and its runtime watcher over HTTPS, and raw
//! HTTP/1.1 for fault injection, counters and bad input.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Service;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt as _, watcher};
use lifeline_tests::kube::{Emulator, EmulatorConfig, Fault, FaultRule, Verb};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

const KUBECTL: &str = "/usr/bin/kubectl";
const STEP: Duration = Duration::from_secs(20);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// === helpers ===

/// kubectl pointed at one emulator, with its own discovery cache.
struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Kubectl {
    fn new(emu: &Emulator) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        emu.write_kubeconfig(&kubeconfig)?;
        Ok(Self {
            kubeconfig,
            cache: tempfile::tempdir()?,
            _dir: dir,
        })
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.cache.path())
            .arg("--request-timeout=10s")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl; returns stdout, failing with stderr when it exits non-zero.
    async fn run(&self, args: &[&str]) -> Result<String> {
        let (ok, stdout, stderr) = self.output(args).await?;
        ensure!(ok, "kubectl {args:?} failed: {stderr}");
        Ok(stdout)
    }

    async fn output(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = timeout(STEP, self.command(args).output())
            .await
            .with_context(|| format!("kubectl {args:?} timed out"))??;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

fn kubectl_available() -> bool {
    let present = Path::new(KUBECTL).exists();
    if !present {
        lifeline_testkit::skipped(format_args!(
            "{KUBECTL} is not installed; the kubectl checks of the emulator did not run"
        ));
    }
    present
}

/// A raw HTTP/1.1 exchange: status, lower-cased header block, body.
struct Raw {
    status: u16,
    headers: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn raw(
    emu: &Emulator,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Raw> {
    let mut stream = TcpStream::connect(emu.addr()).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        emu.addr()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no header terminator")?;
    let status = head.split(' ').nth(1).context("no status")?.parse()?;
    Ok(Raw {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}

async fn get(emu: &Emulator, path: &str, agent: &str) -> Result<Raw> {
    timeout(STEP, raw(emu, "GET", path, &[("User-Agent", agent)], b"")).await?
}

async fn send_json(
    emu: &Emulator,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Raw> {
    timeout(
        STEP,
        raw(
            emu,
            method,
            path,
            &[("Content-Type", content_type), ("User-Agent", "test")],
            body,
        ),
    )
    .await?
}

fn service(name: &str, app: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"ports": [{"port": 80}]},
    }))
    .expect("a valid Service")
}

fn names(list: &[Service]) -> Vec<String> {
    list.iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect()
}

// === kubectl ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_our_crds_and_examples_then_gets_patches_watches_and_deletes_them()
-> Result<()> {
    if !kubectl_available() {
        return Ok(());
    }
    let emu = Emulator::start(EmulatorConfig::https()).await?;
    let k = Kubectl::new(&emu)?;
    let root = repo_root();
    let path = |p: &str| root.join(p).display().to_string();

    let out = k.run(&["apply", "-f", &path("crds")]).await?;
    ensure!(
        out.contains("failoverpolicies.lifeline.dev created"),
        "{out}"
    );
    ensure!(out.contains("memberclusters.lifeline.dev created"), "{out}");
    let out = k.run(&["apply", "-f", &path("crds")]).await?;
    ensure!(
        out.contains("failoverpolicies.lifeline.dev unchanged"),
        "{out}"
    );
    for ns in ["shop", "web"] {
        let out = k.run(&["create", "namespace", ns]).await?;
        ensure!(out.contains(&format!("namespace/{ns} created")), "{out}");
    }
    let out = k
        .run(&[
            "apply",
            "-f",
            &path("deploy/examples/clusters.yaml"),
            "-f",
            &path("deploy/examples/policies.yaml"),
        ])
        .await?;
    ensure!(
        out.contains("failoverpolicy.lifeline.dev/checkout created"),
        "{out}"
    );
    // kubectl leaves field validation to the server, which rejects unknown fields.
    let (ok, _, stderr) = k
        .output(&[
            "apply",
            "-f",
            &path("deploy/examples/invalid/unknown-field.yaml"),
        ])
        .await?;
    ensure!(
        !ok && stderr.contains(r#"strict decoding error: unknown field "spec.helthCheck""#),
        "{stderr}"
    );

    // Schema defaults are filled in, as the real server does for custom resources.
    let out = k
        .run(&[
            "get",
            "fp",
            "search",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.failback.rampSteps}",
        ])
        .await?;
    ensure!(out == "4", "defaulted rampSteps: {out:?}");

    // Server-side printing from the CRD's printer columns; kubectl adds NAMESPACE.
    let out = k.run(&["get", "fp", "-A"]).await?;
    let header = out.lines().next().unwrap_or_default();
    for col in ["NAMESPACE", "NAME", "HOSTNAME", "STRATEGY", "AGE"] {
        ensure!(header.contains(col), "missing column {col}: {out}");
    }
    for row in [
        "checkout.global.example.com",
        "search",
        "assets",
        "api.global.example.com",
        "RoundRobin",
    ] {
        ensure!(out.contains(row), "missing {row}: {out}");
    }
    let out = k.run(&["get", "mc"]).await?;
    for row in ["eu-west-1", "us-east-1", "ap-south-1", "REGION"] {
        ensure!(out.contains(row), "missing {row}: {out}");
    }

    // Merge patch bumps the generation; re-applying the same file changes nothing.
    k.run(&[
        "patch",
        "fp",
        "checkout",
        "-n",
        "shop",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"ttl":45}}"#,
    ])
    .await?;
    let out = k
        .run(&[
            "get",
            "fp",
            "checkout",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.ttl} {.metadata.generation}",
        ])
        .await?;
    ensure!(out == "45 2", "after patch: {out:?}");
    // Re-applying: kubectl sends list fields again (the server defaulted their items),
    // but a patch that changes nothing leaves the resourceVersion alone.
    let rv_of_search = || {
        k.run(&[
            "get",
            "fp",
            "search",
            "-n",
            "shop",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let before = rv_of_search().await?;
    let out = k
        .run(&["apply", "-f", &path("deploy/examples/policies.yaml")])
        .await?;
    ensure!(out.contains("checkout configured"), "{out}");
    let after = rv_of_search().await?;
    ensure!(
        before == after,
        "a no-op re-apply changed the resourceVersion: {before} -> {after}"
    );

    // A status patch goes through the subresource and leaves the generation alone.
    k.run(&[
        "patch",
        "fp",
        "search",
        "-n",
        "shop",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"answerSummary":"192.0.2.1"}}"#,
    ])
    .await?;
    let out = k
        .run(&[
            "get",
            "fp",
            "search",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.answerSummary} {.metadata.generation}",
        ])
        .await?;
    ensure!(out == "192.0.2.1 1", "after status patch: {out:?}");

    // `get -w` prints a line when a watched object changes.
    let mut watch = k
        .command(&["get", "fp", "-n", "web", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().context("stdout")?).lines();
    let first = timeout(STEP, lines.next_line())
        .await??
        .context("watch printed nothing")?;
    ensure!(first.contains("NAME"), "first watch line: {first}");
    let mut initial = 0;
    while initial < 2 {
        timeout(STEP, lines.next_line())
            .await??
            .context("watch ended early")?;
        initial += 1;
    }
    k.run(&[
        "patch",
        "fp",
        "assets",
        "-n",
        "web",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"strategy":"Weighted"}}"#,
    ])
    .await?;
    let changed = timeout(STEP, lines.next_line())
        .await??
        .context("watch ended")?;
    ensure!(
        changed.contains("assets") && changed.contains("Weighted"),
        "watch line: {changed}"
    );
    watch.kill().await?;

    // Server-side apply creates, then merges into, an object.
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("mc.yaml");
    let doc = |region: &str| {
        format!(
            "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata:\n  name: sa-east-1\n  labels: {{tier: edge}}\n\
             spec:\n  region: {region}\n  addressSource: Static\n  addresses: [\"192.0.2.50\"]\n"
        )
    };
    std::fs::write(&manifest, doc("sa-east"))?;
    let m = manifest.display().to_string();
    let out = k.run(&["apply", "--server-side", "-f", &m]).await?;
    ensure!(out.contains("sa-east-1 serverside-applied"), "{out}");
    std::fs::write(&manifest, doc("sa-east-2"))?;
    k.run(&["apply", "--server-side", "-f", &m]).await?;
    let out = k
        .run(&[
            "get",
            "mc",
            "-l",
            "tier=edge",
            "-o",
            "jsonpath={.items[*].spec.region}",
        ])
        .await?;
    ensure!(out == "sa-east-2", "after second apply: {out:?}");

    // Delete, then the object is gone with a NotFound Status.
    let out = k.run(&["delete", "fp", "assets", "-n", "web"]).await?;
    ensure!(out.contains("\"assets\" deleted"), "{out}");
    let (ok, _, stderr) = k.output(&["get", "fp", "assets", "-n", "web"]).await?;
    ensure!(
        !ok && stderr.contains("NotFound")
            && stderr.contains("failoverpolicies.lifeline.dev \"assets\" not found"),
        "{stderr}"
    );
    let out = k.run(&["get", "fp", "-A", "-o", "name"]).await?;
    ensure!(out.lines().count() == 3, "{out}");

    // kubectl identifies itself; the counters saw it.
    let counts = emu.counts();
    ensure!(
        counts.count(Some(Verb::Patch), Some("failoverpolicies"), Some("kubectl")) >= 3,
        "{counts:?}"
    );
    ensure!(
        counts.count(Some(Verb::Watch), Some("failoverpolicies"), Some("kubectl")) == 1,
        "{counts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_is_refused_the_invalid_examples_that_the_crd_schema_catches() -> Result<()> {
    if !kubectl_available() {
        return Ok(());
    }
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    emu.install_lifeline_crds()?;
    emu.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")?;
    let k = Kubectl::new(&emu)?;
    // CEL rules and cross-object checks are `lifeline validate`'s job; these need only
    // the OpenAPI schema.
    let cases = [
        (
            "duration-in-words",
            "spec.healthCheck.interval: Invalid value: \"5 minutes\"",
        ),
        (
            "empty-targets",
            "spec.targets in body should have at least 1 items",
        ),
        (
            "healthy-threshold-zero",
            "spec.healthCheck.healthyThreshold in body should be greater than or equal to 1",
        ),
        (
            "negative-duration",
            "spec.healthCheck.timeout: Invalid value: \"-1s\"",
        ),
        (
            "ttl-too-large",
            "spec.ttl in body should be less than or equal to 86400",
        ),
        (
            "unknown-strategy",
            "spec.strategy: Unsupported value: \"Fastest\"",
        ),
        (
            "weight-out-of-range",
            "spec.targets[1].weight in body should be less than or equal to 1000",
        ),
        (
            "wrong-type-weight",
            "spec.targets[0].weight in body must be of type integer",
        ),
        (
            "unknown-field",
            "strict decoding error: unknown field \"spec.helthCheck\"",
        ),
    ];
    for (name, expected) in cases {
        let file = repo_root().join(format!("deploy/examples/invalid/{name}.yaml"));
        let (ok, _, stderr) = k
            .output(&["apply", "-f", &file.display().to_string()])
            .await?;
        ensure!(!ok && stderr.contains(expected), "{name}: {stderr}");
    }
    let out = k.run(&["get", "fp", "-A", "-o", "name"]).await?;
    ensure!(out.trim().is_empty(), "nothing invalid was stored: {out}");
    Ok(())
}

// === kube-rs over HTTPS ===

#[tokio::test]
async fn kube_rs_lists_and_watches_services_by_label_over_https() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::https()).await?;
    ensure!(emu.url().starts_with("https://127."), "{}", emu.url());
    let client = emu.client().await?;
    let api: Api<Service> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &service("web", "web"))
        .await?;
    api.create(&PostParams::default(), &service("db", "db"))
        .await?;

    let web = api.list(&ListParams::default().labels("app=web")).await?;
    ensure!(names(&web.items) == ["web"], "{:?}", names(&web.items));
    let either = api
        .list(&ListParams::default().labels("app in (web,db)"))
        .await?;
    ensure!(names(&either.items) == ["db", "web"]);
    let rv = web
        .metadata
        .resource_version
        .context("list resourceVersion")?;

    let mut stream = api
        .watch(&WatchParams::default().labels("app=web").timeout(30), &rv)
        .await?
        .boxed();
    // Entering and leaving the selection arrive as ADDED and DELETED.
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await?;
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "old"}}})),
    )
    .await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match timeout(STEP, stream.try_next()).await?? {
            Some(WatchEvent::Added(s)) => {
                seen.push(format!("ADDED {}", s.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Deleted(s)) => {
                seen.push(format!("DELETED {}", s.metadata.name.unwrap_or_default()))
            }
            Some(other) => bail!("unexpected event {other:?}"),
            None => bail!("watch ended"),
        }
    }
    ensure!(seen == ["ADDED db", "DELETED web"], "{seen:?}");

    // A stale resourceVersion conflicts.
    let mut stale = api.get("db").await?;
    api.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ports": [{"port": 81}]}})),
    )
    .await?;
    stale.spec.as_mut().context("spec")?.ports = None;
    match api.replace("db", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict" => {}
        other => bail!("expected 409 Conflict, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn kube_runtime_watcher_sees_adds_modifies_and_deletes() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::https()).await?;
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    // Bounded: the initial list of an empty namespace is Init then InitDone.
    loop {
        match timeout(STEP, events.try_next())
            .await??
            .context("watcher ended")?
        {
            watcher::Event::InitDone => break,
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    api.create(&PostParams::default(), &service("checkout", "shop"))
        .await?;
    api.patch(
        "checkout",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await?;
    api.delete("checkout", &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match timeout(STEP, events.try_next())
            .await??
            .context("watcher ended")?
        {
            watcher::Event::Apply(s) => {
                let v = s
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .get("v")
                    .cloned()
                    .unwrap_or_default();
                seen.push(format!("apply v={v}"));
            }
            watcher::Event::Delete(s) => {
                seen.push(format!("delete {}", s.metadata.name.unwrap_or_default()))
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(
        seen == ["apply v=", "apply v=2", "delete checkout"],
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_converges_on_the_stored_state_under_concurrent_writes() -> Result<()> {
    let emu = std::sync::Arc::new(Emulator::start(EmulatorConfig::http()).await?);
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    for n in 0..4 {
        emu.create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{n}"), "namespace": "default"}, "spec": {}}))?;
    }
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    // Writers start while the watcher is still listing, to race its list and watch.
    let writers: Vec<_> = (0..4)
        .map(|n| {
            let emu = emu.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let patch = json!({"metadata": {"labels": {"i": i.to_string()}}});
                    emu.merge_patch(
                        "v1",
                        "Service",
                        Some("default"),
                        &format!("s{n}"),
                        &patch,
                        false,
                    )?;
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let mut seen = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + STEP;
    // Bounded by the deadline: stop once every object shows its last write.
    loop {
        let done = seen.len() == 4 && seen.values().all(|v: &String| v == "49");
        if done {
            break;
        }
        let next = tokio::time::timeout_at(deadline, events.try_next())
            .await
            .context("watcher did not converge")??;
        match next.context("watcher ended")? {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                let label = s
                    .metadata
                    .labels
                    .unwrap_or_default()
                    .get("i")
                    .cloned()
                    .unwrap_or_default();
                seen.insert(s.metadata.name.unwrap_or_default(), label);
            }
            _ => {}
        }
    }
    for w in writers {
        w.await??;
    }
    let listed = api.list(&ListParams::default()).await?;
    ensure!(listed.items.len() == 4);
    Ok(())
}

#[tokio::test]
async fn a_watch_resumed_after_the_history_is_trimmed_gets_410_and_the_watcher_relists()
-> Result<()> {
    let emu = Emulator::start(EmulatorConfig::https()).await?;
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    api.create(&PostParams::default(), &service("first", "a"))
        .await?;
    let mut events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut inits = 0;
    let mut gone = 0;
    let mut relisted = Vec::new();
    // Phase 1: the first list.
    loop {
        match timeout(STEP, events.next())
            .await?
            .context("watcher ended")?
        {
            Ok(watcher::Event::Init) => inits += 1,
            Ok(watcher::Event::InitDone) => break,
            Ok(_) => {}
            Err(e) => bail!("unexpected error {e}"),
        }
    }
    // While the server is unreachable, changes happen and the history is compacted.
    emu.outage().await;
    emu.create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "second", "namespace": "default"}, "spec": {}}))?;
    emu.compact();
    let lists_before = emu.counts().count(Some(Verb::List), Some("services"), None);
    emu.restore().await?;
    // Phase 2: the watcher re-watches from its old resourceVersion, gets 410, relists.
    loop {
        match timeout(STEP, events.next())
            .await?
            .context("watcher ended")?
        {
            Ok(watcher::Event::Init) => inits += 1,
            Ok(watcher::Event::InitApply(s)) => relisted.push(s.metadata.name.unwrap_or_default()),
            Ok(watcher::Event::InitDone) if inits >= 2 => break,
            Ok(_) => {}
            Err(watcher::Error::WatchError(status)) if status.code == 410 => gone += 1,
            Err(_) => {} // connection errors while the watcher backs off
        }
    }
    ensure!(gone == 1, "expected one 410, saw {gone}");
    relisted.sort();
    ensure!(relisted == ["first", "second"], "{relisted:?}");
    ensure!(emu.counts().count(Some(Verb::List), Some("services"), None) > lists_before);
    Ok(())
}

#[tokio::test]
async fn custom_resources_keep_status_behind_the_subresource_and_bump_generation_on_spec()
-> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    emu.install_lifeline_crds()?;
    let gvk = GroupVersionKind::gvk("lifeline.dev", "v1alpha1", "MemberCluster");
    let api: Api<DynamicObject> = Api::all_with(emu.client().await?, &ApiResource::from_gvk(&gvk));
    let mut mc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
        "metadata": {"name": "eu-west-1"},
        "spec": {"region": "eu-west", "addressSource": "Static", "addresses": ["192.0.2.1"]},
        "status": {"controlPlane": "Reachable"},
    }))?;
    let created = api.create(&PostParams::default(), &mc).await?;
    ensure!(
        created.data.get("status").is_none(),
        "create drops status: {:?}",
        created.data
    );
    ensure!(created.metadata.generation == Some(1) && created.metadata.uid.is_some());

    // Status through the main resource is ignored...
    mc.metadata.resource_version = created.metadata.resource_version.clone();
    let replaced = api
        .replace("eu-west-1", &PostParams::default(), &mc)
        .await?;
    ensure!(replaced.data.get("status").is_none());
    // ...and through /status it lands without touching spec or generation.
    let status = Patch::Merge(
        json!({"status": {"controlPlane": "Unreachable"}, "spec": {"region": "ignored"}}),
    );
    let patched = api
        .patch_status("eu-west-1", &PatchParams::default(), &status)
        .await?;
    ensure!(patched.data["status"]["controlPlane"] == "Unreachable");
    ensure!(patched.data["spec"]["region"] == "eu-west" && patched.metadata.generation == Some(1));
    let spec = Patch::Merge(json!({"spec": {"region": "eu-central"}}));
    let patched = api
        .patch("eu-west-1", &PatchParams::default(), &spec)
        .await?;
    ensure!(
        patched.metadata.generation == Some(2)
            && patched.data["status"]["controlPlane"] == "Unreachable"
    );
    // A patch that changes nothing does not bump the resourceVersion.
    let again = api
        .patch("eu-west-1", &PatchParams::default(), &spec)
        .await?;
    ensure!(again.metadata.resource_version == patched.metadata.resource_version);
    // Server-side apply and JSON patch.
    let applied = api
        .patch(
            "eu-west-1",
            &PatchParams::apply("test"),
            &Patch::Apply(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
                "metadata": {"name": "eu-west-1"}, "spec": {"zone": "eu-central-1a"},
            })),
        )
        .await?;
    ensure!(
        applied.data["spec"]["zone"] == "eu-central-1a"
            && applied.data["spec"]["region"] == "eu-central"
    );
    // JSON patch, over raw HTTP (kube's typed JSON patch needs an extra feature).
    let ops = br#"[{"op":"test","path":"/spec/zone","value":"eu-central-1a"},{"op":"replace","path":"/spec/region","value":"x"}]"#;
    let r = send_json(
        &emu,
        "PATCH",
        "/apis/lifeline.dev/v1alpha1/memberclusters/eu-west-1",
        "application/json-patch+json",
        ops,
    )
    .await?;
    ensure!(
        r.status == 200 && r.json()["spec"]["region"] == "x",
        "{}",
        r.body
    );
    let failing = br#"[{"op":"test","path":"/spec/zone","value":"nope"}]"#;
    let r = send_json(
        &emu,
        "PATCH",
        "/apis/lifeline.dev/v1alpha1/memberclusters/eu-west-1",
        "application/json-patch+json",
        failing,
    )
    .await?;
    ensure!(r.status == 422, "{}", r.body);
    Ok(())
}

#[tokio::test]
async fn unknown_fields_of_custom_resources_fail_strict_validation_and_are_pruned_otherwise()
-> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    emu.install_lifeline_crds()?;
    emu.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")?;
    let text =
        std::fs::read_to_string(repo_root().join("deploy/examples/invalid/unknown-field.yaml"))?;
    let doc: Value = serde_saphyr::from_str(&text)?;
    let body = serde_json::to_vec(&doc)?;
    let path = "/apis/lifeline.dev/v1alpha1/namespaces/shop/failoverpolicies";
    let strict = send_json(
        &emu,
        "POST",
        &format!("{path}?fieldValidation=Strict"),
        "application/json",
        &body,
    )
    .await?;
    ensure!(
        strict.status == 400 && strict.body.contains(r#"unknown field \"spec.helthCheck\""#),
        "{}",
        strict.body
    );
    let warn = send_json(
        &emu,
        "POST",
        &format!("{path}?fieldValidation=Warn"),
        "application/json",
        &body,
    )
    .await?;
    ensure!(warn.status == 201, "{}", warn.body);
    // Header names and values are lower-cased by the helper.
    ensure!(
        warn.headers
            .contains(r#"warning: 299 - "unknown field \"spec.helthcheck\"""#),
        "{}",
        warn.headers
    );
    let stored = warn.json();
    ensure!(
        stored["spec"].get("helthCheck").is_none()
            && stored["spec"]["hostname"] == "a.global.example.com"
    );
    Ok(())
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    for n in 0..5 {
        api.create(&PostParams::default(), &service(&format!("s{n}"), "p"))
            .await?;
    }
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    // Bounded: five items in pages of two.
    for _ in 0..10 {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await?;
        pages += 1;
        all.extend(names(&page.items));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    ensure!(
        pages == 3 && all == ["s0", "s1", "s2", "s3", "s4"],
        "{pages} pages: {all:?}"
    );
    Ok(())
}

// === faults ===

#[tokio::test]
async fn too_many_requests_carries_retry_after_and_errors_are_status_objects() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    emu.inject(
        FaultRule::new(Fault::TooManyRequests {
            retry_after_seconds: 7,
        })
        .verbs([Verb::List])
        .times(1),
    );
    let r = get(&emu, "/api/v1/namespaces/default/services", "test").await?;
    ensure!(
        r.status == 429 && r.headers.contains("retry-after: 7"),
        "{} {}",
        r.status,
        r.headers
    );
    ensure!(r.json()["kind"] == "Status" && r.json()["reason"] == "TooManyRequests");
    let r = get(&emu, "/api/v1/namespaces/default/services", "test").await?;
    ensure!(r.status == 200, "the rule was for one request only");

    let id = emu.inject(FaultRule::new(Fault::Error { code: 503 }).resources(["services"]));
    let r = get(&emu, "/api/v1/namespaces/default/services", "test").await?;
    ensure!(
        r.status == 503 && r.json()["reason"] == "ServiceUnavailable",
        "{}",
        r.body
    );
    ensure!(
        get(&emu, "/api/v1/namespaces", "test").await?.status == 200,
        "filtered to services"
    );
    emu.clear_fault(id);
    emu.inject(FaultRule::new(Fault::Error { code: 500 }));
    ensure!(get(&emu, "/api/v1/namespaces", "test").await?.json()["reason"] == "InternalError");
    emu.clear_faults();

    // kube-rs (5.x) retries 429 by itself, waiting out Retry-After.
    emu.reset_counts();
    emu.inject(
        FaultRule::new(Fault::TooManyRequests {
            retry_after_seconds: 1,
        })
        .verbs([Verb::List])
        .times(2),
    );
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    let started = tokio::time::Instant::now();
    timeout(STEP, api.list(&ListParams::default())).await??;
    ensure!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After was not waited out"
    );
    ensure!(emu.counts().count(Some(Verb::List), Some("services"), None) == 3);

    emu.inject(FaultRule::new(Fault::Latency { millis: 300 }));
    let started = tokio::time::Instant::now();
    ensure!(get(&emu, "/version", "test").await?.status == 200);
    ensure!(started.elapsed() >= Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn an_outage_refuses_connections_and_restore_reopens_the_same_port() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    let addr = emu.addr();
    ensure!(get(&emu, "/version", "test").await?.status == 200);
    // An open watch is cut too.
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    let mut stream = api.watch(&WatchParams::default(), "0").await?.boxed();
    emu.outage().await;
    ensure!(emu.is_down());
    match TcpStream::connect(addr).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!("expected connection refused, got {other:?}"),
    }
    let ended = timeout(STEP, async {
        // Bounded: the stream ends or errors once its connection is closed.
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    ensure!(ended.is_ok(), "the watch stream outlived the outage");
    emu.restore().await?;
    ensure!(emu.addr() == addr && !emu.is_down());
    ensure!(get(&emu, "/version", "test").await?.status == 200);
    Ok(())
}

#[tokio::test]
async fn a_hanging_request_outlasts_a_short_client_timeout_and_is_served_once_cleared() -> Result<()>
{
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    let id = emu.inject(
        FaultRule::new(Fault::Hang)
            .verbs([Verb::List])
            .resources(["services"]),
    );
    let hung = timeout(
        Duration::from_millis(500),
        raw(&emu, "GET", "/api/v1/services", &[], b""),
    )
    .await;
    ensure!(hung.is_err(), "the hanging request completed");
    // Other requests are unaffected.
    ensure!(get(&emu, "/api/v1/namespaces", "test").await?.status == 200);
    let emu = std::sync::Arc::new(emu);
    let waiting = tokio::spawn({
        let emu = emu.clone();
        async move { raw(&emu, "GET", "/api/v1/services", &[], b"").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(!waiting.is_finished());
    emu.clear_fault(id);
    let r = timeout(STEP, waiting).await???;
    ensure!(
        r.status == 200 && r.json()["kind"] == "ServiceList",
        "{}",
        r.body
    );
    Ok(())
}

#[tokio::test]
async fn dropping_watches_ends_a_kube_rs_watch_stream() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::https()).await?;
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    let mut stream = api.watch(&WatchParams::default(), "0").await?.boxed();
    api.create(&PostParams::default(), &service("x", "y"))
        .await?;
    match timeout(STEP, stream.try_next()).await?? {
        Some(WatchEvent::Added(_)) => {}
        other => bail!("expected ADDED, got {other:?}"),
    }
    // Wait (bounded) until the server counts the watch as open.
    for _ in 0..100 {
        if emu.open_watches() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(emu.open_watches() == 1);
    emu.drop_watches();
    ensure!(
        timeout(STEP, stream.try_next()).await??.is_none(),
        "stream should end"
    );
    // The server keeps serving; new watches work.
    ensure!(api.list(&ListParams::default()).await?.items.len() == 1);
    Ok(())
}

#[tokio::test]
async fn dropped_connections_cut_a_watch_and_the_client_reconnects() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::https()).await?;
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    let mut stream = api.watch(&WatchParams::default(), "0").await?.boxed();
    emu.drop_connections();
    // Bounded: the stream ends (or errors) once the connection is cut.
    let ended = timeout(STEP, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    ensure!(ended.is_ok(), "the watch survived its connection");
    ensure!(!emu.is_down(), "the port stays open");
    api.create(&PostParams::default(), &service("after", "x"))
        .await?;
    ensure!(names(&api.list(&ListParams::default()).await?.items) == ["after"]);
    Ok(())
}

#[tokio::test]
async fn watches_from_a_compacted_resource_version_get_a_410_status_event() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http().history(2)).await?;
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    let old = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("rv")?;
    for n in 0..3 {
        api.create(&PostParams::default(), &service(&format!("s{n}"), "a"))
            .await?;
    }
    let mut stream = api.watch(&WatchParams::default(), &old).await?.boxed();
    match timeout(STEP, stream.try_next()).await?? {
        Some(WatchEvent::Error(s)) if s.code == 410 => {}
        other => bail!("expected a 410 ERROR event, got {other:?}"),
    }
    // A list at an exact compacted resourceVersion is 410 too.
    let r = get(
        &emu,
        &format!("/api/v1/services?resourceVersion={old}&resourceVersionMatch=Exact"),
        "t",
    )
    .await?;
    ensure!(r.status == 410 && r.json()["code"] == 410, "{}", r.body);
    // Bookmarks carry the latest resourceVersion.
    let emu = Emulator::start(EmulatorConfig::http().bookmark_interval(Duration::from_millis(100)))
        .await?;
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    let rv = api
        .list(&ListParams::default())
        .await?
        .metadata
        .resource_version
        .context("rv")?;
    let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
    match timeout(STEP, stream.try_next()).await?? {
        Some(WatchEvent::Bookmark(b)) => ensure!(b.metadata.resource_version == rv),
        other => bail!("expected a BOOKMARK, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn requests_are_counted_by_verb_resource_and_user_agent() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    let svc = br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{}}"#;
    timeout(
        STEP,
        raw(
            &emu,
            "POST",
            "/api/v1/namespaces/default/services",
            &[
                ("User-Agent", "counter/1"),
                ("Content-Type", "application/json"),
            ],
            svc,
        ),
    )
    .await??;
    for _ in 0..2 {
        get(&emu, "/api/v1/namespaces/default/services", "counter/1").await?;
    }
    get(&emu, "/api/v1/namespaces/default/services/a", "other/2").await?;
    get(
        &emu,
        "/apis/discovery.k8s.io/v1/endpointslices",
        "counter/1",
    )
    .await?;
    get(&emu, "/api", "counter/1").await?;
    let c = emu.counts();
    ensure!(
        c.count(Some(Verb::Create), Some("services"), Some("counter")) == 1,
        "{c:?}"
    );
    ensure!(
        c.count(Some(Verb::List), Some("services"), Some("counter")) == 2,
        "{c:?}"
    );
    ensure!(c.count(Some(Verb::Get), Some("services"), None) == 1);
    ensure!(c.count(None, None, Some("other")) == 1);
    ensure!(
        c.count(
            Some(Verb::List),
            Some("endpointslices.discovery.k8s.io"),
            None
        ) == 1
    );
    ensure!(c.count(Some(Verb::NonResource), Some("/api"), None) == 1);
    ensure!(c.total() == 6);
    // The control endpoint reports the same, and is not counted itself.
    let r = get(&emu, "/_emulator/requests", "x").await?;
    ensure!(
        r.json()["total"] == 6 && r.body.contains("counter/1"),
        "{}",
        r.body
    );
    emu.reset_counts();
    ensure!(emu.counts().total() == 0);
    Ok(())
}

#[tokio::test]
async fn the_control_endpoint_injects_and_clears_faults() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    let rule = br#"{"fault":{"type":"error","code":503},"filter":{"verbs":["get"]}}"#;
    let r = send_json(&emu, "POST", "/_emulator/faults", "application/json", rule).await?;
    ensure!(r.status == 200 && r.json()["id"].is_u64(), "{}", r.body);
    ensure!(get(&emu, "/api/v1/namespaces/default", "t").await?.status == 503);
    ensure!(get(&emu, "/api/v1/namespaces", "t").await?.status == 200);
    ensure!(
        send_json(&emu, "DELETE", "/_emulator/faults", "application/json", b"")
            .await?
            .status
            == 200
    );
    ensure!(get(&emu, "/api/v1/namespaces/default", "t").await?.status == 200);
    let bad = send_json(
        &emu,
        "POST",
        "/_emulator/faults",
        "application/json",
        b"{nope",
    )
    .await?;
    ensure!(bad.status == 400, "{}", bad.body);
    Ok(())
}

#[tokio::test]
async fn random_requests_never_break_the_server() -> Result<()> {
    use rand::prelude::*;
    let emu = Emulator::start(EmulatorConfig {
        max_body_bytes: 64 * 1024,
        ..EmulatorConfig::http()
    })
    .await?;
    emu.install_lifeline_crds()?;
    let mut rng = StdRng::seed_from_u64(7);
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let paths = [
        "/api/v1/namespaces/default/services",
        "/api/v1/namespaces/default/services/a",
        "/api/v1/namespaces/default/services/a/status",
        "/api/v1/namespaces/default/services/a/bogus",
        "/api/v1/namespaces",
        "/api/v1/namespaces/default",
        "/api/v1/watch/namespaces/default/services",
        "/apis/lifeline.dev/v1alpha1/namespaces/default/failoverpolicies",
        "/apis/lifeline.dev/v1alpha1/memberclusters/m",
        "/apis/lifeline.dev/v1alpha1/namespaces/x/memberclusters",
        "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=%28%28",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "/apis/nope/v9/x/y/z/w",
        "/api/v1/services?limit=abc&continue=%%%",
        "/../../etc/passwd",
        "/",
    ];
    let types = [
        "application/json",
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/apply-patch+yaml",
        "application/strategic-merge-patch+json",
        "application/vnd.kubernetes.protobuf",
        "",
    ];
    let bodies: [&[u8]; 8] = [
        b"",
        b"{",
        b"null",
        br#"{"metadata":{"name":"a"},"spec":{"ports":[{"port":80}]}}"#,
        br#"[{"op":"remove","path":"/"}]"#,
        b"a: [b, {c: d",
        b"k8s\0\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
        br#"{"apiVersion":"lifeline.dev/v1alpha1","kind":"MemberCluster","metadata":{"name":"m"},"spec":{"region":1}}"#,
    ];
    // Bounded: a fixed number of requests, each under a timeout.
    for i in 0..300 {
        let method = methods[rng.random_range(0..methods.len())];
        let mut path = paths[rng.random_range(0..paths.len())].to_owned();
        if path.contains("watch") {
            path.push_str("?timeoutSeconds=1");
        }
        let ct = types[rng.random_range(0..types.len())];
        let mut body = bodies[rng.random_range(0..bodies.len())].to_vec();
        if rng.random_bool(0.1) {
            body = (0..rng.random_range(1..512))
                .map(|_| rng.random())
                .collect();
        }
        let r = timeout(
            STEP,
            raw(&emu, method, &path, &[("Content-Type", ct)], &body),
        )
        .await
        .with_context(|| format!("request {i} ({method} {path}) timed out"))?
        .with_context(|| format!("request {i} ({method} {path}) got no answer"))?;
        ensure!(
            r.status < 500,
            "request {i}: {method} {path} [{ct}] -> {} {}",
            r.status,
            r.body
        );
    }
    ensure!(get(&emu, "/version", "t").await?.status == 200);
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_4xx_status_and_the_server_keeps_serving() -> Result<()> {
    let config = EmulatorConfig {
        max_body_bytes: 4096,
        ..EmulatorConfig::http()
    };
    let emu = Emulator::start(config).await?;
    let services = "/api/v1/namespaces/default/services";
    // Method, path, content type, body, expected code and reason.
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            services,
            "application/json",
            b"{not json".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            services,
            "application/json",
            b"[1,2]".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            services,
            "application/json",
            br#"{"kind":"Secret","metadata":{"name":"a"}}"#.to_vec(),
            400,
            "BadRequest",
        ),
        (
            "POST",
            services,
            "application/json",
            br#"{"metadata":{"name":"Bad_Name"}}"#.to_vec(),
            422,
            "Invalid",
        ),
        (
            "POST",
            services,
            "application/json",
            vec![b' '; 10_000],
            413,
            "RequestEntityTooLarge",
        ),
        (
            "POST",
            "/api/v1/namespaces/nope/services",
            "application/json",
            br#"{"metadata":{"name":"a"}}"#.to_vec(),
            404,
            "NotFound",
        ),
        (
            "POST",
            "/apis/example.com/v1/widgets",
            "application/json",
            b"{}".to_vec(),
            404,
            "NotFound",
        ),
        (
            "GET",
            "/api/v1/namespaces/default/services?labelSelector=a+in+(b",
            "",
            Vec::new(),
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/services/x",
            "application/apply-patch+yaml",
            b"a: [".to_vec(),
            400,
            "BadRequest",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/services/x",
            "text/plain",
            b"{}".to_vec(),
            415,
            "UnsupportedMediaType",
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/services/x",
            "application/json",
            br#"{"metadata":{"name":"x"}}"#.to_vec(),
            404,
            "NotFound",
        ),
        (
            "POST",
            "/api/v1/namespaces",
            "application/vnd.kubernetes.protobuf",
            b"garbage".to_vec(),
            415,
            "UnsupportedMediaType",
        ),
    ];
    for (method, path, ct, body, code, reason) in cases {
        let r = send_json(&emu, method, path, ct, &body).await?;
        ensure!(
            r.status == code,
            "{method} {path}: got {} {}",
            r.status,
            r.body
        );
        let status = r.json();
        ensure!(
            status["kind"] == "Status" && status["reason"] == reason && status["code"] == code,
            "{method} {path}: {}",
            r.body
        );
    }
    let r = get(&emu, "/openapi/v2", "t").await?;
    ensure!(r.status == 404);
    // A duplicate create conflicts, then everything still works.
    let svc = br#"{"metadata":{"name":"dup"},"spec":{}}"#;
    ensure!(
        send_json(&emu, "POST", services, "application/json", svc)
            .await?
            .status
            == 201
    );
    let again = send_json(&emu, "POST", services, "application/json", svc).await?;
    ensure!(
        again.status == 409 && again.json()["reason"] == "AlreadyExists",
        "{}",
        again.body
    );
    ensure!(get(&emu, "/version", "t").await?.json()["major"] == "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_manages_services_endpointslices_and_namespaces() -> Result<()> {
    if !kubectl_available() {
        return Ok(());
    }
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    let k = Kubectl::new(&emu)?;
    k.run(&["create", "namespace", "shop"]).await?;
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("svc.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Service\nmetadata: {name: checkout, namespace: shop, labels: {app: checkout}}\n\
         spec: {ports: [{port: 80, name: http}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: checkout-abc, namespace: shop, labels: {kubernetes.io/service-name: checkout}}\n\
         addressType: IPv4\nendpoints: [{addresses: [\"10.0.0.5\"], conditions: {ready: true}}]\n\
         ports: [{name: http, port: 8080}]\n",
    )?;
    let out = k
        .run(&["apply", "-f", &manifest.display().to_string()])
        .await?;
    ensure!(
        out.contains("service/checkout created")
            && out.contains("endpointslice.discovery.k8s.io/checkout-abc created"),
        "{out}"
    );
    let out = k
        .run(&["get", "svc", "-n", "shop", "-l", "app=checkout"])
        .await?;
    ensure!(out.contains("checkout"), "{out}");
    let out = k
        .run(&[
            "get",
            "svc",
            "checkout",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .await?;
    ensure!(
        out.starts_with("10.96."),
        "a ClusterIP is allocated: {out:?}"
    );
    let out = k
        .run(&[
            "get",
            "endpointslices",
            "-n",
            "shop",
            "-l",
            "kubernetes.io/service-name=checkout",
            "-o",
            "jsonpath={.items[0].endpoints[0].addresses[0]}",
        ])
        .await?;
    ensure!(out == "10.0.0.5", "{out:?}");
    k.run(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "shop",
        "--from-literal=token=abc",
    ])
    .await?;
    let out = k
        .run(&[
            "get",
            "secret",
            "creds",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.token}",
        ])
        .await?;
    ensure!(out == "YWJj", "secret data is base64: {out:?}");
    // Deleting the namespace takes its objects with it.
    k.run(&["delete", "namespace", "shop"]).await?;
    let (ok, _, stderr) = k.output(&["get", "svc", "checkout", "-n", "shop"]).await?;
    ensure!(!ok && stderr.contains("NotFound"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn the_examples_apply_through_the_library_and_a_streaming_list_watcher_sees_them()
-> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    emu.install_lifeline_crds()?;
    emu.apply_yaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n")?;
    let root = repo_root();
    for file in [
        "deploy/examples/clusters.yaml",
        "deploy/examples/policies.yaml",
    ] {
        emu.apply_yaml(&std::fs::read_to_string(root.join(file))?)?;
    }
    let gvk = GroupVersionKind::gvk("lifeline.dev", "v1alpha1", "FailoverPolicy");
    let api: Api<DynamicObject> = Api::all_with(emu.client().await?, &ApiResource::from_gvk(&gvk));
    // The streaming-list protocol: sendInitialEvents, then a bookmark ends the initial set.
    let mut events = watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match timeout(STEP, events.try_next())
            .await??
            .context("watcher ended")?
        {
            watcher::Event::Init => {}
            watcher::Event::InitApply(o) => initial.push(o.metadata.name.unwrap_or_default()),
            watcher::Event::InitDone => break,
            other => bail!("unexpected {other:?}"),
        }
    }
    initial.sort();
    ensure!(
        initial == ["api", "assets", "checkout", "search"],
        "{initial:?}"
    );
    ensure!(
        emu.counts().count(Some(Verb::List), None, None) == 0,
        "no list with streaming lists"
    );
    Ok(())
}

#[tokio::test]
async fn deletecollection_removes_only_selected_objects_and_a_timed_outage_ends_by_itself()
-> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    let api: Api<Service> = Api::namespaced(emu.client().await?, "default");
    for (n, app) in [("a", "x"), ("b", "x"), ("c", "y")] {
        api.create(&PostParams::default(), &service(n, app)).await?;
    }
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=x"),
    )
    .await?;
    ensure!(names(&api.list(&ListParams::default()).await?.items) == ["c"]);

    let r = send_json(
        &emu,
        "POST",
        "/_emulator/outage?seconds=3",
        "application/json",
        b"",
    )
    .await?;
    ensure!(r.status == 200, "{}", r.body);
    let mut saw_down = false;
    let mut back = false;
    // Bounded: poll for up to ten seconds.
    for _ in 0..200 {
        match TcpStream::connect(emu.addr()).await {
            Err(_) => saw_down = true,
            Ok(_) if saw_down => {
                back = true;
                break;
            }
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(saw_down && back, "down: {saw_down}, back: {back}");
    Ok(())
}

#[tokio::test]
async fn a_watch_ends_after_its_timeout_seconds() -> Result<()> {
    let emu = Emulator::start(EmulatorConfig::http()).await?;
    let started = tokio::time::Instant::now();
    let r = get(
        &emu,
        "/api/v1/namespaces/default/services?watch=true&timeoutSeconds=1",
        "t",
    )
    .await?;
    let took = started.elapsed();
    ensure!(r.status == 200, "{}", r.status);
    ensure!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    // Bounded: the watch task may finish a moment after the response ends.
    for _ in 0..100 {
        if emu.open_watches() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensure!(emu.open_watches() == 0);
    Ok(())
}
