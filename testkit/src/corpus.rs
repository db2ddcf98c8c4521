//! The inputs the stable tests run the fuzz bodies over.

use std::path::Path;

/// The inputs a stable test runs a fuzz body over: every file in `seeds` (a target's
/// checked-in corpus, which must not be empty) plus `generated` inputs of 16 to 1,024
/// bytes from a seeded generator, the same on every run.
///
/// # Panics
/// If `seeds` cannot be read or holds no file: a test without its corpus must fail.
pub fn corpus(seeds: &Path, generated: usize) -> Vec<Vec<u8>> {
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(seeds)
        .and_then(|entries| {
            entries
                .map(|e| std::fs::read(e?.path()))
                .collect::<std::io::Result<_>>()
        })
        .unwrap_or_else(|e| panic!("reading seeds in {}: {e}", seeds.display()));
    assert!(!inputs.is_empty(), "no seeds in {}", seeds.display());
    let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    for len in [16usize, 64, 256, 1024].into_iter().cycle().take(generated) {
        inputs.push(std::iter::repeat_with(|| rng.u8(..)).take(len).collect());
    }
    inputs
}
