//! `lifeline demo` over real sockets: its switches, added to the admin API from the
//! outside, fail a simulated cluster and DNS fails over; bad switch requests get a clear
//! error.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use lifeline_controller::cli::demo::{self, DemoOptions};
use lifeline_testkit::{dns::await_exactly, free_addr, free_port};
use serde_json::Value;

const NAME: &str = "checkout.demo.lifeline.test";

fn cluster(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_switches_fail_a_cluster_and_dns_fails_over() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (dns, admin) = (free_addr(), free_addr());
    let options = DemoOptions {
        dns,
        admin,
        backend_port: free_port(&[cluster(2), cluster(3), cluster(4)]),
        data_dir: Some(dir.path().to_owned()),
        watch: false,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(demo::run(options, async move {
        let _ = stopped.await;
    }));
    await_exactly(dns, NAME, cluster(2), Duration::from_secs(20)).await;

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{admin}/v1/demo/clusters");
    // A switch: POST to `<base>/<cluster>/<fail|heal>`; the status and the JSON body.
    let switch = |path: &str| {
        let request = http.post(format!("{base}/{path}"));
        async move {
            let resp = request.send().await.unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = switch("eu-west-1/fail").await;
    assert_eq!(status, 200);
    assert_eq!(body["cluster"], "eu-west-1");
    assert_eq!(body["failed"], true);
    await_exactly(dns, NAME, cluster(3), Duration::from_secs(10)).await;

    let (status, body) = switch("nowhere/fail").await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("nowhere"),
        "{body}"
    );
    let (status, body) = switch("us-east-1/explode").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected fail or heal"),
        "{body}"
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the demo stops")
        .unwrap()
        .unwrap();
}
