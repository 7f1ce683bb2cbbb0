use lifeline_dns::{compile::*, *};
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Instant, SystemTime},
};
fn main() {
    let n = 100_000;
    let mut names = BTreeMap::new();
    for i in 0..n {
        let mut targets = vec![Target {
            address: std::net::Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8).into(),
            cluster: "c1".into(),
            region: "r1".into(),
            weight: 1,
        }];
        if i % 10 == 0 {
            targets.push(Target {
                address: "2001:db8::1".parse().unwrap(),
                cluster: "c1".into(),
                region: "r1".into(),
                weight: 1,
            });
        }
        names.insert(
            format!("host{i}"),
            NameRecords {
                address: Some(AddressSet {
                    ttl: 300,
                    targets,
                    max_answers: None,
                    geo: false,
                }),
                ..Default::default()
            },
        );
    }
    let snap = ZoneSnapshot {
        format: 1,
        zone: "bench.example.com".into(),
        revision: 1,
        decided_at: SystemTime::now(),
        names,
    };
    let zone: ZoneConfig = serde_json::from_value(serde_json::json!({"origin": "bench.example.com", "primaryNs": "ns1.bench.example.com", "hostmaster": "h.bench.example.com", "nameservers": ["ns1.bench.example.com"]})).unwrap();
    let bytes = persist::encode(&snap).unwrap();
    let geo = Arc::new(GeoTable::default());
    for _ in 0..5 {
        let t = Instant::now();
        let s = persist::decode(&bytes).unwrap();
        let d = t.elapsed();
        let t = Instant::now();
        let z = compile_zone(&zone, &s, &geo, CompileOptions::default());
        let c = t.elapsed();
        println!("decode {:?} compile {:?} ({} names)", d, c, z.names.len());
    }
}
