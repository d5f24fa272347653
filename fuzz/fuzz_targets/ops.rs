//! Random sequences of claim / complete / release / extend / drop / clock / maintenance
//! operations, single or batched, on a small `Store<u16>`, checked against a reference model
//! after every step.
//! The decoder, model and invariants live in `src/ops_model.rs`, which the main crate's
//! `tests/fuzz_corpus.rs` includes too, to replay `corpus/ops/` in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../src/ops_model.rs"]
mod ops_model;

fuzz_target!(|data: &[u8]| ops_model::run_bytes(data));
