//! Replays outside the shard lock with full fences on both sides of the readers' handshake, as
//! on a kernel without `membarrier(2)` (or elsewhere than Linux): the path `tests/stress.rs`
//! does not take on a machine where the process registers for expedited barriers. One test in
//! a process of its own, so that the choice is made before any store is built.

mod unlocked;

#[test]
fn fenced_replays_outside_the_lock_see_only_completed_unexpired_keys() {
    assert!(
        idemstore::__fenced_reads_for_tests(),
        "decided before the process built a store"
    );
    unlocked::replays_outside_the_lock_see_only_completed_unexpired_keys();
}
