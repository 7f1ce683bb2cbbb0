//! Member-cluster watchers against the Kubernetes API emulator over real loopback
//! sockets: API load with many unrelated objects, a total API blackout, a 429 storm, and
//! re-scoping. Intervals are real but short: the "30 s" gentle-probe interval and the
//! backoffs are configured down to 1–2 s here, and every bound is stated in those terms.
//! The measured request counts are printed (run with `--nocapture` to see them).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lifeline_controller::kubernetes::budget::{BudgetConfig, ControlPlane};
use lifeline_controller::kubernetes::member::{
    MemberHandle, MemberView, MemberWatcher, ServiceKey, WatchOptions, kube_config_from_bytes,
};
use lifeline_tests::kube::{Emulator, EmulatorConfig, Fault, FaultRule, Verb};
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

// === fixtures ===

fn init() {
    lifeline_tests::kube::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

async fn emulator() -> Result<Emulator> {
    // Frequent bookmarks, so the watchers' resourceVersions move while nothing changes.
    Ok(Emulator::start(EmulatorConfig::http().bookmark_interval(Duration::from_secs(2))).await?)
}

fn namespace(emu: &Emulator, name: &str) -> Result<()> {
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))?;
    Ok(())
}

/// A Service (labelled global when `global`) with one LoadBalancer IP, and one
/// EndpointSlice with `ready` ready endpoints out of two.
fn service(
    emu: &Emulator,
    ns: &str,
    name: &str,
    global: bool,
    lb: &str,
    ready: usize,
) -> Result<()> {
    let labels = if global {
        json!({"lifeline.dev/global": "true"})
    } else {
        json!({"app": name})
    };
    emu.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": lb}]}},
    }))?;
    slice(emu, ns, name, ready)
}

fn endpoints(ready: usize) -> serde_json::Value {
    json!((0..2)
        .map(|i| json!({"addresses": [format!("10.1.0.{}", i + 1)], "conditions": {"ready": i < ready}}))
        .collect::<Vec<_>>())
}

fn slice(emu: &Emulator, ns: &str, service: &str, ready: usize) -> Result<()> {
    emu.create(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": format!("{service}-x1"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints(ready),
        "ports": [{"name": "http", "port": 8080}],
    }))?;
    Ok(())
}

fn set_ready(emu: &Emulator, ns: &str, service: &str, ready: usize) -> Result<()> {
    emu.merge_patch(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some(ns),
        &format!("{service}-x1"),
        &json!({"endpoints": endpoints(ready)}),
        false,
    )?;
    Ok(())
}

fn key(ns: &str, name: &str) -> ServiceKey {
    (ns.to_owned(), name.to_owned())
}

async fn spawn(
    emu: &Emulator,
    name: &str,
    budget: BudgetConfig,
    scope: BTreeSet<ServiceKey>,
    options: WatchOptions,
) -> Result<MemberHandle> {
    // The production path: kubeconfig bytes (as from a Secret) -> kube::Config.
    let config = kube_config_from_bytes(emu.kubeconfig_yaml().as_bytes()).await?;
    Ok(MemberWatcher::spawn(
        name.to_owned(),
        config,
        budget,
        scope,
        options,
    )?)
}

/// Waits (bounded) until the view satisfies `pred`.
async fn wait_view(
    rx: &mut watch::Receiver<MemberView>,
    within: Duration,
    what: &str,
    pred: impl FnMut(&MemberView) -> bool,
) -> Result<MemberView> {
    let waited = match timeout(within, rx.wait_for(pred)).await {
        Ok(r) => Some(r.map(|v| v.clone())),
        Err(_) => None,
    };
    match waited {
        Some(v) => Ok(v?),
        None => anyhow::bail!(
            "timed out after {within:?} waiting for {what}; view: {}",
            summary(&rx.borrow())
        ),
    }
}

fn summary(v: &MemberView) -> String {
    format!(
        "control_plane={:?} watches={} synced={} objects={:?} requests={} services={}",
        v.control_plane,
        v.watches_open,
        v.synced,
        v.objects,
        v.requests,
        v.services.len()
    )
}

fn fast_options() -> WatchOptions {
    WatchOptions {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        ..WatchOptions::default()
    }
}

/// Samples an emulator's request total every few milliseconds and records when it grew:
/// an approximate arrival log (resolution: the sampling period).
struct Arrivals {
    log: Arc<Mutex<Vec<(Instant, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Arrivals {
    fn start(counts: impl Fn() -> u64 + Send + 'static) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let task = tokio::spawn(async move {
            let mut last = counts();
            // Bounded by the test, which aborts the task.
            loop {
                sleep(Duration::from_millis(10)).await;
                let now = counts();
                if now > last {
                    l.lock().push((Instant::now(), now - last));
                    last = now;
                }
            }
        });
        Self { log, task }
    }

    fn stop(self) -> Vec<(Instant, u64)> {
        self.task.abort();
        self.log.lock().clone()
    }
}

/// Ends every open watch. A watch whose server-side task has not started yet can miss a
/// single drop command, so this repeats (bounded) until the emulator has none open;
/// a fault must keep new watches from opening (429, 5xx or hang).
async fn drop_all_watches(emu: &Emulator) -> Result<()> {
    for _ in 0..50 {
        emu.drop_watches();
        sleep(Duration::from_millis(20)).await;
        if emu.open_watches() == 0 {
            return Ok(());
        }
    }
    anyhow::bail!("{} watches stayed open", emu.open_watches())
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_list_only_referenced_services_and_stay_silent_in_steady_state() -> Result<()>
{
    init();
    const REFERENCED: usize = 50;
    const UNRELATED: usize = 2000;
    const STEADY: Duration = Duration::from_secs(20);
    let mut emus = Vec::new();
    let mut scope = BTreeSet::new();
    for i in 0..REFERENCED {
        // Two namespaces, so the streams are cluster-wide and still select by label.
        let ns = if i % 2 == 0 { "shop" } else { "pay" };
        scope.insert(key(ns, &format!("web-{i}")));
    }
    for c in 0..3 {
        let emu = emulator().await?;
        namespace(&emu, "shop")?;
        namespace(&emu, "pay")?;
        for (ns, name) in &scope {
            let i: usize = name.trim_start_matches("web-").parse()?;
            service(&emu, ns, name, true, &format!("192.0.2.{}", c * 60 + i), 2)?;
        }
        for j in 0..UNRELATED {
            let ns = ["shop", "pay", "default"][j % 3];
            service(&emu, ns, &format!("other-{j}"), false, "198.51.100.1", 1)?;
        }
        emus.push(emu);
    }
    let mut handles = Vec::new();
    for (c, emu) in emus.iter().enumerate() {
        // The production path: a MemberCluster (default apiBudget qps 2, burst 5) and its
        // kubeconfig bytes.
        let mc: lifeline_crds::MemberCluster = serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": format!("cluster-{c}")},
            "spec": {"region": "test", "kubeconfigPath": "/unused", "addressSource": "LoadBalancer"},
        }))?;
        let config = kube_config_from_bytes(emu.kubeconfig_yaml().as_bytes()).await?;
        let h = MemberWatcher::spawn_for(&mc, config, scope.clone())?
            .context("a LoadBalancer cluster gets a watcher")?;
        ensure!(h.budget().config().qps == 2.0 && h.budget().config().burst == 5);
        handles.push(h);
    }
    for (c, (h, emu)) in handles.iter().zip(&emus).enumerate() {
        let mut rx = h.view();
        let v = wait_view(&mut rx, Duration::from_secs(30), "initial sync", |v| {
            v.synced && v.watches_open == 2
        })
        .await?;
        let counts = emu.counts();
        let lists_svc = counts.count(Some(Verb::List), Some("services"), None);
        let lists_eps = counts.count(Some(Verb::List), Some("endpointslices"), None);
        let watches = counts.count(Some(Verb::Watch), None, None);
        println!(
            "cluster-{c} initial: {} API requests (list services {lists_svc}, list endpointslices {lists_eps}, watch {watches}); \
             objects received: {} services, {} endpointslices of {} each in the cluster",
            counts.total(),
            v.objects.services,
            v.objects.endpoint_slices,
            REFERENCED + UNRELATED
        );
        ensure!(
            v.objects.services == REFERENCED && v.objects.endpoint_slices == REFERENCED,
            "the lists returned more than the referenced objects: {:?}",
            v.objects
        );
        ensure!((lists_svc, lists_eps, watches) == (1, 1, 2), "{counts:?}");
        ensure!(
            counts.count(None, Some("nodes"), None) + counts.count(None, Some("pods"), None) == 0
        );
        ensure!(v.services.len() == REFERENCED);
        for (k, s) in &v.services {
            ensure!(
                s.service_found && s.ready_endpoints == 2 && s.load_balancer_ips.len() == 1,
                "{k:?}: {s:?}"
            );
        }
        ensure!(v.control_plane == ControlPlane::Reachable);
        emu.reset_counts();
    }

    // Steady state: open watches and bookmarks only, no requests.
    let before: Vec<u64> = handles.iter().map(|h| h.budget().requests()).collect();
    sleep(STEADY).await;
    for (c, (h, emu)) in handles.iter().zip(&emus).enumerate() {
        let total = emu.counts().total();
        println!(
            "cluster-{c} steady state over {STEADY:?}: {total} API requests, {} watches open",
            emu.open_watches()
        );
        ensure!(total == 0, "steady state made requests: {:?}", emu.counts());
        ensure!(h.budget().requests() == before[c]);
        ensure!(emu.open_watches() == 2);
    }

    // Unrelated churn costs nothing; a change to a referenced service arrives by watch.
    for (c, emu) in emus.iter().enumerate() {
        for j in 0..200 {
            service(emu, "shop", &format!("late-{j}"), false, "198.51.100.2", 1)?;
        }
        set_ready(emu, "shop", "web-0", 0)?;
        let mut rx = handles[c].view();
        wait_view(
            &mut rx,
            Duration::from_secs(10),
            "web-0 losing its endpoints",
            |v| v.services[&key("shop", "web-0")].unhealthy_hint(),
        )
        .await?;
    }
    sleep(Duration::from_secs(3)).await;
    for (c, (h, emu)) in handles.iter().zip(&emus).enumerate() {
        let v = h.view().borrow().clone();
        let total = emu.counts().total();
        println!(
            "cluster-{c} after 400 unrelated objects and 1 referenced change: {total} API requests; \
             watcher sent {} requests in all ({:?})",
            v.requests,
            h.budget().stats().by_verb
        );
        ensure!(total == 0, "{:?}", emu.counts());
        ensure!(v.objects.services == REFERENCED && v.objects.endpoint_slices == REFERENCED);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_blackout_freezes_the_view_decays_to_gentle_probes_and_resumes_without_relisting()
-> Result<()> {
    init();
    const PROBE: Duration = Duration::from_secs(2);
    const THRESHOLD: u32 = 3;
    const OUTAGE: Duration = Duration::from_secs(12);
    let emu = emulator().await?;
    namespace(&emu, "shop")?;
    let scope: BTreeSet<ServiceKey> = (0..5).map(|i| key("shop", &format!("web-{i}"))).collect();
    for (i, (ns, name)) in scope.iter().enumerate() {
        service(&emu, ns, name, true, &format!("192.0.2.{i}"), 2)?;
    }
    for j in 0..50 {
        service(
            &emu,
            "shop",
            &format!("other-{j}"),
            false,
            "198.51.100.1",
            1,
        )?;
    }
    let budget = BudgetConfig {
        probe_interval: PROBE,
        failure_threshold: THRESHOLD,
        request_timeout: Duration::from_secs(2),
        ..BudgetConfig::default()
    };
    let h = spawn(&emu, "blackout", budget, scope.clone(), fast_options()).await?;
    let mut rx = h.view();
    let synced = wait_view(&mut rx, Duration::from_secs(20), "initial sync", |v| {
        v.synced && v.watches_open == 2
    })
    .await?;
    emu.reset_counts();

    emu.outage().await;
    let outage_start = Instant::now();
    let sent_at_start = h.budget().requests();
    let down = wait_view(&mut rx, Duration::from_secs(10), "Unreachable", |v| {
        matches!(v.control_plane, ControlPlane::Unreachable { .. })
    })
    .await?;
    let ControlPlane::Unreachable { since } = down.control_plane else {
        unreachable!()
    };
    println!("blackout: Unreachable after {:?}", outage_start.elapsed());
    ensure!(
        down.services == synced.services,
        "the view must keep the last known services"
    );

    // A change made while the API is unreachable, to be picked up by the resumed watch.
    set_ready(&emu, "shop", "web-3", 0)?;

    sleep(OUTAGE / 2).await;
    let sent_mid = h.budget().requests();
    sleep(OUTAGE / 2).await;
    let sent_end = h.budget().requests();
    let v = rx.borrow().clone();
    let stats = h.budget().stats();
    let total = sent_end - sent_at_start;
    let late = sent_end - sent_mid;
    println!(
        "blackout of {OUTAGE:?} (probe interval {PROBE:?}): {total} attempts in all, {late} in the last {:?}; \
         circuit opened {} time(s), {} probes; without the circuit the 0.1–0.5 s backoff of 2 streams would allow ~{}",
        OUTAGE / 2,
        stats.circuit_opened,
        stats.probes,
        2 * OUTAGE.as_millis() / 500
    );
    ensure!(
        h.budget().circuit_open(),
        "the circuit should be open: {stats:?}"
    );
    let bound = u64::from(THRESHOLD) + OUTAGE.as_secs() / PROBE.as_secs() + 2;
    ensure!(
        total <= bound,
        "{total} attempts during the outage, bound {bound}"
    );
    let late_bound = (OUTAGE / 2).as_secs() / PROBE.as_secs() + 1;
    ensure!(
        late <= late_bound,
        "{late} attempts in the second half, bound {late_bound}"
    );
    ensure!(
        v.control_plane == ControlPlane::Unreachable { since },
        "since must stay put"
    );
    ensure!(
        v.services == synced.services,
        "frozen on the last known good state"
    );

    emu.restore().await?;
    let restored = Instant::now();
    let up = wait_view(
        &mut rx,
        PROBE * 3 + Duration::from_secs(3),
        "recovery",
        |v| {
            v.control_plane == ControlPlane::Reachable
                && v.watches_open == 2
                && v.services[&key("shop", "web-3")].ready_endpoints == 0
        },
    )
    .await?;
    let counts = emu.counts();
    let lists = counts.count(Some(Verb::List), None, None);
    let watches = counts.count(Some(Verb::Watch), None, None);
    println!(
        "recovery after {:?}: {} requests at the emulator (list {lists}, watch {watches}); \
         the change made during the outage arrived by the resumed watch",
        restored.elapsed(),
        counts.total()
    );
    ensure!(
        lists == 0,
        "recovery must resume from the resourceVersion, not relist: {counts:?}"
    );
    ensure!(watches >= 2, "{counts:?}");
    ensure!(up.objects.services == 5 && up.objects.endpoint_slices == 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_gets_no_request_before_each_retry_after_has_elapsed() -> Result<()> {
    init();
    const RETRY_AFTER: u64 = 3;
    const STORM: Duration = Duration::from_secs(11);
    let emu = emulator().await?;
    namespace(&emu, "shop")?;
    let scope: BTreeSet<ServiceKey> = (0..3).map(|i| key("shop", &format!("web-{i}"))).collect();
    for (i, (ns, name)) in scope.iter().enumerate() {
        service(&emu, ns, name, true, &format!("192.0.2.{i}"), 2)?;
    }
    // A generous bucket, so only Retry-After can explain the spacing.
    let budget = BudgetConfig {
        qps: 50.0,
        burst: 50,
        ..BudgetConfig::default()
    };
    let h = spawn(&emu, "storm", budget, scope, fast_options()).await?;
    let mut rx = h.view();
    wait_view(&mut rx, Duration::from_secs(20), "initial sync", |v| {
        v.synced && v.watches_open == 2
    })
    .await?;
    emu.reset_counts();

    let counts = {
        let shared = Arc::new(emu);
        let probe = shared.clone();
        let arrivals = Arrivals::start(move || probe.counts().total());
        let fault = shared.inject(FaultRule::new(Fault::TooManyRequests {
            retry_after_seconds: RETRY_AFTER,
        }));
        drop_all_watches(&shared).await?;
        sleep(STORM).await;
        let log = arrivals.stop();
        shared.clear_fault(fault);
        let storm_counts = shared.counts();
        let throttled = h.budget().stats().throttled;

        // Bursts: requests less than 1 s apart (the two streams racing each other).
        let mut bursts: Vec<(Instant, u64)> = Vec::new();
        for (at, n) in &log {
            match bursts.last_mut() {
                Some((start, count)) if at.duration_since(*start) < Duration::from_secs(1) => {
                    *count += n
                }
                _ => bursts.push((*at, *n)),
            }
        }
        let gaps: Vec<Duration> = bursts
            .windows(2)
            .map(|w| w[1].0.duration_since(w[0].0))
            .collect();
        println!(
            "429 storm (Retry-After {RETRY_AFTER} s) over {STORM:?}: {} requests in {} bursts {:?}, gaps {:?}, 429s seen {throttled}",
            storm_counts.total(),
            bursts.len(),
            bursts.iter().map(|b| b.1).collect::<Vec<_>>(),
            gaps
        );
        ensure!(
            !bursts.is_empty(),
            "the watches never came back to be throttled"
        );
        for g in &gaps {
            // Arrivals are sampled every 10 ms by a task a loaded machine can delay;
            // 300 ms of slack still tells Retry-After from any backoff of our own.
            ensure!(
                *g >= Duration::from_millis(RETRY_AFTER * 1000 - 300),
                "a request came {g:?} after a 429"
            );
        }
        ensure!(
            bursts.iter().all(|b| b.1 <= 2),
            "more than one request per stream per window: {bursts:?}"
        );
        ensure!(bursts.len() as u64 <= STORM.as_secs() / RETRY_AFTER + 1);
        ensure!(
            h.view().borrow().control_plane == ControlPlane::Reachable,
            "a 429 is an answer: the control plane is reachable"
        );

        wait_view(
            &mut rx,
            Duration::from_secs(RETRY_AFTER + 5),
            "watches back after the storm",
            |v| v.watches_open == 2,
        )
        .await?;
        shared.counts()
    };
    let lists = counts.count(Some(Verb::List), None, None);
    println!(
        "after the storm: {} requests in all (list {lists}, watch {})",
        counts.total(),
        counts.count(Some(Verb::Watch), None, None)
    );
    ensure!(lists == 0, "a 429 is no reason to relist: {counts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescoping_reopens_the_streams_and_relists_once_and_endpointslice_clusters_use_one_stream()
-> Result<()> {
    init();
    let emu = emulator().await?;
    namespace(&emu, "shop")?;
    for i in 0..6 {
        service(
            &emu,
            "shop",
            &format!("web-{i}"),
            true,
            &format!("192.0.2.{i}"),
            2,
        )?;
    }
    let first: BTreeSet<ServiceKey> = (0..3).map(|i| key("shop", &format!("web-{i}"))).collect();
    let options = WatchOptions::for_address_source(lifeline_crds::AddressSource::EndpointSlice);
    let h = spawn(&emu, "rescope", BudgetConfig::default(), first, options).await?;
    let mut rx = h.view();
    let v = wait_view(&mut rx, Duration::from_secs(20), "initial sync", |v| {
        v.synced && v.watches_open == 1
    })
    .await?;
    ensure!(v.objects.endpoint_slices == 3 && v.objects.services == 0);
    ensure!(
        v.services
            .values()
            .all(|s| !s.service_found && s.ready_endpoints == 2)
    );
    ensure!(emu.open_watches() == 1);
    emu.reset_counts();

    let second: BTreeSet<ServiceKey> = (3..6).map(|i| key("shop", &format!("web-{i}"))).collect();
    h.set_services(second.clone());
    let v = wait_view(&mut rx, Duration::from_secs(20), "re-scoped sync", |v| {
        v.synced
            && v.watches_open == 1
            && v.services.keys().cloned().collect::<BTreeSet<_>>() == second
    })
    .await?;
    // Same scope again: nothing happens.
    h.set_services(second);
    sleep(Duration::from_secs(1)).await;
    let counts = emu.counts();
    println!(
        "re-scope: {} requests (list {}, watch {}), {} watch open",
        counts.total(),
        counts.count(Some(Verb::List), None, None),
        counts.count(Some(Verb::Watch), None, None),
        emu.open_watches()
    );
    ensure!(
        counts.count(Some(Verb::List), Some("endpointslices"), None) == 1,
        "{counts:?}"
    );
    ensure!(
        counts.count(Some(Verb::Watch), None, None) == 1,
        "{counts:?}"
    );
    ensure!(counts.count(None, Some("services"), None) == 0);
    ensure!(v.objects.endpoint_slices == 3);
    ensure!(emu.open_watches() == 1);

    drop(h);
    // Bounded: the emulator notices the closed connection within moments.
    for _ in 0..50 {
        if emu.open_watches() == 0 {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        emu.open_watches() == 0,
        "dropping the handle closes its watches"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_requests_and_5xx_answers_count_as_failures_and_open_the_circuit() -> Result<()> {
    init();
    const PROBE: Duration = Duration::from_secs(2);
    const WINDOW: Duration = Duration::from_secs(8);
    let emu = emulator().await?;
    namespace(&emu, "shop")?;
    let scope: BTreeSet<ServiceKey> = (0..3).map(|i| key("shop", &format!("web-{i}"))).collect();
    for (i, (ns, name)) in scope.iter().enumerate() {
        service(&emu, ns, name, true, &format!("192.0.2.{i}"), 2)?;
    }
    let budget = BudgetConfig {
        probe_interval: PROBE,
        failure_threshold: 3,
        request_timeout: Duration::from_millis(500),
        ..BudgetConfig::default()
    };
    let h = spawn(&emu, "hang", budget, scope, fast_options()).await?;
    let mut rx = h.view();
    let synced = wait_view(&mut rx, Duration::from_secs(20), "initial sync", |v| {
        v.synced && v.watches_open == 2
    })
    .await?;

    for (what, fault) in [
        ("hang", Fault::Hang),
        ("503", Fault::Error { code: 503 }),
        ("500", Fault::Error { code: 500 }),
    ] {
        emu.reset_counts();
        let id = emu.inject(FaultRule::new(fault));
        drop_all_watches(&emu).await?;
        let down = wait_view(&mut rx, Duration::from_secs(10), "Unreachable", |v| {
            matches!(v.control_plane, ControlPlane::Unreachable { .. })
        })
        .await?;
        ensure!(
            down.services == synced.services,
            "{what}: the view keeps the last known services"
        );
        let start = h.budget().requests();
        sleep(WINDOW).await;
        let attempts = h.budget().requests() - start;
        let at_emulator = emu.counts().total();
        emu.clear_fault(id);
        println!(
            "{what}: {attempts} attempts over {WINDOW:?} once unreachable ({at_emulator} reached the emulator), circuit open: {}",
            h.budget().circuit_open()
        );
        ensure!(
            h.budget().circuit_open(),
            "{what}: {:?}",
            h.budget().stats()
        );
        let bound = 3 + WINDOW.as_secs() / PROBE.as_secs() + 1;
        ensure!(
            attempts <= bound,
            "{what}: {attempts} attempts, bound {bound}"
        );
        wait_view(
            &mut rx,
            PROBE * 2 + Duration::from_secs(3),
            "recovery",
            |v| v.control_plane == ControlPlane::Reachable && v.watches_open == 2,
        )
        .await?;
        ensure!(
            emu.counts().count(Some(Verb::List), None, None) == 0,
            "{what}: recovery must not relist: {:?}",
            emu.counts()
        );
    }
    Ok(())
}
