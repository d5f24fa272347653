//! Replays the `ops` fuzz target's corpus (`fuzz/corpus/ops/`) as a plain test, so CI checks
//! every saved input against the model without cargo-fuzz or a nightly toolchain. The decoder,
//! model and invariants are the fuzz target's own (`fuzz/src/ops_model.rs`).

use std::panic;
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/ops_model.rs"]
mod ops_model;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ops");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    files
}

/// Runs each input, collecting every failing file before failing the test.
fn replay(inputs: impl IntoIterator<Item = (String, Vec<u8>)>) -> usize {
    let mut failed = Vec::new();
    let mut count = 0;
    for (name, data) in inputs {
        count += 1;
        if panic::catch_unwind(|| ops_model::run_bytes(&data)).is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failing inputs: {failed:?}");
    count
}

#[test]
fn fuzz_corpus_replays_clean() {
    let files = corpus();
    assert!(
        !files.is_empty(),
        "fuzz/corpus/ops is empty: the replay would check nothing"
    );
    let inputs = files.into_iter().map(|p| {
        let data = std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
        (p.display().to_string(), data)
    });
    let n = replay(inputs);
    eprintln!("replayed {n} corpus inputs");
}

/// A fixed batch of pseudo-random inputs beyond the corpus: cheap, deterministic extra coverage.
#[test]
fn pseudo_random_inputs_hold_the_invariants() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let inputs = (0..300).map(|i| {
        let len = 3 + (next() % 400) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        (format!("pseudo-random #{i}: {data:02x?}"), data)
    });
    replay(inputs);
}
