//! The probe behind history's layout (docs/design.md, "History"): what a read of the
//! current state costs on fjall with the page under its own key (the undo log keeps that)
//! against versioned page keys, where the current page is the newest version (a seek:
//! the first key of a range, as Graft's layout reads it).
//!
//! `cargo run --release -p shoal-kv --example versioned_reads [PAGES] [VERSIONS]`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use shoal_kv::raw::{Batch, keys::KeyRange};
use shoal_kv::{FjallKv, KvStore};

fn plain(page: u32) -> Vec<u8> {
    let mut k = vec![0x02];
    k.extend_from_slice(&page.to_be_bytes());
    k
}

/// Versions sort newest first (the version inverted), so the current page is the first
/// key of the page's range.
fn versioned(page: u32, version: u64) -> Vec<u8> {
    let mut k = vec![0x05];
    k.extend_from_slice(&page.to_be_bytes());
    k.extend_from_slice(&(!version).to_be_bytes());
    k
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pages: u32 = args.next().map_or(5_000, |a| a.parse().unwrap());
    let versions: u64 = args.next().map_or(4, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let kv = FjallKv::open(&shoal_kv::FjallConfig::new(dir.path())).unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let value = |rng: &mut fastrand::Rng| {
        let mut v = vec![0u8; 4096];
        rng.fill(&mut v[..1500]);
        v
    };
    for version in 0..versions {
        for first in (0..pages).step_by(500) {
            let mut b = Batch::new();
            for page in first..(first + 500).min(pages) {
                b.put(versioned(page, version), value(&mut rng));
                if version == versions - 1 {
                    b.put(plain(page), value(&mut rng));
                }
            }
            kv.apply(b).unwrap();
        }
    }
    kv.flush().unwrap();
    let reads = 200_000;
    let (mut best_get, mut best_seek) = (0f64, 0f64);
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reads {
            let page = rng.u32(..pages);
            assert!(kv.get(&plain(page)).unwrap().is_some());
        }
        best_get = best_get.max(f64::from(reads) / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..reads {
            let page = rng.u32(..pages);
            let range = KeyRange {
                start: versioned(page, u64::MAX),
                end: versioned(page + 1, u64::MAX),
            };
            assert!(kv.scan(range).unwrap().next().is_some());
        }
        best_seek = best_seek.max(f64::from(reads) / t.elapsed().as_secs_f64());
    }
    println!(
        "{pages} pages x {versions} versions: point get {best_get:.0}/s, newest-version seek {best_seek:.0}/s, seek / get {:.2}x",
        best_seek / best_get
    );
}
