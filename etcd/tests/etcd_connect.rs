//! Connection options against a real etcd: TLS with a client certificate, and user
//! name and password authentication.

mod common;

use std::time::Duration;

use common::{start_shim, txt};
use lifeline_dns::source;
use lifeline_engine::Override;
use lifeline_etcd::{
    EtcdConnect, EtcdSource, EtcdStore,
    source::{encode_value, record_key},
};
use lifeline_testkit::{
    Etcd, eventually,
    fixtures::{ZONE, drain},
    within,
};

fn an_override() -> Override {
    drain("eu-west-1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate_works_and_without_one_is_refused() {
    let Some(etcd) = Etcd::start_tls().await else {
        return;
    };
    let store = etcd.store("/lifeline").await;
    within(
        Duration::from_secs(10),
        store.put_override(&an_override(), "alice"),
    )
    .await
    .unwrap();
    assert_eq!(store.overrides().await.unwrap().len(), 1);

    let mut no_cert = etcd.connect();
    if let Some(tls) = no_cert.tls.as_mut() {
        tls.cert_file = None;
        tls.key_file = None;
    }
    no_cert.request_timeout = Some(Duration::from_secs(2));
    let refused = EtcdStore::connect(&no_cert, "/lifeline").await.unwrap();
    assert!(
        within(Duration::from_secs(10), refused.overrides())
            .await
            .is_err(),
        "etcd requires a client certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_are_sent_and_required_once_auth_is_on() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut admin = etcd.client().await;
    admin.user_add("root", "s3cret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let with_user = EtcdConnect {
        user: Some(("root".to_owned(), "s3cret".to_owned())),
        ..etcd.connect()
    };
    assert!(
        !format!("{with_user:?}").contains("s3cret"),
        "the password never reaches a log line"
    );
    let store = within(
        Duration::from_secs(10),
        EtcdStore::connect(&with_user, "/lifeline"),
    )
    .await
    .unwrap();
    store.put_override(&an_override(), "alice").await.unwrap();
    assert_eq!(store.overrides().await.unwrap().len(), 1);

    let anonymous = etcd.store("/lifeline").await;
    assert!(
        anonymous.put_override(&an_override(), "eve").await.is_err(),
        "writes need credentials once auth is on"
    );
    let wrong = EtcdConnect {
        user: Some(("root".to_owned(), "wrong".to_owned())),
        ..etcd.connect()
    };
    assert!(EtcdStore::connect(&wrong, "/lifeline").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_source_reads_records_over_tls() {
    let Some(etcd) = Etcd::start_tls().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shim = start_shim(dir.path()).await;
    let source = EtcdSource::new(etcd.connect(), "/lifeline");
    let task = source::spawn(Box::new(source), shim.clone());
    let mut client = etcd.client().await;
    let value = encode_value(&txt("over tls"), None).unwrap();
    common::write_committed(
        &mut client,
        "/lifeline",
        vec![etcd_client::TxnOp::put(
            record_key("/lifeline", ZONE, "www"),
            value,
            None,
        )],
    )
    .await;
    eventually(Duration::from_secs(20), "record over TLS", || {
        shim.snapshot(ZONE).filter(|s| s.names.contains_key("www"))
    })
    .await;
    task.abort();
}
