//! DNS in a fate of its own: `lifeline dns` answers while `lifeline run`, fed to it
//! through `dns.sourceDir` (`dnsServer.separate`), runs out of memory in a cgroup the
//! test made (the kernel's OOM killer, as in a pod over its limit), and after the
//! controller is back, DNS follows its next decision.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

mod common;

use common::{spawn, spawn_run};
use lifeline_testkit::{
    Backend,
    cgroup::MemoryCage,
    dns::{Answer, answer_a, await_exactly},
    fixtures::{static_cluster, zone_line},
    free_addr, loopback,
};

const ZONE: &str = "apart.lifeline.test";
const NAME: &str = "web.apart.lifeline.test";

fn write_files(dir: &Path, dns: SocketAddr, admins: [SocketAddr; 2], ips: [IpAddr; 2], port: u16) {
    std::fs::write(
        dir.join("lifeline.yaml"),
        format!(
            "zones:\n{zone}\
dns: {{udp: [\"{dns}\"], tcp: [\"{dns}\"], dataDir: {d}/snapshots, sourceDir: {d}/export}}\n\
dnsServer: {{separate: true, admin: \"{dns_admin}\"}}\n\
admin: {{listen: \"{admin}\"}}\n\
store: {{type: embedded, dataDir: {d}/store}}\n\
policySource: {{type: files, paths: [docs.yaml]}}\n",
            zone = zone_line(ZONE),
            d = dir.display(),
            admin = admins[0],
            dns_admin = admins[1],
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("docs.yaml"),
        format!(
            "{}---\n{}---\n\
apiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hostname: {NAME}\n  ttl: 5\n  targets: [{{cluster: primary, priority: 0}}, {{cluster: secondary, priority: 1}}]\n  healthCheck: {{http: {{port: {port}}}, interval: 200ms, timeout: 150ms, unhealthyThreshold: 2, healthyThreshold: 2}}\n",
            static_cluster("primary", "eu", ips[0]),
            static_cluster("secondary", "us", ips[1]),
        ),
    )
    .unwrap();
}

/// Asks for `NAME` every 20 ms until `stop` is set: the answers that were not exactly
/// one address, and how many were.
fn sample(
    dns: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut good, mut bad) = (0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // A resolver asks again after a lost reply; `answer_a` does the same.
            match answer_a(dns, NAME) {
                Answer::Addresses(a) if a.len() == 1 => good += 1,
                other => bad.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (good, bad)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_while_the_controller_runs_out_of_memory_and_follows_it_once_back() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ips = [loopback(), loopback()];
    let [mut primary, _secondary] = Backend::start_on(ips).await;
    let port = primary.addr.port();
    let (dns, admin, dns_admin) = (free_addr(), free_addr(), free_addr());
    write_files(dir.path(), dns, [admin, dns_admin], ips, port);
    let config = dir.path().join("lifeline.yaml");

    let mut edge = spawn(&["dns"], &config);
    let mut controller = spawn_run(&config, false);
    await_exactly(dns, NAME, ips[0], Duration::from_secs(20)).await;
    assert!(
        dir.path().join(format!("export/{ZONE}.json")).exists(),
        "the controller wrote the zone for lifeline dns"
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample(dns, stop.clone());

    // The controller goes over a memory limit: in a cgroup of 16 MiB, what it allocates
    // from now on counts, and a policy set of 4,000 names is far more than that.
    let how = match MemoryCage::new(16 << 20) {
        Ok(cage) => {
            cage.add(controller.pid()).unwrap();
            let mut docs = std::fs::read_to_string(dir.path().join("docs.yaml")).unwrap();
            for i in 0..4000 {
                docs.push_str(&format!(
                    "---\napiVersion: lifeline.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: p{i}, namespace: shop}}\nspec: {{hostname: p{i}.{ZONE}, targets: [{{cluster: primary}}, {{cluster: secondary, priority: 1}}]}}\n"
                ));
            }
            let tmp = dir.path().join("docs.yaml.tmp");
            std::fs::write(&tmp, docs).unwrap();
            std::fs::rename(&tmp, dir.path().join("docs.yaml")).unwrap();
            let status = lifeline_testkit::eventually(
                Duration::from_secs(30),
                "the controller is OOM-killed",
                || controller.exited(),
            )
            .await;
            use std::os::unix::process::ExitStatusExt as _;
            assert_eq!(
                status.signal(),
                Some(9),
                "killed by the OOM killer: {status:?}"
            );
            if let Some(kills) = cage.oom_kills() {
                assert!(kills >= 1, "the cgroup counts no OOM kill");
            }
            // The larger set is not what this test is about.
            write_files(dir.path(), dns, [admin, dns_admin], ips, port);
            drop(cage);
            "OOM-killed in a 16 MiB cgroup"
        }
        Err(why) => {
            lifeline_testkit::skipped(format!(
                "no memory cgroup ({why}); the controller is killed with SIGKILL instead"
            ));
            drop(controller);
            "killed with SIGKILL"
        }
    };

    // With no controller, the primary dies: DNS keeps answering what it was told.
    primary.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        answer_a(dns, NAME).ok(),
        Some(vec![ips[0]]),
        "nothing decided while the controller is down"
    );
    assert!(
        edge.is_running(),
        "lifeline dns shares nothing with the controller's fate"
    );

    // The controller comes back and decides; DNS follows.
    let restarted = Instant::now();
    let _controller = spawn_run(&config, false);
    await_exactly(dns, NAME, ips[1], Duration::from_secs(30)).await;
    eprintln!(
        "controller {how}; DNS followed its next decision {:?} after the restart",
        restarted.elapsed()
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (good, bad) = sampler.join().unwrap();
    assert!(
        bad.is_empty(),
        "DNS failed or went empty while the controller was down: {:?}",
        &bad[..bad.len().min(5)]
    );
    assert!(good > 50, "only {good} answers");
}
