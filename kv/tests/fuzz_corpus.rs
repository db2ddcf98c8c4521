//! Runs the body of the `kv_ops` fuzz target over the checked-in seed corpus
//! (`fuzz/seeds/kv_ops/`), plus 256 inputs from a fixed generator, so CI exercises it on
//! stable Rust without cargo-fuzz.

use std::path::Path;

#[test]
fn kv_ops_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/kv_ops");
    for input in shoal_testkit::corpus::corpus(&seeds, 256) {
        shoal_testkit::kv_ops::kv_ops(&input);
    }
    shoal_testkit::kv_ops::wait_for_closes();
}
