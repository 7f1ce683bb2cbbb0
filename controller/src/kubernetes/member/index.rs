//! What the two watch streams of one member cluster have delivered, reduced to the few
//! facts Lifeline uses. Pure: each stream feeds it through `apply` / `delete` / `reset`,
//! and [`Index::services_view`] answers for the services in scope.
//!
//! ```text
//!  Service stream ──► services: (ns, name) ──► LoadBalancer IPs / hostnames
//!  Slice stream   ──► slices:   (ns, slice) ─► owning service, ready addresses, count
//!                                   │
//!  scope {(ns, name)} ──────────────┴──► BTreeMap<(ns, name), ServiceView>
//! ```
//!
//! Only extracted facts are kept, never whole objects, so memory does not grow with the
//! size of a cluster's objects.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use tracing::debug;

use super::{SERVICE_NAME_LABEL, ServiceKey, ServiceView};

/// The facts of one Service.
#[derive(Debug, Clone, Default, PartialEq)]
struct ServiceFacts {
    load_balancer_ips: BTreeSet<IpAddr>,
    load_balancer_hostnames: BTreeSet<String>,
}

/// The facts of one EndpointSlice.
#[derive(Debug, Clone, Default, PartialEq)]
struct SliceFacts {
    /// `(namespace, kubernetes.io/service-name)`.
    service: ServiceKey,
    ready_addresses: Vec<IpAddr>,
    ready_endpoints: u32,
}

/// Everything the streams delivered, keyed by object `(namespace, name)`.
#[derive(Debug, Default)]
pub(super) struct Index {
    services: HashMap<ServiceKey, ServiceFacts>,
    slices: HashMap<ServiceKey, SliceFacts>,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ServiceKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn service_facts(svc: &Service) -> ServiceFacts {
    let mut facts = ServiceFacts::default();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for ing in ingress.into_iter().flatten() {
        if let Some(ip) = &ing.ip {
            match ip.parse() {
                Ok(ip) => {
                    facts.load_balancer_ips.insert(ip);
                }
                // A malformed status is the cluster's bug; skip it, keep the rest.
                Err(_) => debug!(%ip, "ignoring an unparsable load-balancer IP"),
            }
        }
        if let Some(h) = ing.hostname.as_ref().filter(|h| !h.is_empty()) {
            facts.load_balancer_hostnames.insert(h.clone());
        }
    }
    facts
}

fn slice_facts(slice: &EndpointSlice) -> Option<SliceFacts> {
    let (ns, _) = key(&slice.metadata);
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    let mut facts = SliceFacts {
        service: (ns, service),
        ..SliceFacts::default()
    };
    // FQDN slices name hosts, not addresses; they cannot become A/AAAA answers.
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return Some(facts);
    }
    for ep in slice.endpoints.iter().flatten() {
        // Kubernetes: an unset `ready` is to be read as ready.
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if !ready {
            continue;
        }
        facts.ready_endpoints += 1;
        facts
            .ready_addresses
            .extend(ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
    }
    Some(facts)
}

impl Index {
    pub(super) fn apply_service(&mut self, svc: &Service) {
        self.services.insert(key(&svc.metadata), service_facts(svc));
    }

    pub(super) fn delete_service(&mut self, svc: &Service) {
        self.services.remove(&key(&svc.metadata));
    }

    /// Replaces every Service with a fresh list's.
    pub(super) fn reset_services(&mut self, items: &[Service]) {
        self.services = items
            .iter()
            .map(|s| (key(&s.metadata), service_facts(s)))
            .collect();
    }

    pub(super) fn apply_slice(&mut self, slice: &EndpointSlice) {
        match slice_facts(slice) {
            Some(f) => {
                self.slices.insert(key(&slice.metadata), f);
            }
            // The label was removed: the slice no longer belongs to a service we know.
            None => {
                self.slices.remove(&key(&slice.metadata));
            }
        }
    }

    pub(super) fn delete_slice(&mut self, slice: &EndpointSlice) {
        self.slices.remove(&key(&slice.metadata));
    }

    /// Replaces every EndpointSlice with a fresh list's.
    pub(super) fn reset_slices(&mut self, items: &[EndpointSlice]) {
        self.slices = items
            .iter()
            .filter_map(|s| Some((key(&s.metadata), slice_facts(s)?)))
            .collect();
    }

    /// Objects held: what the selectors returned (the test of "lists only what policies
    /// reference").
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    /// The view of every service in scope; services the streams never mentioned appear
    /// with nothing found (zero ready endpoints).
    pub(super) fn services_view(
        &self,
        scope: &BTreeSet<ServiceKey>,
    ) -> BTreeMap<ServiceKey, ServiceView> {
        let mut out: BTreeMap<ServiceKey, ServiceView> = scope
            .iter()
            .map(|k| {
                let svc = self.services.get(k);
                let view = ServiceView {
                    service_found: svc.is_some(),
                    load_balancer_ips: svc.map(|s| s.load_balancer_ips.clone()).unwrap_or_default(),
                    load_balancer_hostnames: svc
                        .map(|s| s.load_balancer_hostnames.clone())
                        .unwrap_or_default(),
                    ..ServiceView::default()
                };
                (k.clone(), view)
            })
            .collect();
        for slice in self.slices.values() {
            if let Some(view) = out.get_mut(&slice.service) {
                view.endpoint_slices += 1;
                view.ready_endpoints = view.ready_endpoints.saturating_add(slice.ready_endpoints);
                view.ready_addresses
                    .extend(slice.ready_addresses.iter().copied());
            }
        }
        // A service with more ready addresses than a MemberCluster may list is answered
        // from the lowest of them: what one target costs (records, probes, decisions)
        // stays bounded by the same figure whichever way its addresses come.
        for (service, view) in &mut out {
            if view.ready_addresses.len() > lifeline_model::limits::CLUSTER_ADDRESSES_MAX {
                tracing::warn!(
                    namespace = %service.0,
                    service = %service.1,
                    ready = view.ready_addresses.len(),
                    kept = lifeline_model::limits::CLUSTER_ADDRESSES_MAX,
                    "more ready addresses than one target may have; the lowest are used"
                );
                while view.ready_addresses.len() > lifeline_model::limits::CLUSTER_ADDRESSES_MAX {
                    view.ready_addresses.pop_last();
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_with_more_endpoints_than_a_target_may_have_is_cut_to_the_bound() {
        let mut index = Index::default();
        let max = lifeline_model::limits::CLUSTER_ADDRESSES_MAX;
        // Slices of 1,000 endpoints (the API server's own cap), over the bound.
        let per_slice = 1000;
        for s in 0..(max / per_slice + 2) {
            let ips: Vec<String> = (0..per_slice)
                .map(|i| {
                    let n = s * per_slice + i;
                    format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255)
                })
                .collect();
            let ready: Vec<(&str, Option<bool>)> =
                ips.iter().map(|ip| (ip.as_str(), Some(true))).collect();
            index.apply_slice(&slice("shop", &format!("web-{s}"), "web", &ready));
        }
        let scope = BTreeSet::from([("shop".to_owned(), "web".to_owned())]);
        let view = &index.services_view(&scope)[&("shop".to_owned(), "web".to_owned())];
        assert_eq!(view.ready_addresses.len(), max);
        assert_eq!(
            view.ready_endpoints as usize,
            (max / per_slice + 2) * per_slice
        );
        assert_eq!(
            view.ready_addresses.first().copied(),
            Some("10.0.0.0".parse().unwrap()),
            "the lowest are kept"
        );
    }

    fn slice(ns: &str, name: &str, service: &str, ready: &[(&str, Option<bool>)]) -> EndpointSlice {
        let endpoints: Vec<_> = ready
            .iter()
            .map(|(ip, r)| json!({"addresses": [ip], "conditions": {"ready": r}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn service(ns: &str, name: &str, ips: &[&str]) -> Service {
        let ingress: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name},
            "status": {"loadBalancer": {"ingress": ingress}},
        }))
        .unwrap()
    }

    fn scope(keys: &[(&str, &str)]) -> BTreeSet<ServiceKey> {
        keys.iter()
            .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
            .collect()
    }

    #[test]
    fn ready_endpoints_add_up_across_slices_and_unset_ready_counts_as_ready() {
        let mut idx = Index::default();
        idx.apply_slice(&slice(
            "shop",
            "web-a",
            "web",
            &[("10.0.0.1", Some(true)), ("10.0.0.2", None)],
        ));
        idx.apply_slice(&slice("shop", "web-b", "web", &[("10.0.0.3", Some(false))]));
        idx.apply_slice(&slice("other", "web-c", "web", &[("10.9.9.9", Some(true))]));
        let view = idx.services_view(&scope(&[("shop", "web")]));
        let web = &view[&("shop".to_owned(), "web".to_owned())];
        assert_eq!((web.ready_endpoints, web.endpoint_slices), (2, 2));
        assert_eq!(web.ready_addresses.len(), 2);
        assert!(!web.service_found && !web.unhealthy_hint());
    }

    #[test]
    fn a_service_without_ready_endpoints_is_an_unhealthy_hint_and_keeps_its_ingress() {
        let mut idx = Index::default();
        idx.reset_services(&[service("shop", "web", &["192.0.2.7", "not-an-ip"])]);
        idx.apply_slice(&slice("shop", "web-a", "web", &[("10.0.0.1", Some(false))]));
        let view = idx.services_view(&scope(&[("shop", "web"), ("shop", "absent")]));
        let web = &view[&("shop".to_owned(), "web".to_owned())];
        assert!(web.service_found && web.unhealthy_hint());
        assert_eq!(web.load_balancer_ips.len(), 1);
        assert!(view[&("shop".to_owned(), "absent".to_owned())].unhealthy_hint());
    }

    #[test]
    fn deletes_and_resets_forget_objects() {
        let mut idx = Index::default();
        let s = slice("shop", "web-a", "web", &[("10.0.0.1", Some(true))]);
        idx.apply_slice(&s);
        idx.apply_service(&service("shop", "web", &[]));
        assert_eq!(idx.counts(), (1, 1));
        idx.delete_slice(&s);
        idx.reset_services(&[]);
        assert_eq!(idx.counts(), (0, 0));
    }
}
