//! Runs the bodies of the `vfs_file` and `sql_diff` fuzz targets over the checked-in seed
//! corpus (`fuzz/seeds/<target>/`), plus 64 inputs each from a fixed generator, so CI
//! exercises them on stable Rust without cargo-fuzz.

use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    shoal_testkit::corpus::corpus(&seeds, 64)
}

#[test]
fn vfs_file_seeds() {
    for input in corpus("vfs_file") {
        shoal_vfs::fuzzing::vfs_file(&input);
    }
}

#[test]
fn sql_diff_seeds() {
    for input in corpus("sql_diff") {
        shoal_testkit::sql::sql_diff(&input);
    }
}
