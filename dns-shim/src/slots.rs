//! Counted places under a limit per key: TCP connections per client prefix, zone
//! transfers per zone and per client prefix. A place is given back when its [`Slot`] is
//! dropped, however the work holding it ended.

use std::{collections::HashMap, hash::Hash, net::IpAddr, sync::Arc};

use parking_lot::Mutex;

/// Places taken, by key.
#[derive(Debug)]
pub(crate) struct Slots<K: Hash + Eq + Clone>(Arc<Mutex<HashMap<K, usize>>>);

impl<K: Hash + Eq + Clone> Default for Slots<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

/// One place taken under a key.
#[derive(Debug)]
pub(crate) struct Slot<K: Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// A place under `key`, unless `max` are taken already.
    pub(crate) fn take(&self, key: K, max: usize) -> Option<Slot<K>> {
        let mut counts = self.0.lock();
        let n = counts.entry(key.clone()).or_default();
        if *n >= max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.0.clone(),
            key,
        })
    }

    /// Places taken under `key` now.
    #[cfg(test)]
    pub(crate) fn taken(&self, key: &K) -> usize {
        self.0.lock().get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Places taken by zone transfers in progress, per zone apex and per client prefix.
#[derive(Debug, Default)]
pub(crate) struct Transfers {
    pub(crate) zones: Slots<Box<[u8]>>,
    pub(crate) prefixes: Slots<u128>,
}

/// The client prefix an address counts under: its /24 (IPv4) or /56 (IPv6).
pub(crate) fn prefix_of(ip: IpAddr) -> u128 {
    // IPv4 clients of a dual-stack listener arrive IPv4-mapped; counted as IPv6 they
    // would all share the one /56 holding `::ffff:0:0/96`.
    match ip.to_canonical() {
        // Tagged so an IPv4 /24 never collides with an IPv6 /56.
        IpAddr::V4(v4) => (1u128 << 64) | u128::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => u128::from(v6) >> 72,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_count_by_their_own_prefix() {
        let mapped = |c: u8| IpAddr::V6(Ipv4Addr::new(198, 51, c, 7).to_ipv6_mapped());
        let plain = |c: u8| IpAddr::V4(Ipv4Addr::new(198, 51, c, 9));
        assert_eq!(prefix_of(mapped(1)), prefix_of(plain(1)));
        assert_ne!(
            prefix_of(mapped(1)),
            prefix_of(mapped(2)),
            "two /24s must not share slots"
        );
    }

    #[test]
    fn places_are_given_back_when_dropped() {
        let slots = Slots::default();
        let a = slots.take("z", 2).unwrap();
        let b = slots.take("z", 2).unwrap();
        assert!(slots.take("z", 2).is_none(), "the third is over the limit");
        assert!(
            slots.take("y", 2).is_some(),
            "another key has its own places"
        );
        drop(a);
        assert_eq!(slots.taken(&"z"), 1);
        let _c = slots.take("z", 2).unwrap();
        drop(b);
        assert!(slots.take("none", 0).is_none());
        assert_eq!(slots.taken(&"none"), 0);
    }
}
