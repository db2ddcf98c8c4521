//! Runs the body of the `kv_ops` fuzz target over the checked-in seed corpus
//! (`fuzz/seeds/kv_ops/`), plus inputs from a fixed generator, so CI exercises it on stable
//! Rust without cargo-fuzz.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!inputs.is_empty(), "no seeds in {}", dir.display());
    // Deterministic pseudo-random inputs beside the seeds (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in [16usize, 64, 256, 1024].into_iter().cycle().take(256) {
        inputs.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect(),
        );
    }
    inputs
}

#[test]
fn kv_ops_seeds() {
    for input in corpus("kv_ops") {
        shoal_kv::fuzzing::kv_ops(&input);
    }
    shoal_kv::fuzzing::wait_for_closes();
}
