//! `SledKv` and `FjallKv` through `Kv`: what is written survives closing and reopening
//! the store, what is damaged on disk (a flipped byte, a truncated value, a valid value
//! stored under the wrong key) is reported as corruption, never returned as data and never
//! a panic, and a store open once cannot be opened again until it is closed. Damage is
//! written with each backend's `put_raw`, which bypasses every check. Every test runs on
//! both backends.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use shoal_kv::raw::keys::{catalog_key, chunk_key, meta_key};
use shoal_kv::{
    CatalogEntry, ChunkNo, DbId, EntryKind, Error, FileKind, FileMeta, FileWrite, FjallConfig,
    FjallKv, Kv, KvStore, SledConfig, SledKv,
};

const PAGE: usize = 4096;

/// What the tests need of a persistent backend beyond the trait.
trait Backend: KvStore + Sized {
    fn open(dir: &Path) -> shoal_kv::Result<Self>;
    fn put_raw(&self, key: &[u8], value: &[u8]) -> shoal_kv::Result<()>;
}

impl Backend for SledKv {
    fn open(dir: &Path) -> shoal_kv::Result<SledKv> {
        SledKv::open(&SledConfig {
            cache_capacity: 1 << 20,
            flush_every_ms: None,
            ..SledConfig::new(dir)
        })
    }

    fn put_raw(&self, key: &[u8], value: &[u8]) -> shoal_kv::Result<()> {
        SledKv::put_raw(self, key, value)
    }
}

impl Backend for FjallKv {
    fn open(dir: &Path) -> shoal_kv::Result<FjallKv> {
        FjallKv::open(&FjallConfig {
            cache_capacity: 1 << 20,
            write_buffer: 1 << 20,
            flush_every_ms: None,
            ..FjallConfig::new(dir)
        })
    }

    fn put_raw(&self, key: &[u8], value: &[u8]) -> shoal_kv::Result<()> {
        FjallKv::put_raw(self, key, value)
    }
}

/// Declares one `#[test]` per backend running the generic test `$name`.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn sled() {
                super::$name::<shoal_kv::SledKv>();
            }

            #[test]
            fn fjall() {
                super::$name::<shoal_kv::FjallKv>();
            }
        }
    };
}

/// The backend (kept concrete for `put_raw`) and the `Kv` over it.
fn open<B: Backend>(dir: &Path) -> (Arc<B>, Kv) {
    let backend = Arc::new(B::open(dir).unwrap());
    let kv = Kv::open(backend.clone()).unwrap();
    (backend, kv)
}

/// Closes the store: the `Kv` (and its flusher, which holds the backend) first.
fn close<B: Backend>((backend, kv): (Arc<B>, Kv)) {
    drop(kv);
    assert_eq!(
        Arc::strong_count(&backend),
        1,
        "the backend is still shared"
    );
    drop(backend);
}

/// A page whose bytes depend on where it belongs, with room for the trailer.
fn page(id: DbId, kind: FileKind, no: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + FileWrite::SPARE_CAPACITY);
    let seed = id.0 as u8 ^ (kind as u8).wrapping_mul(31) ^ (no as u8).wrapping_mul(7);
    v.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    v
}

/// Writes chunks `0..chunks` of a file and its metadata in one guarded batch.
fn write_file(kv: &Kv, id: DbId, kind: FileKind, chunks: u32, generation: u64) -> FileMeta {
    let previous = kv.read_meta(id, kind).unwrap();
    let meta = FileMeta {
        chunk_size: PAGE as u32,
        size: u64::from(chunks) * PAGE as u64,
        generation,
    };
    let mut write = kv.file_write(id, kind);
    for no in 0..chunks {
        write.put_chunk(ChunkNo(no), page(id, kind, no, PAGE));
    }
    write.set_meta(&meta, previous.as_ref());
    write.commit().unwrap();
    meta
}

fn assert_file(kv: &Kv, id: DbId, kind: FileKind, chunks: u32, meta: FileMeta) {
    assert_eq!(kv.read_meta(id, kind).unwrap().unwrap().meta, meta);
    for no in 0..chunks {
        let got = kv.read_chunk(id, kind, ChunkNo(no)).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&page(id, kind, no, PAGE)[..]),
            "{id} {kind} chunk {no}"
        );
    }
    assert_eq!(kv.read_chunk(id, kind, ChunkNo(chunks)).unwrap(), None);
}

on_both_backends!(everything_written_through_kv_survives_reopening);
fn everything_written_through_kv_survives_reopening<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let store = open::<B>(dir.path());
    let kv = &store.1;
    let alpha = kv.create("alpha", EntryKind::Database).unwrap();
    let beta = kv.create("actors/beta", EntryKind::Database).unwrap();
    let sj = kv.create("alpha-mj01", EntryKind::SuperJournal).unwrap();

    let alpha_main = write_file(kv, alpha.id, FileKind::Main, 8, 1);
    let alpha_journal = write_file(kv, alpha.id, FileKind::MainJournal, 2, 1);
    kv.commit_durable().unwrap();
    // Applied but never committed durably: a clean close must still keep it.
    let beta_main = write_file(kv, beta.id, FileKind::Main, 3, 1);
    let sj_file = write_file(kv, sj.id, FileKind::SuperJournal, 1, 1);
    let catalog = kv.list().unwrap();
    let alpha_meta_before = kv.read_meta(alpha.id, FileKind::Main).unwrap().unwrap();
    close(store);

    let store = open::<B>(dir.path());
    let kv = &store.1;
    assert_eq!(kv.list().unwrap(), catalog);
    assert_eq!(kv.lookup("alpha").unwrap(), Some(alpha));
    assert_eq!(kv.lookup("actors/beta").unwrap(), Some(beta));
    assert_eq!(kv.lookup("alpha-mj01").unwrap(), Some(sj));
    assert_eq!(kv.lookup("gamma").unwrap(), None);
    assert_file(kv, alpha.id, FileKind::Main, 8, alpha_main);
    assert_file(kv, alpha.id, FileKind::MainJournal, 2, alpha_journal);
    assert_file(kv, beta.id, FileKind::Main, 3, beta_main);
    assert_file(kv, sj.id, FileKind::SuperJournal, 1, sj_file);
    assert_eq!(kv.read_meta(beta.id, FileKind::MainJournal).unwrap(), None);

    // The metadata guard works across the reopen: the stored record is the one read
    // before closing, so it guards the next write, and a stale one is refused.
    let current = kv.read_meta(alpha.id, FileKind::Main).unwrap().unwrap();
    assert_eq!(current, alpha_meta_before);
    let stale = shoal_kv::raw::stored_meta(alpha.id, FileKind::Main, FileMeta::EMPTY);
    let mut write = kv.file_write(alpha.id, FileKind::Main);
    write.set_meta(&FileMeta::EMPTY, Some(&stale));
    assert!(matches!(
        write.commit(),
        Err(Error::PreconditionFailed { .. })
    ));
    assert_file(kv, alpha.id, FileKind::Main, 8, alpha_main);

    // The id counter survived too: a new name gets an id never used before.
    let gamma = kv.create("gamma", EntryKind::Database).unwrap();
    assert!(gamma.id > alpha.id.max(beta.id).max(sj.id), "{gamma:?}");
    close(store);
}

/// Two databases with a few chunks each (main and journal) to copy values between.
struct Fixture {
    dir: tempfile::TempDir,
    a: CatalogEntry,
    b: CatalogEntry,
}

fn fixture<B: Backend>() -> (Fixture, (Arc<B>, Kv)) {
    let dir = tempfile::tempdir().unwrap();
    let store = open::<B>(dir.path());
    let kv = &store.1;
    let a = kv.create("a", EntryKind::Database).unwrap();
    let b = kv.create("b", EntryKind::Database).unwrap();
    for e in [a, b] {
        write_file(kv, e.id, FileKind::Main, 2, 1);
        write_file(kv, e.id, FileKind::MainJournal, 1, 1);
    }
    (Fixture { dir, a, b }, store)
}

fn flip(v: &Bytes, at: usize) -> Vec<u8> {
    let mut v = v.to_vec();
    v[at] ^= 0x10;
    v
}

/// Which error a damaged value must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Checksum,
    Corrupt,
}

fn assert_corruption<T: std::fmt::Debug>(
    r: shoal_kv::Result<T>,
    expect: Expect,
    case: &str,
    names: &str,
) {
    let err = match r {
        Ok(v) => {
            let shown: String = format!("{v:?}").chars().take(120).collect();
            panic!("{case}: damaged value read as data: {shown}...")
        }
        Err(e) => e,
    };
    assert!(err.is_corruption(), "{case}: {err}");
    let variant = match err {
        Error::Checksum { .. } => Expect::Checksum,
        Error::Corrupt { .. } => Expect::Corrupt,
        _ => unreachable!("is_corruption"),
    };
    assert_eq!(variant, expect, "{case}: {err}");
    let msg = err.to_string();
    assert!(
        msg.contains(names),
        "{case}: {msg:?} does not name {names:?}"
    );
}

on_both_backends!(corrupt_chunks_are_errors_never_data);
fn corrupt_chunks_are_errors_never_data<B: Backend>() {
    let (fx, store) = fixture::<B>();
    let (backend, kv) = (&store.0, &store.1);
    let (a, b) = (fx.a.id, fx.b.id);
    let key = chunk_key(a, FileKind::Main, ChunkNo(0));
    let good = shoal_kv::raw::of(kv).get(&key).unwrap().unwrap();
    let raw = |id, kind, no| {
        shoal_kv::raw::of(kv)
            .get(&chunk_key(id, kind, ChunkNo(no)))
            .unwrap()
            .unwrap()
    };
    let names = format!("{a} main chunk 0");

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "flipped payload byte",
            flip(&good, PAGE / 2),
            Expect::Checksum,
        ),
        ("flipped first byte", flip(&good, 0), Expect::Checksum),
        (
            "flipped trailer byte",
            flip(&good, good.len() - 1),
            Expect::Checksum,
        ),
        (
            "truncated by one byte",
            good[..good.len() - 1].to_vec(),
            Expect::Checksum,
        ),
        (
            "truncated to the payload",
            good[..PAGE].to_vec(),
            Expect::Checksum,
        ),
        (
            "shorter than a trailer",
            good[..shoal_kv::raw::checksum::TRAILER_LEN - 3].to_vec(),
            Expect::Corrupt,
        ),
        ("empty", Vec::new(), Expect::Corrupt),
        (
            "chunk 1 of the same file",
            raw(a, FileKind::Main, 1).to_vec(),
            Expect::Checksum,
        ),
        (
            "chunk 0 of another database",
            raw(b, FileKind::Main, 0).to_vec(),
            Expect::Checksum,
        ),
        (
            "chunk 0 of the journal",
            raw(a, FileKind::MainJournal, 0).to_vec(),
            Expect::Checksum,
        ),
        (
            "the metadata record",
            shoal_kv::raw::of(kv)
                .get(&meta_key(a, FileKind::Main))
                .unwrap()
                .unwrap()
                .to_vec(),
            Expect::Checksum,
        ),
    ];
    for (case, bytes, expect) in cases {
        backend.put_raw(&key, &bytes).unwrap();
        assert_corruption(
            kv.read_chunk(a, FileKind::Main, ChunkNo(0)),
            expect,
            case,
            &names,
        );
        // The damage stays where it is.
        assert!(
            kv.read_chunk(a, FileKind::Main, ChunkNo(1))
                .unwrap()
                .is_some()
        );
        assert!(
            kv.read_chunk(b, FileKind::Main, ChunkNo(0))
                .unwrap()
                .is_some()
        );
    }

    // Damage that reached the disk is still caught after a reopen (read from the files,
    // not from a cache that saw it written).
    backend.put_raw(&key, &flip(&good, 100)).unwrap();
    close(store);
    let store = open::<B>(fx.dir.path());
    assert_corruption(
        store.1.read_chunk(a, FileKind::Main, ChunkNo(0)),
        Expect::Checksum,
        "flipped byte, after reopening",
        &names,
    );
    store.0.put_raw(&key, &good).unwrap();
    assert_eq!(
        store
            .1
            .read_chunk(a, FileKind::Main, ChunkNo(0))
            .unwrap()
            .unwrap(),
        page(a, FileKind::Main, 0, PAGE)
    );
    close(store);
}

on_both_backends!(corrupt_metadata_is_an_error);
fn corrupt_metadata_is_an_error<B: Backend>() {
    let (fx, store) = fixture::<B>();
    let (backend, kv) = (&store.0, &store.1);
    let (a, b) = (fx.a.id, fx.b.id);
    let key = meta_key(a, FileKind::Main);
    let good = shoal_kv::raw::of(kv).get(&key).unwrap().unwrap();
    let names = format!("{a} main metadata");

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("flipped size byte", flip(&good, 6), Expect::Checksum),
        ("flipped version byte", flip(&good, 0), Expect::Checksum),
        (
            "flipped trailer byte",
            flip(&good, good.len() - 1),
            Expect::Checksum,
        ),
        (
            "truncated by one byte",
            good[..good.len() - 1].to_vec(),
            Expect::Checksum,
        ),
        (
            "shorter than a trailer",
            good[..3].to_vec(),
            Expect::Corrupt,
        ),
        ("empty", Vec::new(), Expect::Corrupt),
        (
            "another database's record",
            shoal_kv::raw::of(kv)
                .get(&meta_key(b, FileKind::Main))
                .unwrap()
                .unwrap()
                .to_vec(),
            Expect::Checksum,
        ),
        (
            "the journal's record",
            shoal_kv::raw::of(kv)
                .get(&meta_key(a, FileKind::MainJournal))
                .unwrap()
                .unwrap()
                .to_vec(),
            Expect::Checksum,
        ),
        (
            "a chunk",
            shoal_kv::raw::of(kv)
                .get(&chunk_key(a, FileKind::Main, ChunkNo(0)))
                .unwrap()
                .unwrap()
                .to_vec(),
            Expect::Checksum,
        ),
    ];
    for (case, bytes, expect) in cases {
        backend.put_raw(&key, &bytes).unwrap();
        assert_corruption(kv.read_meta(a, FileKind::Main), expect, case, &names);
        assert!(kv.read_meta(b, FileKind::Main).unwrap().is_some());
    }
    close(store);
}

on_both_backends!(corrupt_catalog_entries_are_errors);
fn corrupt_catalog_entries_are_errors<B: Backend>() {
    let (fx, store) = fixture::<B>();
    let (backend, kv) = (&store.0, &store.1);
    let key = catalog_key(b"a");
    let good = shoal_kv::raw::of(kv).get(&key).unwrap().unwrap();
    let names = "catalog entry \"a\"";

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("flipped id byte", flip(&good, 8), Expect::Checksum),
        ("flipped kind byte", flip(&good, 9), Expect::Checksum),
        (
            "truncated by one byte",
            good[..good.len() - 1].to_vec(),
            Expect::Checksum,
        ),
        (
            "shorter than a trailer",
            good[..2].to_vec(),
            Expect::Corrupt,
        ),
        (
            "another name's entry",
            shoal_kv::raw::of(kv)
                .get(&catalog_key(b"b"))
                .unwrap()
                .unwrap()
                .to_vec(),
            Expect::Checksum,
        ),
    ];
    for (case, bytes, expect) in cases {
        backend.put_raw(&key, &bytes).unwrap();
        assert_corruption(kv.lookup("a"), expect, case, names);
        assert_corruption(kv.list(), expect, case, names);
        assert!(
            matches!(kv.create("a", EntryKind::Database), Err(e) if e.is_corruption()),
            "{case}: a damaged entry was treated as absent"
        );
        assert_eq!(kv.lookup("b").unwrap(), Some(fx.b));
    }
    close(store);
}

on_both_backends!(opening_a_store_twice_is_store_locked);
fn opening_a_store_twice_is_store_locked<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let first = B::open(dir.path()).unwrap();
    let err = B::open(dir.path()).unwrap_err();
    match &err {
        Error::StoreLocked { path } => assert_eq!(path, dir.path()),
        other => panic!("expected StoreLocked, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.path().display().to_string()) && msg.contains("already open"),
        "{msg}"
    );
    // Closed here, the store opens again at once.
    drop(first);
    B::open(dir.path()).unwrap();
}

/// sled 0.34.7 writes a snapshot at every open that finds its log grown, under
/// `snap.<lsn>.generating` until the file is complete and synced, and then renames it; but
/// its reader took such an unfinished file (empty when the process was killed just after
/// creating it) and refused the store as corrupt, for good.
#[test]
fn a_snapshot_sled_was_killed_writing_is_ignored() {
    for unfinished in [&b""[..], &b"a torn snapshot"[..]] {
        let dir = tempfile::tempdir().unwrap();
        let store = open::<SledKv>(dir.path());
        let id = store.1.create("alpha", EntryKind::Database).unwrap().id;
        let main = write_file(&store.1, id, FileKind::Main, 3, 1);
        close(store);
        // The next open snapshots the grown log: killed there.
        std::fs::write(
            dir.path().join("snap.7FFFFFFFFFFFFFFF.generating"),
            unfinished,
        )
        .unwrap();
        let store = open::<SledKv>(dir.path());
        assert_file(&store.1, id, FileKind::Main, 3, main);
        close(store);
    }
}
