//! Consistent hashing on a ring (Ketama-style): each instance owns `weight × 100` points, a key
//! goes to the first point at or after its hash. Adding or removing one of N instances moves
//! about 1/N of the keys, which is what session-sticky traffic needs.
//!
//! Hashes are FNV-1a with a 64-bit finaliser, computed the same way in every worker and on every
//! host, so all of them send a key to the same instance.

use super::{eligible, random::pick_random, Balancer, PickContext};
use crate::instance::Instance;

/// Ring points per unit of weight.
const POINTS_PER_WEIGHT: u32 = 100;
/// Cap on one instance's points, so a huge registry weight cannot blow the ring up.
const MAX_POINTS: u32 = 10_000;

/// A sorted ring of (hash, instance index).
pub struct ConsistentHash {
    ring: Vec<(u64, usize)>,
    order: Vec<usize>,
}

impl ConsistentHash {
    /// Builds the ring for `instances`.
    pub fn new(instances: &[Instance]) -> Self {
        let mut ring = Vec::new();
        for (idx, inst) in instances.iter().enumerate() {
            let points = inst.weight.saturating_mul(POINTS_PER_WEIGHT).min(MAX_POINTS);
            for p in 0..points {
                ring.push((hash_key(format!("{}-{p}", inst.address).as_bytes()), idx));
            }
        }
        ring.sort_unstable();
        ConsistentHash { ring, order: eligible(instances) }
    }
}

/// The key hash used by the ring; exposed so the proxy hashes request keys the same way.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV alone clusters similar strings ("10.0.0.1:80-1", "-2", …); mix the bits (splitmix64).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Balancer for ConsistentHash {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let Some(key) = ctx.key else {
            // No key (header or cookie absent): no affinity to keep, spread at random.
            return pick_random(&self.order, ctx);
        };
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(h, _)| *h < key);
        let n = self.ring.len();
        (0..n).map(|k| self.ring[(start + k) % n].1).find(|i| !(ctx.skip)(*i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::weighted_list;

    fn owner(b: &ConsistentHash, key: u64) -> usize {
        b.pick(&PickContext { key: Some(key), skip: &|_| false, load: &|_| 0 }).unwrap()
    }

    #[test]
    fn adding_one_of_five_instances_moves_about_a_fifth_of_the_keys() {
        let four = ConsistentHash::new(&weighted_list(&[1, 1, 1, 1]));
        let five = ConsistentHash::new(&weighted_list(&[1, 1, 1, 1, 1]));
        let keys: Vec<u64> =
            (0..10_000u32).map(|k| hash_key(format!("user-{k}").as_bytes())).collect();
        let moved = keys.iter().filter(|k| owner(&four, **k) != owner(&five, **k)).count();
        // Ideal is 2000; every moved key must have moved to the new instance.
        assert!((1400..2600).contains(&moved), "moved {moved} of 10000");
        assert!(keys.iter().all(|k| owner(&four, *k) == owner(&five, *k) || owner(&five, *k) == 4));
    }

    #[test]
    fn the_same_key_always_lands_on_the_same_instance_and_load_is_spread() {
        let b = ConsistentHash::new(&weighted_list(&[1, 1, 1]));
        let mut c = [0usize; 3];
        for k in 0..3000u32 {
            let key = hash_key(&k.to_be_bytes());
            let o = owner(&b, key);
            assert_eq!(o, owner(&b, key));
            c[o] += 1;
        }
        assert!(c.iter().all(|n| *n > 600), "{c:?}");
    }
}
