//! The prober against real HTTP, HTTPS and TCP servers on loopback addresses.
//!
//! Every endpoint is on 127.0.0.0/8: a transparent proxy on the build machines answers for
//! anything else, which would make a dead target look healthy. Every receive has a
//! timeout and every collecting loop a deadline, so a broken prober fails a test instead
//! of hanging it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use lifeline_controller::probe::{
    Check, ProbeResult, ProbeSpec, Prober, TargetKey, check_from_spec, fast_interval_from_spec,
};
use lifeline_testkit::{
    backend::{Backend, Behaviour},
    pki::{Leaf, TestCa},
};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

/// Upper bound on any single wait for a result.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn key(cluster: &str) -> TargetKey {
    TargetKey {
        policy: "shop/checkout".to_owned(),
        cluster: cluster.to_owned(),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn http_check(port: u16, expected_status: &[u16]) -> Check {
    Check::Http {
        https: false,
        port,
        path: "/healthz".to_owned(),
        host: Some("checkout.global.example.com".to_owned()),
        expected_status: expected_status.to_vec(),
        insecure_skip_verify: false,
    }
}

/// An HTTP check of `addr` expecting `statuses`, every 100 ms with a 1 s timeout.
fn http_spec(cluster: &str, addr: SocketAddr, statuses: &[u16]) -> ProbeSpec {
    spec(cluster, addr, http_check(addr.port(), statuses), 100, 1000)
}

fn spec(
    cluster: &str,
    addr: SocketAddr,
    check: Check,
    interval_ms: u64,
    timeout_ms: u64,
) -> ProbeSpec {
    ProbeSpec {
        key: key(cluster),
        addresses: vec![addr.ip()],
        check,
        interval: Duration::from_millis(interval_ms),
        fast_interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
    }
}

fn prober(concurrency: usize) -> (Prober, mpsc::Receiver<ProbeResult>) {
    init();
    let (tx, rx) = mpsc::channel(1024);
    (Prober::new(concurrency, tx).unwrap(), rx)
}

/// The next result for `key`, skipping other targets' results.
async fn next_for(rx: &mut mpsc::Receiver<ProbeResult>, key: &TargetKey) -> ProbeResult {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        let r = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no result for {key:?} within {RECV_TIMEOUT:?}"))
            .expect("result channel closed");
        if &r.key == key {
            return r;
        }
    }
}

/// Results for `key` until one satisfies `pred` (bounded by count and time).
async fn wait_for(
    rx: &mut mpsc::Receiver<ProbeResult>,
    key: &TargetKey,
    what: &str,
    pred: impl Fn(&ProbeResult) -> bool,
) -> ProbeResult {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let r = next_for(rx, key).await;
        if pred(&r) {
            return r;
        }
        seen.push(r.detail);
    }
    panic!("{what}: never seen for {key:?}; got {seen:?}");
}

/// Everything received during `window`.
async fn collect(rx: &mut mpsc::Receiver<ProbeResult>, window: Duration) -> Vec<ProbeResult> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        out.push(r);
        assert!(out.len() < 10_000, "result flood");
    }
    out
}

// === HTTP test backend ===

/// Serves `behaviour` on `ip` at a free port (or `port`).
async fn serve(behaviour: &Behaviour, ip: &str, port: u16) -> (SocketAddr, Backend) {
    let server = Backend::serve(behaviour, SocketAddr::new(ip.parse().unwrap(), port)).await;
    (server.addr, server)
}

async fn kill(task: JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

// === HTTP ===

#[tokio::test]
async fn healthy_http_backend_reports_ok_with_increasing_timestamps() {
    let backend = Behaviour::new(200);
    let (addr, _server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    prober.set_targets(vec![http_spec("a", addr, &[200])]);
    assert_eq!(prober.len(), 1);

    let mut last = SystemTime::UNIX_EPOCH;
    for _ in 0..3 {
        let r = next_for(&mut rx, &key("a")).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.detail, "200 OK");
        assert!(
            r.at > last,
            "timestamps must increase: {:?} then {:?}",
            last,
            r.at
        );
        assert!(r.latency < Duration::from_secs(1));
        last = r.at;
    }
    assert_eq!(backend.paths()[0], "/healthz");
}

#[tokio::test]
async fn backend_returning_503_reports_failing_with_the_status() {
    let backend = Behaviour::new(503);
    let (addr, _server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    prober.set_targets(vec![http_spec("a", addr, &[200])]);

    let r = next_for(&mut rx, &key("a")).await;
    assert!(!r.ok);
    assert_eq!(r.detail, format!("status 503 not in [200] at {addr}"));
}

#[tokio::test]
async fn an_unsettled_target_is_reprobed_at_the_fast_interval_until_a_threshold_confirms_it() {
    // A 60 s interval: the first round lands within 5 s, and without the fast interval
    // every later one would be about a minute away.
    let interval = Duration::from_secs(60);
    let backend = Behaviour::new(503);
    let (addr, _server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    let mut s = spec("a", addr, http_check(addr.port(), &[200]), 60_000, 1000);
    s.fast_interval = Duration::from_millis(100);
    s.unhealthy_threshold = 5;
    s.healthy_threshold = 2;
    prober.set_targets(vec![s]);

    // Two failures (short of five), then the backend heals (a round already under way
    // may fail once more, still short of five): two successes confirm it up. Each result
    // must come within RECV_TIMEOUT of the previous one.
    let first = next_for(&mut rx, &key("a")).await;
    assert!(!first.ok, "{first:?}");
    let second = next_for(&mut rx, &key("a")).await;
    assert!(!second.ok, "{second:?}");
    backend.set_status(200);
    wait_for(&mut rx, &key("a"), "a success after healing", |r| r.ok).await;
    let fourth = next_for(&mut rx, &key("a")).await;
    assert!(fourth.ok, "{fourth:?}");
    let span = fourth.at.duration_since(first.at).unwrap();
    assert!(
        span < interval / 2,
        "four rounds took {span:?}: the fast interval was not used"
    );

    // Confirmed up: back to the normal interval, so nothing more comes for a while.
    let more = collect(&mut rx, Duration::from_secs(1)).await;
    assert!(
        more.iter().all(|r| r.key != key("a")),
        "a settled target was probed again at once: {more:?}"
    );
}

#[tokio::test]
async fn any_status_in_the_expected_set_counts_as_healthy() {
    let backend = Behaviour::new(204);
    let (addr, _server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    prober.set_targets(vec![
        http_spec("in-set", addr, &[200, 204]),
        http_spec("not-in-set", addr, &[200]),
    ]);

    let r = next_for(&mut rx, &key("in-set")).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "204 No Content");
    let r = next_for(&mut rx, &key("not-in-set")).await;
    assert!(!r.ok);
    assert!(
        r.detail.starts_with("status 204 not in [200]"),
        "{}",
        r.detail
    );
}

#[tokio::test]
async fn a_redirect_is_judged_against_the_expected_set_and_not_followed() {
    let backend = Behaviour::new(302);
    let (addr, _server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    prober.set_targets(vec![
        http_spec("accepts-302", addr, &[200, 302]),
        http_spec("wants-200", addr, &[200]),
    ]);

    let r = next_for(&mut rx, &key("accepts-302")).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "302 Found");
    let r = next_for(&mut rx, &key("wants-200")).await;
    assert!(
        r.detail.starts_with("status 302 not in [200]"),
        "{}",
        r.detail
    );
}

#[tokio::test]
async fn probe_sends_the_configured_host_header() {
    let backend = Behaviour::new(200);
    let (addr, _server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    prober.set_targets(vec![http_spec("a", addr, &[200])]);

    assert!(next_for(&mut rx, &key("a")).await.ok);
    assert!(next_for(&mut rx, &key("a")).await.ok);
    let hosts = backend.hosts();
    assert!(hosts.len() >= 2);
    assert!(
        hosts.iter().all(|h| h == "checkout.global.example.com"),
        "{hosts:?}"
    );
}

#[tokio::test]
async fn killed_backend_turns_results_to_connect_refused() {
    let backend = Behaviour::new(200);
    let (addr, mut server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    prober.set_targets(vec![http_spec("a", addr, &[200])]);
    assert!(next_for(&mut rx, &key("a")).await.ok);

    server.kill().await;
    let r = wait_for(&mut rx, &key("a"), "failing result", |r| !r.ok).await;
    assert_eq!(r.detail, format!("connect refused at {addr}"));
}

#[tokio::test]
async fn slow_backend_times_out_without_delaying_a_fast_target() {
    let slow = Behaviour::new(200).slow(Duration::from_secs(30));
    let (slow_addr, _slow_server) = serve(&slow, "127.0.0.2", 0).await;
    let fast = Behaviour::new(200);
    let (fast_addr, _fast_server) = serve(&fast, "127.0.0.3", 0).await;
    let (prober, mut rx) = prober(8);
    prober.set_targets(vec![
        spec(
            "slow",
            slow_addr,
            http_check(slow_addr.port(), &[200]),
            1500,
            1000,
        ),
        http_spec("fast", fast_addr, &[200]),
    ]);

    // Count fast results that arrive while a slow round is hanging in the slow backend.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut fast_during_slow = 0;
    let mut slow_result = None;
    while Instant::now() < deadline && (slow_result.is_none() || fast_during_slow < 3) {
        let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        match r.key.cluster.as_str() {
            "fast" => {
                assert!(r.ok, "{r:?}");
                if slow.in_flight() > 0 {
                    fast_during_slow += 1;
                }
            }
            _ => slow_result = Some(r),
        }
    }
    let slow_result = slow_result.expect("the slow target reported nothing");
    assert!(!slow_result.ok);
    assert_eq!(
        slow_result.detail,
        format!("timeout after 1s at {slow_addr}")
    );
    assert!(
        fast_during_slow >= 3,
        "fast target produced only {fast_during_slow} results while the slow one hung"
    );
}

#[tokio::test]
async fn a_target_with_one_failing_address_fails_naming_that_address() {
    let backend = Behaviour::new(200);
    let (good, _server) = serve(&backend, "127.0.0.5", 0).await;
    // Same port on another loopback address, where nothing listens yet.
    let bad: SocketAddr = (ip("127.0.0.6"), good.port()).into();
    let (prober, mut rx) = prober(4);
    let mut two = http_spec("a", good, &[200]);
    two.addresses = vec![good.ip(), bad.ip()];
    prober.set_targets(vec![two]);

    let r = next_for(&mut rx, &key("a")).await;
    assert!(!r.ok);
    assert_eq!(r.detail, format!("connect refused at {bad}"));

    // Once the second address serves too, the target is healthy.
    let (_, _second) = serve(&backend, "127.0.0.6", good.port()).await;
    wait_for(&mut rx, &key("a"), "ok result", |r| r.ok).await;
}

// === TCP ===

#[tokio::test]
async fn tcp_probe_follows_the_listening_socket() {
    let listener = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept and drop, so the backlog never fills up.
    let server = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let (prober, mut rx) = prober(4);
    prober.set_targets(vec![spec(
        "a",
        addr,
        Check::Tcp { port: addr.port() },
        100,
        1000,
    )]);

    let r = next_for(&mut rx, &key("a")).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "connected");

    kill(server).await;
    let r = wait_for(&mut rx, &key("a"), "failing result", |r| !r.ok).await;
    assert_eq!(r.detail, format!("connect refused at {addr}"));
}

// === HTTPS ===

const TLS_HOST: &str = "secure.example.test";

/// A CA (PEM) and a leaf for `TLS_HOST` signed by it.
struct Pki {
    ca_pem: String,
    leaf: Leaf,
}

fn pki() -> Pki {
    let ca = TestCa::new("lifeline test CA");
    Pki {
        ca_pem: ca.pem(),
        leaf: ca.leaf(TLS_HOST, &[TLS_HOST.to_owned()], false),
    }
}

/// A minimal HTTPS/1.1 server answering 200 to anything; records the SNI names and Host
/// headers it saw.
struct TlsServer {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
    hosts: Arc<Mutex<Vec<String>>>,
    _task: JoinHandle<()>,
}

async fn tls_server(ip: &str, pki: &Pki) -> TlsServer {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain = [&pki.leaf.cert_pem, &pki.ca_pem]
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .to_vec();
    let key = PrivateKeyDer::from_pem_slice(pki.leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sni: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let hosts: Arc<Mutex<Vec<String>>> = Arc::default();
    let (sni2, hosts2) = (sni.clone(), hosts.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, sni, hosts) = (acceptor.clone(), sni2.clone(), hosts2.clone());
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                sni.lock()
                    .push(tls.get_ref().1.server_name().map(str::to_owned));
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                if let Some(host) = text.lines().find_map(|l| {
                    l.strip_prefix("host: ")
                        .or_else(|| l.strip_prefix("Host: "))
                }) {
                    hosts.lock().push(host.trim().to_owned());
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    TlsServer {
        addr,
        sni,
        hosts,
        _task: task,
    }
}

fn https_check(port: u16, host: &str, insecure_skip_verify: bool) -> Check {
    Check::Http {
        https: true,
        port,
        path: "/healthz".to_owned(),
        host: Some(host.to_owned()),
        expected_status: vec![200],
        insecure_skip_verify,
    }
}

#[tokio::test]
async fn https_with_an_untrusted_certificate_fails_by_default_and_passes_when_verification_is_skipped()
 {
    init();
    let pki = pki();
    let server = tls_server("127.0.0.4", &pki).await;
    let port = server.addr.port();
    let (prober, mut rx) = prober(4);
    prober.set_targets(vec![
        spec(
            "verify",
            server.addr,
            https_check(port, TLS_HOST, false),
            100,
            2000,
        ),
        spec(
            "skip",
            server.addr,
            https_check(port, TLS_HOST, true),
            100,
            2000,
        ),
    ]);

    let r = next_for(&mut rx, &key("verify")).await;
    assert!(!r.ok);
    assert!(r.detail.starts_with("tls: "), "{}", r.detail);
    assert!(r.detail.contains("UnknownIssuer"), "{}", r.detail);
    assert!(
        r.detail.ends_with(&format!("at {}", server.addr)),
        "{}",
        r.detail
    );

    let r = next_for(&mut rx, &key("skip")).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "200 OK");
    // Even unverified, the server is asked for the policy's name, so it can pick the
    // certificate clients get.
    assert!(server.sni.lock().contains(&Some(TLS_HOST.to_owned())));
    let hosts = server.hosts.lock().clone();
    assert!(
        !hosts.is_empty() && hosts.iter().all(|h| h == TLS_HOST),
        "{hosts:?}"
    );
}

#[tokio::test]
async fn https_verifies_against_a_trusted_ca_and_the_checks_host_name() {
    init();
    let pki = pki();
    let server = tls_server("127.0.0.4", &pki).await;
    let port = server.addr.port();
    let (tx, mut rx) = mpsc::channel(1024);
    let prober = Prober::with_extra_roots(4, tx, pki.ca_pem.as_bytes()).unwrap();
    prober.set_targets(vec![
        spec(
            "right-name",
            server.addr,
            https_check(port, TLS_HOST, false),
            100,
            2000,
        ),
        spec(
            "wrong-name",
            server.addr,
            https_check(port, "other.example.test", false),
            100,
            2000,
        ),
    ]);

    let r = next_for(&mut rx, &key("right-name")).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "200 OK");
    let r = next_for(&mut rx, &key("wrong-name")).await;
    assert!(!r.ok);
    assert!(r.detail.starts_with("tls: "), "{}", r.detail);
    assert!(r.detail.contains("not valid for name"), "{}", r.detail);
}

// === Target set and concurrency ===

#[tokio::test]
async fn removed_target_stops_producing_results() {
    let backend = Behaviour::new(200);
    let (addr, _server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    let a = http_spec("a", addr, &[200]);
    let b = http_spec("b", addr, &[200]);
    prober.set_targets(vec![a, b.clone()]);
    next_for(&mut rx, &key("a")).await;
    next_for(&mut rx, &key("b")).await;

    prober.set_targets(vec![b]);
    assert_eq!(prober.len(), 1);
    // Results queued before set_targets returned may still be in the channel; nothing
    // for the removed target may be queued after.
    while rx.try_recv().is_ok() {}
    let later = collect(&mut rx, Duration::from_millis(600)).await;
    assert!(later.iter().any(|r| r.key == key("b")), "b must keep going");
    assert!(later.iter().all(|r| r.key != key("a")), "a must stop");

    prober.set_targets(Vec::new());
    assert!(prober.is_empty());
}

#[tokio::test]
async fn changing_a_targets_check_restarts_it_with_the_new_settings() {
    let backend = Behaviour::new(200);
    let (addr, _server) = serve(&backend, "127.0.0.2", 0).await;
    let (prober, mut rx) = prober(4);
    let mut s = http_spec("a", addr, &[200]);
    prober.set_targets(vec![s.clone()]);
    next_for(&mut rx, &key("a")).await;

    if let Check::Http { path, .. } = &mut s.check {
        *path = "ready".to_owned();
    }
    prober.set_targets(vec![s]);
    assert_eq!(prober.len(), 1);
    while rx.try_recv().is_ok() {}
    backend.clear_paths();
    next_for(&mut rx, &key("a")).await;
    // Several more intervals: a leftover task with the old path would show up here.
    collect(&mut rx, Duration::from_millis(300)).await;
    let paths = backend.paths();
    assert!(
        !paths.is_empty() && paths.iter().all(|p| p == "/ready"),
        "{paths:?}"
    );
}

#[tokio::test]
async fn concurrency_bound_holds_across_slow_targets() {
    for (concurrency, expected_max) in [(1, 1), (2, 2)] {
        let backend = Behaviour::new(200).slow(Duration::from_millis(300));
        let (addr1, _s1) = serve(&backend, "127.0.0.2", 0).await;
        let (addr2, _s2) = serve(&backend, "127.0.0.3", 0).await;
        let (prober, mut rx) = prober(concurrency);
        prober.set_targets(vec![
            http_spec("one", addr1, &[200]),
            http_spec("two", addr2, &[200]),
        ]);

        // Enough rounds that, without the bound, two would surely have overlapped.
        let mut seen = [0usize; 2];
        for _ in 0..8 {
            let r = tokio::time::timeout(RECV_TIMEOUT, rx.recv())
                .await
                .expect("no result")
                .unwrap();
            assert!(r.ok, "{r:?}");
            seen[usize::from(r.key.cluster == "two")] += 1;
        }
        assert!(
            seen.iter().all(|n| *n > 0),
            "both targets must progress: {seen:?}"
        );
        assert_eq!(
            backend.max_in_flight(),
            expected_max,
            "concurrency {concurrency}"
        );
    }
}

#[tokio::test]
async fn a_target_of_many_addresses_holds_at_most_the_global_limit_of_connections_and_is_covered_in_turn()
 {
    // 200 addresses on one target, each answering after 200 ms; one of them (late in the
    // list) has no server at all. A round used to open every address at once.
    let backend = Behaviour::new(200).slow(Duration::from_millis(200));
    let ips: Vec<IpAddr> = (1..=200).map(|i| ip(&format!("127.0.2.{i}"))).collect();
    let dead = ips[170];
    let first = Backend::serve(&backend, SocketAddr::new(ips[0], 0)).await;
    let port = first.addr.port();
    let mut servers = vec![first];
    for &address in &ips[1..] {
        if address != dead {
            servers.push(Backend::serve(&backend, SocketAddr::new(address, port)).await);
        }
    }
    let concurrency = 12;
    let (prober, mut rx) = prober(concurrency);
    let mut target = spec(
        "many",
        SocketAddr::new(ips[0], port),
        http_check(port, &[200]),
        100,
        2000,
    );
    target.addresses = ips.clone();
    prober.set_targets(vec![target]);

    // The rotation reaches the dead address within ceil(200 / batch) rounds, and from
    // then on it is checked again each round, so the target stays failing.
    let failing = wait_for(&mut rx, &key("many"), "the dead address named", |r| {
        !r.ok && r.detail.contains(&format!("at {dead}:{port}"))
    })
    .await;
    assert!(
        failing.detail.starts_with("connect refused"),
        "{}",
        failing.detail
    );
    for _ in 0..3 {
        let r = next_for(&mut rx, &key("many")).await;
        assert!(
            !r.ok,
            "a failing address must keep the target failing: {r:?}"
        );
    }
    assert!(
        backend.max_in_flight() <= concurrency,
        "{} requests in flight at once; the global limit is {concurrency}",
        backend.max_in_flight()
    );
    assert!(
        backend.requests() >= 199,
        "only {} requests: the rotation did not cover the target",
        backend.requests()
    );

    // The dead address comes back: it is re-checked first, so the target recovers at the
    // next round rather than when the rotation comes round again.
    servers.push(Backend::serve(&backend, SocketAddr::new(dead, port)).await);
    let healed = wait_for(&mut rx, &key("many"), "the target healthy again", |r| r.ok).await;
    assert_eq!(healed.detail, "200 OK");
    drop(servers);
}

// === check_from_spec ===

fn health_check(json: serde_json::Value) -> lifeline_crds::HealthCheck {
    serde_json::from_value(json).unwrap()
}

#[test]
fn http_health_check_defaults_its_host_to_the_policy_hostname() {
    let hc = health_check(
        serde_json::json!({"http": {"port": 8080}, "interval": "5s", "timeout": "1s"}),
    );
    let (check, interval, timeout) = check_from_spec(&hc, "checkout.global.example.com").unwrap();
    assert_eq!(
        check,
        Check::Http {
            https: false,
            port: 8080,
            path: "/healthz".to_owned(),
            host: Some("checkout.global.example.com".to_owned()),
            expected_status: vec![200],
            insecure_skip_verify: false,
        }
    );
    assert_eq!(
        (interval, timeout),
        (Duration::from_secs(5), Duration::from_secs(1))
    );
}

#[test]
fn https_health_check_keeps_its_own_host_statuses_and_verify_setting() {
    let hc = health_check(serde_json::json!({"http": {
        "scheme": "https", "port": 443, "path": "/ready", "host": "internal.example.com",
        "expectedStatus": [200, 204], "insecureSkipVerify": true
    }}));
    let (check, interval, timeout) = check_from_spec(&hc, "checkout.global.example.com").unwrap();
    assert_eq!(
        check,
        Check::Http {
            https: true,
            port: 443,
            path: "/ready".to_owned(),
            host: Some("internal.example.com".to_owned()),
            expected_status: vec![200, 204],
            insecure_skip_verify: true,
        }
    );
    assert_eq!(
        (interval, timeout),
        (Duration::from_secs(10), Duration::from_secs(2))
    );
}

#[test]
fn tcp_health_check_converts_and_a_check_without_a_kind_is_none() {
    let hc = health_check(serde_json::json!({"tcp": {"port": 5432}, "interval": "3s"}));
    let (check, interval, _) = check_from_spec(&hc, "db.example.com").unwrap();
    assert_eq!(check, Check::Tcp { port: 5432 });
    assert_eq!(interval, Duration::from_secs(3));

    assert!(check_from_spec(&health_check(serde_json::json!({})), "x.example.com").is_none());
    let bad_port = health_check(serde_json::json!({"tcp": {"port": 70000}}));
    assert!(check_from_spec(&bad_port, "x.example.com").is_none());
}

#[test]
fn the_fast_interval_defaults_to_the_shortest_and_never_exceeds_the_interval() {
    let interval =
        |hc: &lifeline_crds::HealthCheck| check_from_spec(hc, "x.example.com").unwrap().1;
    let hc = health_check(serde_json::json!({"tcp": {"port": 80}, "interval": "5s"}));
    assert_eq!(
        fast_interval_from_spec(&hc, interval(&hc)),
        Duration::from_millis(100)
    );
    let hc = health_check(
        serde_json::json!({"tcp": {"port": 80}, "interval": "5s", "fastInterval": "1s"}),
    );
    assert_eq!(
        fast_interval_from_spec(&hc, interval(&hc)),
        Duration::from_secs(1)
    );
    // A document that skipped validation: clamped to the interval, and to the minimum.
    let hc = health_check(
        serde_json::json!({"tcp": {"port": 80}, "interval": "2s", "fastInterval": "1m"}),
    );
    assert_eq!(
        fast_interval_from_spec(&hc, interval(&hc)),
        Duration::from_secs(2)
    );
    let hc = health_check(
        serde_json::json!({"tcp": {"port": 80}, "interval": "2s", "fastInterval": "1ms"}),
    );
    assert_eq!(
        fast_interval_from_spec(&hc, interval(&hc)),
        Duration::from_millis(100)
    );
}

#[test]
fn unparsable_durations_fall_back_and_timeout_never_exceeds_interval() {
    let hc = health_check(
        serde_json::json!({"tcp": {"port": 80}, "interval": "soon", "timeout": "never"}),
    );
    let (_, interval, timeout) = check_from_spec(&hc, "x.example.com").unwrap();
    assert_eq!(
        (interval, timeout),
        (Duration::from_secs(10), Duration::from_secs(2))
    );

    let hc =
        health_check(serde_json::json!({"tcp": {"port": 80}, "interval": "1s", "timeout": "5s"}));
    let (_, interval, timeout) = check_from_spec(&hc, "x.example.com").unwrap();
    assert_eq!(
        (interval, timeout),
        (Duration::from_secs(1), Duration::from_secs(1))
    );
}
