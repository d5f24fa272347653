//! The keys of the examples and benches: 128-bit ids made from a counter, spread like random
//! ones (UUIDs, message ids), so no structure under test sees friendly sequential keys.

/// The `i`-th key: distinct for distinct `i` (the low half is a bijection of `i`).
#[inline]
pub fn key(i: u64) -> u128 {
    (u128::from(mix(i ^ 0x5851_f42d_4c95_7f2d)) << 64) | u128::from(mix(i))
}

/// splitmix64's finalizer: a bijection on u64.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
