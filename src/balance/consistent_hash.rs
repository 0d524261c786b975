//! `consistent_hash`: the same key goes to the same backend; a pool change moves few keys.
//!
//! # Maglev, and why
//!
//! The lookup structure is a Maglev table (Eisenbud et al., NSDI 2016): an array of `M` slots
//! (`M` prime, far larger than the pool) in which every backend in rotation owns a share of the
//! slots proportional to its weight. A key's hash names a slot, the slot names the backend, so a
//! pick is one multiplication and one load, O(1) whatever the pool size. The table is built once
//! per snapshot in [`ConsistentHash::new`] from exactly the backends in rotation; every
//! backend fills slots along its own permutation of the table (offset and step derived from its
//! `name`), taking turns in proportion to weight, until the table is full.
//!
//! Chosen over a hash ring with bounded loads because
//! - a pick is O(1) with a single memory access, where a ring is a binary search over
//!   `vnodes × n` points (O(log n), a cache miss per step);
//! - the shares are even by construction: with `M ≥ 100·n` each backend's share is within about
//!   1 % of its weight's, where a ring needs hundreds of virtual nodes per backend to get
//!   within 10 %;
//! - weights are exact proportions of turns, not counts of virtual nodes;
//! - disruption stays near the minimum: when a backend leaves, its own slots are refilled by the
//!   others and only a small fraction of the other slots change hands (measured in the tests:
//!   within one or two points of `1/n`).
//!
//! The bounded-load idea is kept as an option on top (`hash_balance_factor`, below), so
//! neither property is given up.
//!
//! # Stability
//!
//! The table depends only on the names, weights and order of the backends in rotation and on
//! `M`, which depends only on the number of *configured* backends (65537 up to 655 of them), so
//! a health flip never changes it. A backend that goes down is left out of the next snapshot's
//! table: its keys move to the others, and when it comes back the table is rebuilt exactly as
//! it was, so they return. Key hashes ([`hash_bytes`]) use fixed constants, not a per-process
//! seed: every lb instance with the same configuration sends a key to the same backend, also
//! after a restart.
//!
//! # Bounded loads (`hash_balance_factor = c`)
//!
//! With a factor, a backend may hold at most `c × average` requests (http) or sessions (tcp)
//! in flight, the average being the pool's in-flight total spread by weight:
//! `in_flight(b) < c · (total + 1) · weight(b) / Σ weights` (Mirrokni et al., "Consistent
//! Hashing with Bounded Loads", 2016). A key whose backend is full walks on along the table to
//! the next slot whose backend has room. Successive slots belong to pseudo-random backends, so
//! the overflow of one hot backend spreads over all the others instead of piling onto one
//! neighbour as on a ring. A backend with nothing in flight always has room, and because the
//! caps add up to more than the total some backend always has room; the walk gives up after
//! [`MAX_PROBES`] full backends and takes the least loaded of those it saw. The pool's total is
//! one shared counter kept by [`Pool::acquire`], so the check stays O(1). Keys then stick to
//! their backend only while it is not overloaded — the price of the bound.
//!
//! # Failover
//!
//! `tried` walks on along the table from the key's slot to the first backend not tried, so a
//! key's second choice is stable too.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderMap, Uri};

use super::{BackendSet, PickCtx, Strategy};
use crate::backend::Backend;
use crate::backend::Cursor;
use crate::config::{BalanceFactor, HashKey, HashOptions};

/// Table sizes: primes, each about twice the previous. A pool of `n` configured backends uses
/// the first one of at least `100 · n` (the Maglev paper's rule for even shares).
const TABLE_SIZES: [u64; 8] = [65_537, 131_101, 262_151, 524_309, 1_048_601, 2_097_211, 4_194_371, 8_388_739];

/// Full backends a bounded pick looks at before settling for the least loaded of them. With a
/// factor `c`, at most a `1/c` share of the table belongs to full backends, so running into
/// this many (at `c = 1.25`: probability 0.8^64 ≈ 10⁻⁶) means the counts are in flux anyway.
pub const MAX_PROBES: usize = 64;

/// Request keys are hashed here, on the request path; the key itself is config vocabulary.
impl HashKey {
    /// Hashes the request's key; a request without it (no such header, cookie or parameter, or
    /// an empty value) is hashed by its client IP.
    pub fn hash_request(self, headers: &HeaderMap, uri: &Uri, client: IpAddr) -> u64 {
        let value = match self {
            HashKey::ClientIp => None,
            HashKey::Uri => Some(uri.path_and_query().map_or("/", |pq| pq.as_str()).as_bytes()),
            HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            HashKey::Cookie(name) => cookie(headers, name),
            HashKey::Query(name) => uri.query().and_then(|q| query_param(q, name)),
        };
        match value {
            Some(value) if !value.is_empty() => hash_bytes(value),
            _ => hash_ip(client),
        }
    }
}

/// Maglev lookup over the backends in rotation, optionally with bounded loads.
#[derive(Debug)]
pub struct ConsistentHash {
    /// Slot → index into `set.backends`. Empty when no backend is in rotation.
    table: Vec<u32>,
    /// Sum of the weights of the backends in the table.
    total_weight: u64,
    balance_factor: Option<BalanceFactor>,
    /// Pool-wide in-flight count for the bound; also spreads key-less picks.
    cursor: Cursor,
}

impl ConsistentHash {
    /// Builds the table for the backends at the indices in `up`.
    pub fn new(backends: &[Arc<Backend>], up: &[usize], options: HashOptions, cursor: Cursor) -> Self {
        let size = table_size(backends.len());
        let members: Vec<(u32, &Backend)> =
            up.iter().filter_map(|&i| Some((u32::try_from(i).ok()?, &**backends.get(i)?))).collect();
        let total_weight = members.iter().map(|(_, b)| u64::from(b.weight.max(1))).sum();
        ConsistentHash {
            table: maglev_table(&members, size),
            total_weight,
            balance_factor: options.balance_factor,
            cursor,
        }
    }

    /// Walks the table from `start` (wrapping around) to the first backend not tried that has
    /// room under the bound.
    fn bounded_walk(
        &self,
        set: &BackendSet<'_>,
        start: usize,
        tried: &[usize],
        factor: BalanceFactor,
    ) -> Option<usize> {
        // After this request: total + 1. Room means in_flight < c · (total + 1) · w / W, which
        // for whole numbers is the same as in_flight + 1 <= ceil(c · (total + 1) · w / W).
        let total = self.cursor.in_flight.load(Ordering::Relaxed) as u128 + 1;
        let allowance = u128::from(factor.milli()) * total;
        let scale = 1000 * u128::from(self.total_weight);
        // (index, in_flight, weight) of the least loaded full backend seen.
        let mut lightest: Option<(usize, u128, u128)> = None;
        let mut probes = 0;
        let (before, after) = self.table.split_at(start);
        for index in after.iter().chain(before).map(|&i| i as usize) {
            if tried.contains(&index) {
                continue;
            }
            let backend = &set.backends[index];
            let (in_flight, weight) = (backend.in_flight() as u128, u128::from(backend.weight.max(1)));
            if in_flight * scale < allowance * weight {
                return Some(index);
            }
            if lightest.is_none_or(|(_, f, w)| in_flight * w < f * weight) {
                lightest = Some((index, in_flight, weight));
            }
            probes += 1;
            if probes >= MAX_PROBES {
                break;
            }
        }
        lightest.map(|(index, _, _)| index)
    }
}

impl Strategy for ConsistentHash {
    fn pick(&self, set: &BackendSet<'_>, ctx: &PickCtx<'_>) -> Option<usize> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        // The proxies always pass a key for this strategy; without one (a caller that does not
        // know the strategy), spread picks rather than send them all to one slot.
        let hash = ctx.key_hash.unwrap_or_else(|| mix(self.cursor.position.fetch_add(1, Ordering::Relaxed) as u64));
        let start = slot(hash, len);
        let tried = ctx.tried;
        if tried.is_empty() && self.balance_factor.is_none() {
            return Some(self.table[start] as usize);
        }
        // Every backend in rotation owns at least one slot, so a walk finds any untried one;
        // answer "all tried" at once instead of walking the whole table.
        if tried.len() >= set.up.len() && set.up.iter().all(|index| tried.contains(index)) {
            return None;
        }
        match self.balance_factor {
            Some(factor) => self.bounded_walk(set, start, tried, factor),
            None => {
                let (before, after) = self.table.split_at(start);
                after.iter().chain(before).map(|&index| index as usize).find(|index| !tried.contains(index))
            }
        }
    }
}

/// The table size for a pool of `configured` backends (in or out of rotation).
fn table_size(configured: usize) -> u64 {
    let wanted = 100 * configured as u64;
    TABLE_SIZES.iter().copied().find(|&size| size >= wanted).unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// The slot of `hash` in a table of `len`: the high bits of `hash · len`, uniform for a
/// well-mixed hash and cheaper than a division.
fn slot(hash: u64, len: usize) -> usize {
    ((u128::from(hash) * len as u128) >> 64) as usize
}

/// Maglev population with weights. `members` are (backend index, backend) in rotation, in
/// pool order; returns `size` slots of backend indices (empty when `members` is).
///
/// Each member walks its own permutation of the slots, `offset + k · skip (mod size)`, taking
/// the next free slot on each of its turns. Turns go in rounds as in Envoy's weighted Maglev:
/// in round `t` a member of weight `w` takes a turn when `t · w` has reached `turns · w_max`,
/// so every member takes one turn in round 1 (each owns at least one slot) and afterwards turns
/// come in proportion to weight. A heap ordered by (round, member) replays exactly that loop
/// without visiting members whose turn has not come, O(size · log n) overall.
fn maglev_table(members: &[(u32, &Backend)], size: u64) -> Vec<u32> {
    if members.is_empty() {
        return Vec::new();
    }
    struct Walker {
        next: u64,
        skip: u64,
        weight: u64,
        turns: u64,
    }
    let max_weight = members.iter().map(|(_, b)| u64::from(b.weight.max(1))).max().unwrap_or(1);
    let mut walkers: Vec<Walker> = members
        .iter()
        .map(|(_, b)| Walker {
            next: hash_seeded(b.name.as_bytes(), SEED_OFFSET) % size,
            skip: hash_seeded(b.name.as_bytes(), SEED_SKIP) % (size - 1) + 1,
            weight: u64::from(b.weight.max(1)),
            turns: 0,
        })
        .collect();
    const FREE: u32 = u32::MAX;
    let len = size as usize;
    let mut table = vec![FREE; len];
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..walkers.len()).map(|m| Reverse((1, m))).collect();
    let mut filled = 0;
    while filled < len {
        let Some(Reverse((round, member))) = heap.pop() else { break };
        let walker = &mut walkers[member];
        // `size` is prime and `skip` in 1..size, so the walk visits every slot: a free one is found.
        while table[walker.next as usize] != FREE {
            walker.next = (walker.next + walker.skip) % size;
        }
        table[walker.next as usize] = members[member].0;
        walker.next = (walker.next + walker.skip) % size;
        walker.turns += 1;
        filled += 1;
        // Next round in which round · weight >= turns · max_weight, and at least the next one.
        let due = (walker.turns * max_weight).div_ceil(walker.weight);
        heap.push(Reverse((due.max(round + 1), member)));
    }
    table
}

const SEED_OFFSET: u64 = 0x6c62_2d6f_6666_7365; // "lb-offse"
const SEED_SKIP: u64 = 0x6c62_2d73_6b69_7021; // "lb-skip!"
const SEED_KEY: u64 = 0;
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Hash of a key's bytes, the same in every lb process and on every platform (no random seed):
/// 8 bytes at a time, multiply-rotate, then murmur3's finaliser so every output bit depends on
/// every input bit.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    hash_seeded(bytes, SEED_KEY)
}

/// Hash of a client address; an IPv4 address written as IPv4-mapped IPv6 hashes as itself.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

fn hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(MULTIPLIER);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(MULTIPLIER).rotate_left(31);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(MULTIPLIER).rotate_left(31);
    }
    mix(h)
}

/// murmur3's 64-bit finaliser.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The value of cookie `name` in the request's `Cookie` header(s) (HTTP/2 may split them).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().flat_map(|v| v.as_bytes().split(|&b| b == b';')).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// The raw value of the first parameter `name` in a query string.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::StrategyKind;
    use crate::pool::{Pool, PoolSettings};

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Backend::new(format!("b{i}"), ([10, 0, 0, i as u8], 80).into(), w)))
            .collect()
    }

    fn pool_of(backends: Vec<Arc<Backend>>, up: Vec<usize>, options: HashOptions) -> Pool {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            retries: 2,
            ..Default::default()
        };
        let kind = StrategyKind::ConsistentHash(options);
        Pool::new("test".into(), backends, up, kind, Arc::new(settings), Cursor::default())
    }

    fn pool(weights: &[u32], up: Vec<usize>) -> Pool {
        pool_of(backends(weights), up, HashOptions::default())
    }

    fn all_up(weights: &[u32]) -> Pool {
        pool(weights, (0..weights.len()).collect())
    }

    /// 10,000 distinct keys, hashed as the proxy would hash `header:x-user` values.
    fn keys() -> Vec<u64> {
        (0..10_000).map(|i| hash_bytes(format!("user-{i}").as_bytes())).collect()
    }

    fn pick(pool: &Pool, key: u64, tried: &[usize]) -> Option<usize> {
        pool.pick(&PickCtx::new(tried).with_key(key))
    }

    /// Backend *name* per key, so that pools with different index layouts compare.
    fn assignment(pool: &Pool, keys: &[u64]) -> Vec<String> {
        keys.iter().map(|&k| pool.backends[pick(pool, k, &[]).unwrap()].name.clone()).collect()
    }

    fn moved(before: &[String], after: &[String]) -> f64 {
        before.iter().zip(after).filter(|(a, b)| a != b).count() as f64 / before.len() as f64
    }

    fn shares(pool: &Pool, keys: &[u64]) -> Vec<f64> {
        let mut counts = vec![0usize; pool.backends.len()];
        for &k in keys {
            counts[pick(pool, k, &[]).unwrap()] += 1;
        }
        counts.iter().map(|&c| c as f64 / keys.len() as f64).collect()
    }

    #[test]
    fn the_same_key_goes_to_the_same_backend() {
        let pool = all_up(&[1, 1, 1, 1, 1]);
        let keys = keys();
        let first = assignment(&pool, &keys);
        for _ in 0..3 {
            assert_eq!(assignment(&pool, &keys), first);
        }
        // A new snapshot of the same pool (e.g. after a reload that changed nothing) agrees.
        let again = all_up(&[1, 1, 1, 1, 1]);
        assert_eq!(assignment(&again, &keys), first);
    }

    #[test]
    fn keys_spread_evenly() {
        let pool = all_up(&[1; 5]);
        // 2000 keys expected each, standard deviation ~40: ±10% is five deviations.
        for (i, share) in shares(&pool, &keys()).into_iter().enumerate() {
            assert!((0.18..0.22).contains(&share), "backend {i}: {share}");
        }
    }

    #[test]
    fn table_shares_are_within_one_percent_of_the_weights() {
        let weights = [1, 2, 3, 4, 10];
        let pool = all_up(&weights);
        let strategy = ConsistentHash::new(&pool.backends, &pool.up, HashOptions::default(), Cursor::default());
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let owned = strategy.table.iter().filter(|&&b| b as usize == i).count() as f64;
            let share = owned / strategy.table.len() as f64;
            let expected = f64::from(w) / f64::from(total);
            assert!((share - expected).abs() < 0.01 * expected.max(0.1), "backend {i}: {share} vs {expected}");
        }
    }

    #[test]
    fn weights_are_respected_in_proportion() {
        let pool = all_up(&[1, 2, 3, 4]);
        let shares = shares(&pool, &keys());
        for (i, share) in shares.iter().enumerate() {
            let expected = (i + 1) as f64 / 10.0;
            assert!((share - expected).abs() < 0.02, "backend {i}: {share} vs {expected} ({shares:?})");
        }
    }

    #[test]
    fn removing_a_backend_moves_about_one_nth_of_the_keys() {
        let keys = keys();
        for n in [3, 5, 10, 20] {
            let all = backends(&vec![1; n]);
            let before = assignment(&pool_of(all.clone(), (0..n).collect(), HashOptions::default()), &keys);
            for removed in [0, n / 2, n - 1] {
                // Removed from the configuration: a smaller pool without it.
                let kept: Vec<Arc<Backend>> =
                    all.iter().enumerate().filter(|&(i, _)| i != removed).map(|(_, b)| b.clone()).collect();
                let after = assignment(&pool_of(kept, (0..n - 1).collect(), HashOptions::default()), &keys);
                let share = moved(&before, &after);
                assert!(share <= 1.0 / n as f64 + 0.05, "n={n}, removed {removed}: {share:.3} moved");
                // Every key of the removed backend had to move; no other key moved to a
                // backend other than by the refill.
                let name = format!("b{removed}");
                assert!(before.iter().zip(&after).all(|(b, a)| b != &name || a != &name));
            }
        }
    }

    #[test]
    fn adding_a_backend_moves_about_one_nth_of_the_keys() {
        let keys = keys();
        for n in [3, 5, 10, 20] {
            let all = backends(&vec![1; n + 1]);
            let before = assignment(&pool_of(all[..n].to_vec(), (0..n).collect(), HashOptions::default()), &keys);
            let after = assignment(&pool_of(all.clone(), (0..=n).collect(), HashOptions::default()), &keys);
            let share = moved(&before, &after);
            let ideal = 1.0 / (n + 1) as f64;
            assert!(share <= ideal + 0.05, "n={n}: {share:.3} moved, ideal {ideal:.3}");
            // The keys that moved went to the new backend, nearly all of them.
            let to_new = before.iter().zip(&after).filter(|(b, a)| b != a && **a == format!("b{n}")).count();
            let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            assert!(to_new as f64 >= 0.9 * changed as f64, "n={n}: {to_new} of {changed} to the new backend");
        }
    }

    #[test]
    fn a_down_backend_s_keys_move_and_come_back_when_it_returns() {
        let keys = keys();
        let all = backends(&[1; 5]);
        let up = pool_of(all.clone(), vec![0, 1, 2, 3, 4], HashOptions::default());
        let before = assignment(&up, &keys);
        let down = up.with_up(vec![0, 1, 3, 4]);
        let during = assignment(&down, &keys);
        // Every key of b2 moved (to the others, spread), and only about those did.
        assert!(before.iter().zip(&during).all(|(b, d)| b != "b2" || d != "b2"));
        let share = moved(&before, &during);
        assert!(share <= 0.2 + 0.05, "{share:.3} moved");
        // Back up: exactly the original assignment.
        let back = down.with_up(vec![0, 1, 2, 3, 4]);
        assert_eq!(assignment(&back, &keys), before);
    }

    #[test]
    fn tables_are_fixed_across_processes() {
        // Pinned like the key hashes: same names and weights, same table, in every lb.
        let pool = all_up(&[1, 2, 1]);
        let strategy = ConsistentHash::new(&pool.backends, &pool.up, HashOptions::default(), Cursor::default());
        assert_eq!(strategy.table[..16], [0, 0, 0, 2, 1, 1, 2, 2, 1, 0, 0, 2, 0, 0, 0, 0]);
        // And the weights are exact to the slot: 65537 = 16385 + 32768 + 16384.
        let counts = [0, 1, 2].map(|b| strategy.table.iter().filter(|&&i| i == b).count());
        assert_eq!(counts, [16385, 32768, 16384]);
    }

    #[test]
    fn the_table_size_does_not_depend_on_health() {
        assert_eq!(table_size(1), 65_537);
        assert_eq!(table_size(655), 65_537);
        assert_eq!(table_size(656), 131_101);
        let pool = pool(&[1, 1, 1], vec![1]);
        let strategy = ConsistentHash::new(&pool.backends, &pool.up, HashOptions::default(), Cursor::default());
        assert_eq!(strategy.table.len(), 65_537);
        assert!(strategy.table.iter().all(|&b| b == 1));
    }

    #[test]
    fn tried_backends_are_skipped_along_the_table() {
        let pool = all_up(&[1, 1, 1, 1]);
        for key in keys().into_iter().take(500) {
            let first = pick(&pool, key, &[]).unwrap();
            let second = pick(&pool, key, &[first]).unwrap();
            assert_ne!(second, first);
            // The fallback is stable per key too.
            assert_eq!(pick(&pool, key, &[first]), Some(second));
            let third = pick(&pool, key, &[first, second]).unwrap();
            assert!(third != first && third != second);
        }
    }

    #[test]
    fn none_when_every_up_backend_was_tried() {
        let pool = pool(&[1, 1, 1], vec![0, 2]);
        let key = hash_bytes(b"k");
        assert_eq!(pick(&pool, key, &[0, 2]), None);
        assert_eq!(pick(&pool, key, &[2, 1, 0]), None);
        assert_eq!(pick(&pool, key, &[0]), Some(2));
        // A backend with a tiny share of the table is still found.
        let pool = all_up(&[1000, 1000, 1]);
        for key in keys().into_iter().take(50) {
            assert_eq!(pick(&pool, key, &[0, 1]), Some(2));
        }
    }

    #[test]
    fn picks_without_a_key_spread() {
        let pool = all_up(&[1, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[pool.pick(&PickCtx::new(&[])).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    fn bounded(weights: &[u32], factor: f64) -> Pool {
        let options = HashOptions { key: HashKey::ClientIp, balance_factor: BalanceFactor::new(factor) };
        pool_of(backends(weights), (0..weights.len()).collect(), options)
    }

    #[test]
    fn bounded_loads_cap_every_backend_at_factor_times_average() {
        let pool = bounded(&[1, 1, 1, 1], 1.25);
        let mut guards = Vec::new();
        // Every request has the same key: without the bound all 400 would pile onto one backend.
        let key = hash_bytes(b"hot");
        let home = pick(&pool, key, &[]).unwrap();
        for placed in 0..400usize {
            let index = pick(&pool, key, &[]).unwrap();
            guards.push(pool.acquire(index));
            let cap = (1.25 * (placed + 1) as f64 / 4.0).ceil() as usize;
            for (i, b) in pool.backends.iter().enumerate() {
                assert!(b.in_flight() <= cap.max(1), "backend {i}: {} > {cap} after {placed}", b.in_flight());
            }
        }
        assert_eq!(pool.cursor.in_flight.load(Ordering::Relaxed), 400);
        assert!(pool.backends[home].in_flight() >= 100);
        drop(guards);
        assert_eq!(pool.cursor.in_flight.load(Ordering::Relaxed), 0);
        assert!(pool.backends.iter().all(|b| b.in_flight() == 0));
    }

    #[test]
    fn bounded_loads_keep_keys_sticky_while_nothing_is_overloaded() {
        let pool = bounded(&[1, 1, 1, 1, 1], 1.25);
        let unbounded = all_up(&[1; 5]);
        // One request at a time: every backend always has room, so the bound changes nothing.
        for key in keys() {
            let index = pick(&pool, key, &[]).unwrap();
            assert_eq!(Some(index), pick(&unbounded, key, &[]));
            drop(pool.acquire(index));
        }
    }

    #[test]
    fn bounded_loads_honour_weights() {
        let pool = bounded(&[1, 3], 1.5);
        let key = hash_bytes(b"hot");
        let guards: Vec<_> = (0..400).map(|_| pool.acquire(pick(&pool, key, &[]).unwrap())).collect();
        // Caps: 1.5 · 400 · 1/4 = 150 and 1.5 · 400 · 3/4 = 450.
        assert!(pool.backends[0].in_flight() <= 150, "{}", pool.backends[0].in_flight());
        assert_eq!(guards.len(), 400);
    }

    #[test]
    fn bounded_loads_respect_tried() {
        let pool = bounded(&[1, 1, 1], 1.1);
        let key = hash_bytes(b"k");
        let _guards: Vec<_> = (0..30).map(|_| pool.acquire(pick(&pool, key, &[]).unwrap())).collect();
        for tried in [vec![0], vec![1], vec![2], vec![0, 1], vec![1, 2], vec![0, 2]] {
            let index = pick(&pool, key, &tried).unwrap();
            assert!(!tried.contains(&index));
        }
        assert_eq!(pick(&pool, key, &[0, 1, 2]), None);
    }

    #[test]
    fn only_load_bounded_pools_count_the_pool_total() {
        let pool = all_up(&[1, 1]);
        let _guard = pool.acquire(0);
        assert_eq!(pool.cursor.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(pool.backends[0].in_flight(), 1);
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> (HeaderMap, Uri) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        (map, uri.parse().unwrap())
    }

    #[test]
    fn request_keys_are_read_from_the_request() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let by_ip = hash_ip(ip);
        // (key, request target, headers, the bytes that must be hashed: `None` for the client IP)
        type Case<'a> = (HashKey, &'a str, &'a [(&'a str, &'a str)], Option<&'a [u8]>);
        let cases: [Case<'_>; 12] = [
            (HashKey::ClientIp, "/a?b=c", &[("x-user", "u1")], None),
            (HashKey::Header("x-user"), "/", &[("x-user", "u1"), ("x-user", "u2")], Some(b"u1")),
            (HashKey::Header("x-user"), "/", &[], None),
            (HashKey::Header("x-user"), "/", &[("x-user", "")], None),
            (HashKey::Cookie("sid"), "/", &[("cookie", "a=1; sid=abc; b=2")], Some(b"abc")),
            (HashKey::Cookie("sid"), "/", &[("cookie", "a=1"), ("cookie", "sid=xyz")], Some(b"xyz")),
            (HashKey::Cookie("sid"), "/", &[("cookie", "sidx=1; asid=2")], None),
            (HashKey::Uri, "/path/x?q=1", &[], Some(b"/path/x?q=1")),
            (HashKey::Uri, "http://example.com/p?q", &[], Some(b"/p?q")),
            (HashKey::Query("id"), "/p?a=1&id=42&id=43", &[], Some(b"42")),
            (HashKey::Query("id"), "/p?idx=1", &[], None),
            (HashKey::Query("id"), "/p", &[], None),
        ];
        for (key, uri, headers, expected) in cases {
            let (headers, uri) = request(uri, headers);
            let want = expected.map_or(by_ip, hash_bytes);
            assert_eq!(key.hash_request(&headers, &uri, ip), want, "{key} {uri} {headers:?}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_hash_as_ipv4() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(hash_ip(v4), hash_ip(mapped));
        assert_ne!(hash_ip(v4), hash_ip("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn key_hashes_are_fixed_across_processes() {
        // Pinned: a change here would re-map every key of every deployed pool, and lb instances
        // of different versions would disagree.
        assert_eq!(hash_bytes(b"user-1"), 0xc7d8_bcc7_dfdc_99b9);
        assert_eq!(hash_ip("192.0.2.7".parse().unwrap()), 0xdfd7_f00c_f304_cd07);
        assert_ne!(hash_bytes(b"user-1"), hash_bytes(b"user-2"));
        assert_ne!(hash_bytes(b"abcdefgh1"), hash_bytes(b"abcdefgh2"));
    }
}
