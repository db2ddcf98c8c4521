//! Regression tests from a review of history.rs: races of forks with their origin, stale
//! writers, and batch limits at large page sizes.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::history::{Bookmark, PointInTime};
use crate::keys::{self, ChunkNo, DbId, FileKind, KeyRange};
use crate::mem::MemKv;
use crate::records::{EntryKind, FileMeta};
use crate::shared::Kv;
use crate::store::{Batch, KvStats, KvStore, Scan};

fn commit_cs(kv: &Kv, id: DbId, cs: u32, size: u32, pages: &[(u32, u8)]) -> Result<u64> {
    let before = kv.read_meta(id, FileKind::Main).unwrap();
    let generation = before.as_ref().map_or(0, |m| m.meta.generation) + 1;
    let mut w = kv.file_write(id, FileKind::Main);
    w.drop_chunks_from(ChunkNo(size));
    for (c, b) in pages {
        w.put_chunk(ChunkNo(*c), vec![*b; cs as usize]);
    }
    let meta = FileMeta {
        chunk_size: cs,
        size: u64::from(size) * u64::from(cs),
        generation,
    };
    w.set_meta(&meta, before.as_ref());
    w.commit()?;
    Ok(generation)
}

fn fill(range: std::ops::Range<u32>, b: u8) -> Vec<(u32, u8)> {
    range.map(|c| (c, b)).collect()
}

/// A restore stages its pages in batches bounded in bytes too (16 KiB pages).
#[test]
fn a_restore_of_16k_pages_stays_within_the_batch_limits() {
    let kv = Kv::open(Arc::new(MemKv::new())).unwrap();
    let id = kv.create("a", EntryKind::Database).unwrap().id;
    let cs = 16 << 10;
    commit_cs(&kv, id, cs, 300, &fill(0..300, 1)).unwrap();
    let v2 = commit_cs(&kv, id, cs, 700, &fill(300..700, 1)).unwrap();
    commit_cs(&kv, id, cs, 700, &fill(0..300, 2)).unwrap();
    commit_cs(&kv, id, cs, 700, &fill(300..700, 2)).unwrap();
    let r = kv.restore("a", &PointInTime::Bookmark(Bookmark(v2)));
    assert!(r.is_ok(), "restore failed: {r:?}");
}

/// Dropping an origin copies pages into its fork in batches bounded in bytes too.
#[test]
fn dropping_an_origin_of_16k_pages_stays_within_the_batch_limits() {
    let kv = Kv::open(Arc::new(MemKv::new())).unwrap();
    let id = kv.create("src", EntryKind::Database).unwrap().id;
    let cs = 16 << 10;
    commit_cs(&kv, id, cs, 300, &fill(0..300, 1)).unwrap();
    commit_cs(&kv, id, cs, 700, &fill(300..700, 1)).unwrap();
    kv.fork("src", None, "dst").unwrap();
    let r = kv.drop_entry("src");
    assert!(r.is_ok(), "drop failed: {r:?}");
}

/// A commit of the origin lands in the middle of a fork's read of a page it inherits:
/// the fork still reads (and caches) the page as of the fork point.
#[derive(Debug, Default)]
struct Racy {
    inner: MemKv,
    armed: AtomicBool,
    inject: Mutex<Option<(Vec<u8>, Batch)>>,
}
impl KvStore for Racy {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        if self.armed.load(Ordering::SeqCst) {
            let mut slot = self.inject.lock();
            if slot.as_ref().is_some_and(|(k, _)| k[..] == key[..]) {
                let (_, b) = slot.take().unwrap();
                self.inner.apply(b)?;
            }
        }
        self.inner.get(key)
    }
    fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        self.inner.scan(range)
    }
    fn apply(&self, batch: Batch) -> Result<()> {
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn stats(&self) -> Result<KvStats> {
        self.inner.stats()
    }
}

#[test]
fn a_fork_read_racing_an_origin_commit_reads_the_page_at_the_fork_point() {
    let store = Arc::new(Racy::default());
    let kv = Kv::open(Arc::clone(&store) as Arc<dyn KvStore>).unwrap();
    let src = kv.create("src", EntryKind::Database).unwrap().id;
    commit_cs(&kv, src, 8, 2, &[(0, 1), (1, 1)]).unwrap();
    kv.fork("src", None, "dst").unwrap();
    let dst = kv.lookup("dst").unwrap().unwrap().id;
    // Build src's next commit (page 1 -> 7) the way apply_for would (with its undo), on
    // a second Kv over the same store, and let it land just before page_at reads
    // src's current page 1.
    let other = Kv::open(Arc::new(MemKv::new())).unwrap();
    let _ = other;
    let before = kv.read_meta(src, FileKind::Main).unwrap();
    let mut w = kv.file_write(src, FileKind::Main);
    w.put_chunk(ChunkNo(1), vec![7; 8]);
    w.set_meta(
        &FileMeta {
            chunk_size: 8,
            size: 16,
            generation: 2,
        },
        before.as_ref(),
    );
    let mut batch = std::mem::take(&mut w.batch);
    let pre = kv.record_history(src, &mut batch).unwrap();
    assert!(pre.is_empty());
    kv.forget_cached(src); // record_history's read cached src's page 1
    *store.inject.lock() = Some((
        keys::chunk_key(src, FileKind::Main, ChunkNo(1)).to_vec(),
        batch,
    ));
    store.armed.store(true, Ordering::SeqCst);
    let got = kv
        .read_chunk(dst, FileKind::Main, ChunkNo(1))
        .unwrap()
        .unwrap();
    store.armed.store(false, Ordering::SeqCst);
    assert_eq!(
        kv.read_meta(src, FileKind::Main)
            .unwrap()
            .unwrap()
            .meta
            .generation,
        2
    );
    // And it stays cached under the fork's key.
    let again = kv
        .read_chunk(dst, FileKind::Main, ChunkNo(1))
        .unwrap()
        .unwrap();
    assert_eq!(
        (&got[..], &again[..]),
        (&[1u8; 8][..], &[1u8; 8][..]),
        "fork sees src's later page"
    );
}

/// A commit from a stale view (its generation already taken) with replaced pages in
/// batches of their own: those batches carry its guard, so they fail with it and the real
/// commit's replaced pages stay.
#[test]
fn a_failed_stale_commit_leaves_the_replaced_pages_alone() {
    let kv = Kv::open(Arc::new(MemKv::new())).unwrap();
    let id = kv.create("a", EntryKind::Database).unwrap().id;
    let n = 2_500;
    let v1 = commit_cs(&kv, id, 8, n, &fill(0..n, 1)).unwrap();
    let stale = kv.read_meta(id, FileKind::Main).unwrap();
    commit_cs(&kv, id, 8, n, &fill(0..n, 2)).unwrap(); // v2 (undo: 1s)
    commit_cs(&kv, id, 8, n, &fill(0..n, 3)).unwrap(); // v3 (undo: 2s)
    // A writer still at v1 commits "v2".
    let mut w = kv.file_write(id, FileKind::Main);
    for c in 0..n {
        w.put_chunk(ChunkNo(c), vec![9; 8]);
    }
    w.set_meta(
        &FileMeta {
            chunk_size: 8,
            size: u64::from(n) * 8,
            generation: 2,
        },
        stale.as_ref(),
    );
    assert!(matches!(w.commit(), Err(Error::PreconditionFailed { .. })));
    kv.restore("a", &PointInTime::Bookmark(Bookmark(v1)))
        .unwrap();
    let p = kv
        .read_chunk(id, FileKind::Main, ChunkNo(5))
        .unwrap()
        .unwrap();
    assert_eq!(&p[..], &[1u8; 8][..], "state at v1");
}

/// With leases, a fork's read through its origin does not cache the origin's pages (a
/// database this host may not own), so a later fork never reads a stale copy.
#[test]
fn a_later_fork_never_reads_a_stale_cached_origin_page() {
    use crate::lease::LeaseConfig;
    use std::time::Duration;
    let store: Arc<dyn KvStore> = Arc::new(MemKv::new());
    let host = |name: &str| {
        let kv = Kv::open(Arc::clone(&store)).unwrap();
        let mut c = LeaseConfig::new(name, Duration::from_secs(60));
        c.wait = Duration::ZERO;
        kv.enable_leases(c).unwrap();
        kv
    };
    let (a, b) = (host("a"), host("b"));
    let src = b.create("src", EntryKind::Database).unwrap().id;
    b.acquire_lease(src).unwrap();
    commit_cs(&b, src, 8, 1, &[(0, 1)]).unwrap();
    b.fork("src", None, "f1").unwrap();
    let f1 = a.lookup("f1").unwrap().unwrap().id;
    a.acquire_lease(f1).unwrap();
    assert_eq!(
        &a.read_chunk(f1, FileKind::Main, ChunkNo(0))
            .unwrap()
            .unwrap()[..],
        &[1u8; 8]
    );
    commit_cs(&b, src, 8, 1, &[(0, 2)]).unwrap();
    b.fork("src", None, "f2").unwrap();
    let f2 = a.lookup("f2").unwrap().unwrap().id;
    a.acquire_lease(f2).unwrap();
    let got = a
        .read_chunk(f2, FileKind::Main, ChunkNo(0))
        .unwrap()
        .unwrap();
    assert_eq!(
        &got[..],
        &[2u8; 8],
        "f2 was forked after src's page 0 became 2"
    );
}
