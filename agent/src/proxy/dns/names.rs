//! Which names each skill resolved to which addresses, through the agent's forwarder, for as
//! long as the answers live: how a connection to an address finds the backend declared by
//! name (as Cilium's FQDN policy does).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::lock::Locked as _;

/// Addresses remembered per skill; past it, expired entries go first, then those closest to
/// expiry. A skill resolving millions of names cannot grow the agent without bound; what is
/// forgotten only makes a later connection to that address unmatched (refused), never
/// matched to the wrong backend.
const MAX_ADDRESSES_PER_SKILL: usize = 16_384;

/// Names per address per skill (a CDN address can serve many names).
const MAX_NAMES_PER_ADDRESS: usize = 64;

/// Per address, the names resolved to it and until when each holds.
type Addresses = HashMap<IpAddr, Vec<(String, Instant)>>;

pub struct ResolvedNames {
    by_skill: Mutex<HashMap<String, Addresses>>,
    /// Bounds of how long an answer is remembered, whatever its TTL says.
    floor: Duration,
    cap: Duration,
}

impl ResolvedNames {
    pub fn new(floor: Duration, cap: Duration) -> Self {
        Self {
            by_skill: Mutex::new(HashMap::new()),
            floor,
            cap: cap.max(floor),
        }
    }

    /// Remembers that `names` (normalized) resolved to `address` for `skill`, for `ttl`
    /// seconds (within the floor and the cap).
    pub fn remember(&self, skill: &str, names: &[String], address: IpAddr, ttl: u32, now: Instant) {
        let lifetime = Duration::from_secs(u64::from(ttl)).clamp(self.floor, self.cap);
        let until = now + lifetime;
        let mut by_skill = self.by_skill.locked();
        let addresses = by_skill.entry(skill.to_owned()).or_default();
        let address = address.to_canonical();
        if !addresses.contains_key(&address) && addresses.len() >= MAX_ADDRESSES_PER_SKILL {
            evict(addresses, now);
        }
        let known = addresses.entry(address).or_default();
        known.retain(|(_, expires)| *expires > now);
        for name in names {
            if let Some(entry) = known.iter_mut().find(|(n, _)| n == name) {
                entry.1 = entry.1.max(until);
            } else if known.len() < MAX_NAMES_PER_ADDRESS {
                known.push((name.clone(), until));
            }
        }
    }

    /// The names `skill` resolved to `address` that are still alive.
    pub fn names_for(&self, skill: &str, address: IpAddr, now: Instant) -> Vec<String> {
        let by_skill = self.by_skill.locked();
        by_skill
            .get(skill)
            .and_then(|addresses| addresses.get(&address.to_canonical()))
            .map(|known| {
                known
                    .iter()
                    .filter(|(_, expires)| *expires > now)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Makes room for one more address: drops the expired, or else the one expiring first.
fn evict(addresses: &mut Addresses, now: Instant) {
    addresses.retain(|_, known| known.iter().any(|(_, expires)| *expires > now));
    if addresses.len() < MAX_ADDRESSES_PER_SKILL {
        return;
    }
    let soonest = addresses
        .iter()
        .min_by_key(|(_, known)| known.iter().map(|(_, e)| *e).max())
        .map(|(address, _)| *address);
    if let Some(address) = soonest {
        addresses.remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_live_as_long_as_their_ttl_within_floor_and_cap() {
        let names = ResolvedNames::new(Duration::from_secs(5), Duration::from_secs(60));
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        names.remember("a", &["orders.internal".to_owned()], ip, 0, now);
        names.remember("a", &["api.internal".to_owned()], mapped, 3600, now);
        assert_eq!(
            names.names_for("a", mapped, now),
            ["orders.internal", "api.internal"]
        );
        assert!(names.names_for("b", ip, now).is_empty());
        // TTL 0 lives for the floor; TTL 3600 for the cap.
        let later = now + Duration::from_secs(6);
        assert_eq!(names.names_for("a", ip, later), ["api.internal"]);
        assert!(
            names
                .names_for("a", ip, now + Duration::from_secs(61))
                .is_empty()
        );
    }

    #[test]
    fn a_skill_that_resolves_too_much_forgets_the_oldest() {
        let names = ResolvedNames::new(Duration::from_secs(1), Duration::from_secs(60));
        let now = Instant::now();
        for i in 0..=MAX_ADDRESSES_PER_SKILL as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
            names.remember("a", &["x.internal".to_owned()], ip, i % 50 + 1, now);
        }
        let count = names.by_skill.locked()["a"].len();
        assert_eq!(count, MAX_ADDRESSES_PER_SKILL);
    }
}
