//! Damage to the small metadata files of a fjall store (a keyspace's `current` pointer,
//! its version file, the trailer and table of contents at the end of each table and blob
//! file): one bit flipped at every byte of each, the store opened and read. Each open
//! must fail with an error or read back exactly what was written. Before
//! `fjall_preflight`, such flips made fjall 3.1 abort the process (an allocation of
//! gigabytes from a damaged count, a panic with a lock held), panic, or read back
//! another table than the one listed (docs/design.md, "What `FjallKv` relies on in
//! fjall"); an abort kills this test's process, which fails it too.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use shoal_kv::raw::Batch;
use shoal_kv::{FjallConfig, FjallKv, KeyRange, KvStore};
use shoal_testkit::scratch::copy_dir;

/// Bytes at the end of a table or blob file that are flipped: the sfa trailer (38 bytes),
/// the table of contents before it, and some of the file's own last block.
const TAIL: u64 = 400;

/// sfa's trailer, every byte of which is flipped.
const TRAILER: u64 = 38;

fn open(dir: &Path) -> shoal_kv::Result<FjallKv> {
    FjallKv::open(&FjallConfig {
        cache_capacity: 1 << 20,
        write_buffer: 1 << 20,
        flush_every_ms: None,
        ..FjallConfig::new(dir)
    })
}

/// Every entry of the store, in key order.
fn contents(kv: &FjallKv) -> shoal_kv::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    kv.scan(KeyRange::prefix(&[]))?
        .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect()
}

/// A closed store whose data is all in tables and blob files (nothing left for the
/// journal to replay), and what it holds.
fn pristine(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let kv = open(dir).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for batch in 0..6u32 {
        let mut b = Batch::new();
        for n in 0..40u32 {
            let page: Vec<u8> = std::iter::repeat_with(|| rng.u8(..8)).take(4096).collect();
            b.put((batch * 1000 + n).to_be_bytes().to_vec(), page);
            b.put(format!("meta-{batch}-{n}").into_bytes(), b"small".to_vec());
        }
        kv.apply(b).unwrap();
        kv.seal_memtable().unwrap();
    }
    kv.flush().unwrap();
    let want = contents(&kv).unwrap();
    assert_eq!(want.len(), 6 * 80);
    want
}

/// The files under `dir/keyspaces` that `pick` takes.
fn files(dir: &Path, pick: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.join("keyspaces")];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if pick(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The current version file of each keyspace, as its `current` names it.
fn current_versions(dir: &Path) -> Vec<PathBuf> {
    files(dir, &|p| p.file_name().unwrap() == "current")
        .into_iter()
        .map(|current| {
            let bytes = std::fs::read(&current).unwrap();
            let id = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            current.with_file_name(format!("v{id}"))
        })
        .collect()
}

#[test]
fn flipped_bits_in_fjall_metadata_are_errors_or_nothing() {
    // Each trial copies the store and fjall fsyncs as it opens it: in memory where there
    // is a tmpfs.
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let base = tmp.path().join("pristine");
    let want = pristine(&base);
    // The control: an undamaged copy reads back.
    let copy = tmp.path().join("copy");
    copy_dir(&base, &copy).unwrap();
    assert_eq!(contents(&open(&copy).unwrap()).unwrap(), want);

    // (file, first byte flipped) for every target.
    let mut targets: Vec<(PathBuf, u64)> = Vec::new();
    for f in files(&base, &|p| p.file_name().unwrap() == "current") {
        targets.push((f, 0));
    }
    for f in current_versions(&base) {
        targets.push((f, 0));
    }
    let data = files(&base, &|p| {
        let parent = p.parent().unwrap().file_name().unwrap();
        parent == "tables" || parent == "blobs"
    });
    assert!(
        data.iter().any(|p| p.parent().unwrap().ends_with("blobs")),
        "no blob file was written: {data:?}"
    );
    for f in data {
        let len = std::fs::metadata(&f).unwrap().len();
        targets.push((f, len.saturating_sub(TAIL)));
    }

    let (mut trials, mut refused, mut same) = (0, 0, 0);
    for (file, from) in targets {
        let rel = file.strip_prefix(&base).unwrap().to_path_buf();
        let len = std::fs::metadata(&file).unwrap().len();
        // Every byte of the trailer, every third one before it.
        let trailer = len.saturating_sub(TRAILER);
        for at in (from..len).filter(|&at| at >= trailer || at % 3 == 0) {
            let trial = tmp.path().join("trial");
            let _ = std::fs::remove_dir_all(&trial);
            copy_dir(&base, &trial).unwrap();
            let mut bytes = std::fs::read(trial.join(&rel)).unwrap();
            bytes[at as usize] ^= 1 << (at % 8);
            std::fs::write(trial.join(&rel), bytes).unwrap();
            trials += 1;
            let outcome = open(&trial).and_then(|kv| contents(&kv));
            match outcome {
                Err(_) => refused += 1,
                Ok(got) if got == want => same += 1,
                Ok(got) => panic!(
                    "a flipped bit at byte {at} of {} read back {} entries, not the {} written",
                    rel.display(),
                    got.len(),
                    want.len()
                ),
            }
        }
    }
    assert!(trials > 500, "only {trials} trials");
    assert!(refused > 0, "no damage was found in {trials} trials");
    println!("{trials} flips: {refused} refused, {same} read back as written");
}
