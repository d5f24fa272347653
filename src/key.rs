//! Keys: hashing caller bytes (and an optional scope) into the 128-bit identity the engine stores,
//! and splitting that hash into shard, tag and home-bucket bits that never overlap.
//!
//! ```text
//!  hi: [ shard bits (top) | ........................ | tag (low 8 bits) ]
//!  lo: [ home group (top bits, via a multiply-shift over the group count) .. ]
//! ```
//! The shard comes from the top of `hi`, the in-table tag from the bottom byte of `hi`, and the
//! home group from `lo`, so the bits that pick a shard say nothing about where a key sits inside
//! it: an attacker who could aim keys at one shard still could not aim them at one probe chain,
//! and without the seed they can do neither.

use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed, Xxh3};

/// Tag bytes below this value are reserved: 0 marks an empty slot (1 marked a tombstone before
/// tables counted overflow instead, and stays unused).
pub(crate) const FIRST_TAG: u8 = 2;

/// Longest scope + key hashed from a stack buffer; longer input streams through the hasher.
const STACK_INPUT: usize = 512;

/// Mixed into the seed for ids claimed directly, so they are hashed by another function than
/// `(scope, key)` pairs.
const ID_DOMAIN: u64 = 0x6964_2d64_6f6d_6169;

/// The 128-bit identity of a key within one store (one seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyHash {
    pub(crate) hi: u64,
    pub(crate) lo: u64,
}

impl KeyHash {
    #[inline]
    fn from_u128(h: u128) -> Self {
        Self {
            hi: (h >> 64) as u64,
            lo: h as u64,
        }
    }

    /// The shard for a store of `1 << shard_bits` shards: the top bits of `hi`.
    #[inline]
    pub(crate) fn shard(&self, shard_bits: u32) -> usize {
        debug_assert!(shard_bits < 64);
        // `hi >> (64 - shard_bits)` without a branch for `shard_bits == 0`, whose shift by 64
        // would overflow: the first shift clears the top bit, the second takes `shard_bits`.
        (self.hi >> 1 >> (63 - shard_bits)) as usize
    }

    /// The tag byte stored beside the slot: the low byte of `hi`, never below [`FIRST_TAG`].
    #[inline]
    pub(crate) fn tag(&self) -> u8 {
        (self.hi as u8).max(FIRST_TAG)
    }

    /// The home group among `groups` groups: a multiply-shift of `lo`, so the group count
    /// need not be a power of two (which lets tables grow by less than 2x).
    #[inline]
    pub(crate) fn home(&self, groups: usize) -> usize {
        ((u128::from(self.lo) * groups as u128) >> 64) as usize
    }
}

/// Hashes `(scope, key)` with the store's seed. The scope is length-prefixed, so
/// `("ab", "c")` and `("a", "bc")` never meet; an empty scope is "no scope".
#[inline]
pub(crate) fn hash_key(seed: u64, scope: &[u8], key: &[u8]) -> KeyHash {
    let prefix = (scope.len() as u32).to_le_bytes();
    let total = prefix.len() + scope.len() + key.len();
    if total <= STACK_INPUT {
        let mut buf = [0u8; STACK_INPUT];
        buf[..4].copy_from_slice(&prefix);
        buf[4..4 + scope.len()].copy_from_slice(scope);
        buf[4 + scope.len()..total].copy_from_slice(key);
        KeyHash::from_u128(xxh3_128_with_seed(&buf[..total], seed))
    } else {
        // The streaming hasher gives the same digest as one-shot over the concatenation.
        let mut h = Xxh3::with_seed(seed);
        h.update(&prefix);
        h.update(scope);
        h.update(key);
        KeyHash::from_u128(h.digest128())
    }
}

/// Round constants of [`IdKeys::hash`]'s Feistel network: a key part xored in (with the seed), the
/// first hex digits of pi, and an odd multiplier per round (the golden ratio's and e's digits,
/// and two of xxHash's 64-bit primes).
const ID_ROUNDS: [(u64, u64); 4] = [
    (0x243F_6A88_85A3_08D3, 0x9E37_79B9_7F4A_7C15),
    (0x1319_8A2E_0370_7344, 0xB7E1_5162_8AED_2A6B),
    (0xA409_3822_299F_31D0, 0xC2B2_AE3D_27D4_EB4F),
    (0x082E_FA98_EC4E_6C89, 0x1656_67B1_9E37_79F9),
];

/// The high and low halves of a 64 x 64-bit product, xored: every bit of the result depends
/// on every bit of `x` (the mixing step of foldhash and wyhash).
#[inline(always)]
fn fold(x: u64, m: u64) -> u64 {
    let p = u128::from(x) * u128::from(m);
    (p as u64) ^ ((p >> 64) as u64)
}

/// [`IdKeys::hash`] under `seed`'s keys.
#[cfg(test)]
pub(crate) fn hash_id(seed: u64, id: u128) -> KeyHash {
    IdKeys::new(seed).hash(id)
}

/// The round keys of [`IdKeys::hash`] under one seed, worked out once per store: the seed, the
/// ids' domain and each round's constant xored, which leaves a round a load, an xor and a
/// multiply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdKeys([u64; 4]);

impl IdKeys {
    /// The keys under `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(ID_ROUNDS.map(|(c, _)| seed ^ ID_DOMAIN ^ c))
    }

    /// Hashes a caller's own 128-bit id: a keyed permutation of the 128-bit space, four rounds
    /// of a Feistel network whose round function is a folded multiply of one half keyed by the
    /// seed. Being a permutation, it gives distinct ids distinct identities (no collision at
    /// all, where hashing bytes leaves a 2^-128 chance), and it costs a fraction of hashing the
    /// id's 16 bytes with xxh3. The seed is mixed with a domain constant, so an id and a
    /// `(scope, key)` pair (whose identity is an xxh3 digest) meet only by a 128-bit collision.
    #[inline(always)]
    pub(crate) fn hash(&self, id: u128) -> KeyHash {
        let mut l = (id >> 64) as u64;
        let mut r = id as u64;
        for (k, (_, m)) in self.0.iter().zip(ID_ROUNDS) {
            let next = l ^ fold(r ^ k, m);
            l = r;
            r = next;
        }
        KeyHash { hi: l, lo: r }
    }
}

/// Hashes a caller's 128-bit id within a (non-empty) scope: xxh3 of the scope and the id's 16
/// bytes as for a key of bytes, under a seed of the ids' domain, so a scoped id never takes the
/// identity of the same 16 bytes claimed as a key (or of an unscoped id, but by a 128-bit
/// collision).
#[inline]
pub(crate) fn hash_scoped_id(seed: u64, scope: &[u8], id: u128) -> KeyHash {
    hash_key(seed ^ ID_DOMAIN, scope, &id.to_le_bytes())
}

/// Hashes a payload fingerprint to the 64 bits the store keeps; never 0, which means "none".
#[inline]
pub(crate) fn hash_fingerprint(seed: u64, bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, seed ^ 0x9E37_79B9_7F4A_7C15).max(1)
}

#[cfg(all(test, not(idemstore_loom)))]
mod tests {
    use super::*;

    #[test]
    fn scope_is_length_prefixed() {
        assert_ne!(hash_key(1, b"ab", b"c"), hash_key(1, b"a", b"bc"));
        assert_ne!(hash_key(1, b"", b"abc"), hash_key(1, b"a", b"bc"));
        assert_eq!(hash_key(1, b"t", b"k"), hash_key(1, b"t", b"k"));
    }

    #[test]
    fn seed_changes_every_hash() {
        assert_ne!(hash_key(1, b"", b"k"), hash_key(2, b"", b"k"));
        assert_ne!(hash_id(1, 7), hash_id(2, 7));
    }

    #[test]
    fn long_input_streams_to_the_same_digest() {
        let scope = vec![7u8; 300];
        let key = vec![9u8; 300];
        let streamed = hash_key(5, &scope, &key);
        let mut joined = (scope.len() as u32).to_le_bytes().to_vec();
        joined.extend_from_slice(&scope);
        joined.extend_from_slice(&key);
        assert_eq!(streamed, KeyHash::from_u128(xxh3_128_with_seed(&joined, 5)));
    }

    /// [`hash_id`] run backwards: the Feistel rounds in reverse order.
    fn unhash_id(seed: u64, h: KeyHash) -> u128 {
        let key = seed ^ ID_DOMAIN;
        let (mut l, mut r) = (h.hi, h.lo);
        for (c, m) in ID_ROUNDS.into_iter().rev() {
            let prev = r ^ fold(l ^ key ^ c, m);
            r = l;
            l = prev;
        }
        (u128::from(l) << 64) | u128::from(r)
    }

    #[test]
    fn ids_hash_to_a_permutation() {
        for seed in [0, 1, 0xDEAD_BEEF] {
            for id in (0..1000u128).chain([u128::MAX, 1 << 64, u128::from(u64::MAX)]) {
                let id = id.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
                assert_eq!(unhash_id(seed, hash_id(seed, id)), id);
            }
        }
    }

    /// Sequential ids, the most regular input a caller can give, land evenly on shards, tags
    /// and home groups: no cell's count is off by more than six standard deviations.
    #[test]
    fn sequential_ids_spread_evenly() {
        let n = 1 << 18;
        let mut shards = vec![0u32; 256];
        let mut tags = vec![0u32; 256];
        let mut homes = vec![0u32; 1000];
        for id in 0..n {
            let h = hash_id(7, id);
            shards[h.shard(8)] += 1;
            tags[h.hi as u8 as usize] += 1;
            homes[h.home(1000)] += 1;
        }
        for (name, counts) in [("shard", &shards), ("tag", &tags), ("home", &homes)] {
            let mean = n as f64 / counts.len() as f64;
            let bound = 6.0 * mean.sqrt();
            for (i, &c) in counts.iter().enumerate() {
                assert!(
                    (f64::from(c) - mean).abs() < bound,
                    "{name} {i}: {c}, mean {mean}"
                );
            }
        }
    }

    /// Flipping any one bit of an id flips each bit of its identity about half the time.
    #[test]
    fn one_bit_of_an_id_changes_every_bit_of_its_identity() {
        let samples = 2000u32;
        for bit in 0..128 {
            let mut flips = [0u32; 128];
            for s in 0..samples {
                let id = u128::from(s).wrapping_mul(0x2545_F491_4F6C_DD1D_9E37_79B9_7F4A_7C15);
                let a = hash_id(11, id);
                let b = hash_id(11, id ^ (1 << bit));
                let d = (u128::from(a.hi ^ b.hi) << 64) | u128::from(a.lo ^ b.lo);
                for (out, f) in flips.iter_mut().enumerate() {
                    *f += ((d >> out) & 1) as u32;
                }
            }
            for (out, &f) in flips.iter().enumerate() {
                let p = f64::from(f) / f64::from(samples);
                assert!(
                    (0.4..0.6).contains(&p),
                    "input bit {bit}, output bit {out}: {p}"
                );
            }
        }
    }

    #[test]
    fn ids_live_in_their_own_domain() {
        let id = 0x1234_u128;
        assert_ne!(hash_id(3, id), hash_key(3, b"", &id.to_le_bytes()));
    }

    #[test]
    fn shard_tag_and_home_bits_do_not_overlap() {
        let h = KeyHash {
            hi: 0xFF00_0000_0000_0000,
            lo: 0,
        };
        // Shard from the top of hi; tag from its low byte; home from lo.
        assert_eq!(h.shard(8), 0xFF);
        assert_eq!(h.shard(0), 0);
        assert_eq!(h.tag(), FIRST_TAG);
        assert_eq!(h.home(1000), 0);
        let h = KeyHash {
            hi: 0x0000_0000_0000_00AB,
            lo: u64::MAX,
        };
        assert_eq!(h.shard(8), 0);
        assert_eq!(h.tag(), 0xAB);
        assert_eq!(h.home(1000), 999);
    }

    #[test]
    fn fingerprints_are_never_zero() {
        for i in 0..1000u32 {
            assert_ne!(hash_fingerprint(0, &i.to_le_bytes()), 0);
        }
    }
}
