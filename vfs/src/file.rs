//! A file stored in the kv: metadata plus fixed-size chunks, with a dirty overlay.
//!
//! One [`Inode`] exists per stored file while any handle has it open (like a unix inode:
//! every connection to a database shares it, so a commit by one is seen by all at once).
//! It holds the file's lock table and its [`FileState`]:
//!
//! - `persisted`: the metadata record as last written or read (its bytes guard the next
//!   write, so a second writer over the same kv is refused instead of silently merged);
//! - `size` and `chunk_size`: the logical file as SQLite sees it, dirty data included;
//! - `dirty`: chunks written but not yet in the kv, whole and exactly as long as they are
//!   in the file; `truncate_from`: every stored chunk from this number on is gone.
//!
//! A *flush* turns the overlay into ONE kv batch (range delete for a truncation, a put per
//! dirty chunk, the new metadata guarded by the old) and is the only way anything reaches
//! the kv. Between SQLite's BEGIN_ATOMIC_WRITE and COMMIT_ATOMIC_WRITE the overlay is the
//! transaction's pages and the flush is the commit; outside a batch the overlay is a
//! write-back cache flushed by xSync, xUnlock, xClose, or when it grows past
//! [`WRITEBACK_LIMIT`]. A failed flush drops the overlay and returns the file to its last
//! persisted state, which is what a crash at that instant would have left.
//!
//! Invariants: every chunk below `ceil(size / chunk_size)` exists (a file grows with zero
//! chunks, never holes), and chunk `c` is exactly `min(chunk_size, size - c*chunk_size)`
//! bytes long; a stored chunk that breaks either is reported as corrupt.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use shoal_kv::{ChunkNo, DbId, FileKind, FileMeta, FileWrite, Kv, Settled, StoredMeta, chunk_len};

use crate::error::{Error, Result};
use crate::lock::LockTable;
use crate::stats::DbCounters;

/// Dirty bytes after which a write-back overlay is flushed even without a sync.
pub(crate) const WRITEBACK_LIMIT: usize = 8 << 20;

/// Chunk size of journals and super-journals (their writes are not page-aligned).
pub(crate) const JOURNAL_CHUNK: u32 = 32 << 10;

/// Chunks one transaction's overlay may hold before it moves to the staging area: with
/// the commit's few other operations, well inside `shoal_kv::MAX_BATCH_KEYS`.
const MAX_OVERLAY_CHUNKS: usize = 4_000;

/// Chunk size of a database whose first write does not reveal its page size.
const FALLBACK_PAGE_SIZE: u32 = 4096;

/// What a flush wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Flushed {
    /// Chunks written (puts).
    pub(crate) chunks: u64,
}

/// The memory every main file's overlay shares: the pages of transactions not yet
/// committed. A write that takes the total past the limit moves the writing file's
/// overlay into the kv's staging area (see `shoal_kv`'s `staging.rs`), so a transaction
/// of any size holds at most this much in memory.
#[derive(Debug)]
pub(crate) struct OverlayBudget {
    used: AtomicUsize,
    limit: usize,
}

impl OverlayBudget {
    pub(crate) fn new(limit: u64) -> Arc<OverlayBudget> {
        Arc::new(OverlayBudget {
            used: AtomicUsize::new(0),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        })
    }

    /// Bytes the overlays hold now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// What a transaction moved to the kv's staging area so far.
#[derive(Debug, Default)]
struct Staged {
    /// Chunks whose latest version is staged (the overlay's, if it has one, is newer).
    chunks: BTreeSet<u32>,
    /// Staged chunks from this number on were truncated away since the last staging
    /// write; the next one drops them first.
    drop_from: Option<u32>,
}

/// Where a chunk's current bytes are.
enum Source<'a> {
    Bytes(&'a [u8]),
    Staged,
    Stored,
}

#[derive(Debug)]
pub(crate) struct FileState {
    persisted: Option<StoredMeta>,
    size: u64,
    chunk_size: u32,
    dirty: BTreeMap<u32, Vec<u8>>,
    dirty_bytes: usize,
    /// The part of `dirty_bytes` counted in the shared [`OverlayBudget`].
    accounted: usize,
    truncate_from: Option<u32>,
    in_batch: bool,
    /// The transaction's pages in the kv's staging area, once it outgrew its share.
    staged: Option<Staged>,
    /// A staged commit applied its commit batch but failed to move its pages into place:
    /// [`Kv::settle_staged`] must finish before anything reads the file.
    unsettled: bool,
    /// The metadata generation last made durable by a flush of the kv (`None`: unknown).
    durable_generation: Option<u64>,
    /// Chunk 0 as stored (SQLite reads the database header at every transaction start).
    first_chunk: Option<Bytes>,
}

/// One stored file, shared by every handle that has it open.
#[derive(Debug)]
pub(crate) struct Inode {
    /// This host's lease on the database, on a store hosts share (main files only): held
    /// while the inode lives, so every handle's writes are fenced by it.
    pub(crate) lease: Option<shoal_kv::LeaseHold>,
    /// Set when a commit found the stored file changed underneath this inode's view (a
    /// guard failed: another host wrote it, or a server lost writes this inode had
    /// applied). Such an inode must not be reused: its handles should close, and the next
    /// open reads the file afresh.
    pub(crate) stale: std::sync::atomic::AtomicBool,
    pub(crate) id: DbId,
    pub(crate) kind: FileKind,
    /// The file's name as SQLite gave it, for messages.
    pub(crate) name: String,
    pub(crate) counters: Arc<DbCounters>,
    pub(crate) locks: Mutex<LockTable>,
    /// For a database file: what is known of its rollback journal without asking the kv
    /// (see [`JournalHint`]).
    pub(crate) journal_hint: Mutex<JournalHint>,
    budget: Arc<OverlayBudget>,
    state: Mutex<FileState>,
}

impl Drop for Inode {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        self.budget.used.fetch_sub(st.accounted, Ordering::Relaxed);
        st.accounted = 0;
    }
}

/// Whether a database's rollback journal is known to be absent. SQLite asks at every
/// transaction start (`hasHotJournal`); while this process holds the store, journals
/// appear and vanish only through this VFS, so after one look at the kv the answer is
/// kept. `epoch` counts journal opens and deletes: an answer from the kv is kept only if
/// no open or delete happened while it was being fetched.
#[derive(Debug, Default)]
pub(crate) struct JournalHint {
    pub(crate) epoch: u64,
    pub(crate) absent: bool,
}

impl JournalHint {
    /// Records a change to the journal: it is now `absent` or may exist, and any answer
    /// worked out before this moment is stale.
    pub(crate) fn changed(&mut self, absent: bool) {
        self.epoch += 1;
        self.absent = absent;
    }
}

/// The largest file chunks of `cs` bytes can hold (chunk numbers are `u32`).
fn max_size(cs: u64) -> u64 {
    cs * (u64::from(u32::MAX) + 1)
}

fn usize_of(n: u64) -> usize {
    // Chunk lengths are at most u32::MAX and offsets inside SQLite's buffers fit usize.
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Inode {
    /// Loads the file's metadata. A missing record is an empty, not yet persisted file
    /// when `may_be_absent`, and corruption otherwise (a catalog entry pointing at nothing).
    pub(crate) fn load(
        kv: &Kv,
        id: DbId,
        kind: FileKind,
        name: &str,
        counters: Arc<DbCounters>,
        budget: Arc<OverlayBudget>,
        may_be_absent: bool,
    ) -> Result<Inode> {
        if kind == FileKind::Main {
            // What a crash left of a large transaction: finish a committed one, drop
            // an uncommitted one, before anything reads the file.
            kv.settle_staged(id)?;
        }
        let persisted = kv.read_meta(id, kind)?;
        let meta = match &persisted {
            Some(p) => p.meta,
            None if may_be_absent => FileMeta::EMPTY,
            None => {
                return Err(Error::corrupt(
                    name,
                    format!("the {kind} file's metadata is missing"),
                ));
            }
        };
        if meta.size > 0 && !(1..=65536).contains(&meta.chunk_size) {
            return Err(Error::corrupt(
                name,
                format!("impossible chunk size {}", meta.chunk_size),
            ));
        }
        Ok(Inode {
            lease: None,
            stale: std::sync::atomic::AtomicBool::new(false),
            id,
            kind,
            name: name.to_owned(),
            counters,
            locks: Mutex::new(LockTable::default()),
            journal_hint: Mutex::new(JournalHint::default()),
            budget,
            state: Mutex::new(FileState {
                persisted,
                size: meta.size,
                chunk_size: meta.chunk_size,
                dirty: BTreeMap::new(),
                dirty_bytes: 0,
                accounted: 0,
                truncate_from: None,
                in_batch: false,
                staged: None,
                unsettled: false,
                durable_generation: None,
                first_chunk: None,
            }),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.state.lock().size
    }

    /// Bytes per chunk (0 while nothing was written).
    pub(crate) fn chunk_size(&self) -> u32 {
        self.state.lock().chunk_size
    }

    /// Whether the file exists in the sense of unix `access()`: stored, and not empty.
    pub(crate) fn exists_nonempty(&self) -> bool {
        self.state.lock().size > 0
    }

    /// Reads into `buf` from `offset`; returns the bytes filled (fewer at end of file).
    pub(crate) fn read(&self, kv: &Kv, buf: &mut [u8], offset: u64) -> Result<usize> {
        // (chunk, kind it is read from, offset in chunk, offset in buf, length)
        let mut from_kv: Vec<(u32, FileKind, usize, usize, usize)> = Vec::new();
        let (size, cs, n, generation) = {
            let mut st = self.state.lock();
            self.settle_locked(kv, &mut st)?;
            if offset >= st.size || st.chunk_size == 0 {
                return Ok(0);
            }
            let n = usize_of((st.size - offset).min(buf.len() as u64));
            let cs = u64::from(st.chunk_size);
            let mut pos = 0usize;
            while pos < n {
                let at = offset + pos as u64;
                let c = at / cs;
                let within = usize_of(at % cs);
                let take = (usize_of(cs) - within).min(n - pos);
                let c32 = u32::try_from(c)
                    .map_err(|_| Error::corrupt(&self.name, "offset past the last chunk"))?;
                match st.source(c32) {
                    Source::Bytes(chunk) => {
                        let src = chunk.get(within..within + take).ok_or_else(|| {
                            Error::corrupt(&self.name, "dirty chunk shorter than the file")
                        })?;
                        buf.get_mut(pos..pos + take)
                            .ok_or_else(|| Error::corrupt(&self.name, "read past the buffer"))?
                            .copy_from_slice(src);
                    }
                    Source::Staged => from_kv.push((c32, FileKind::Staged, within, pos, take)),
                    Source::Stored => from_kv.push((c32, self.kind, within, pos, take)),
                }
                pos += take;
            }
            (
                st.size,
                cs,
                n,
                st.persisted.as_ref().map(|p| p.meta.generation),
            )
        };
        for (c, kind, within, pos, take) in from_kv {
            let data = self.chunk_in(kv, kind, c, size, cs)?;
            if c == 0 && kind == self.kind {
                self.remember_first_chunk(&data, generation);
            }
            let src = data
                .get(within..within + take)
                .ok_or_else(|| Error::corrupt(&self.name, "chunk shorter than the file"))?;
            buf.get_mut(pos..pos + take)
                .ok_or_else(|| Error::corrupt(&self.name, "read past the buffer"))?
                .copy_from_slice(src);
            if self.kind == FileKind::Main {
                DbCounters::add(&self.counters.pages_read, 1);
            }
        }
        DbCounters::add(&self.counters.bytes_read, n as u64);
        Ok(n)
    }

    /// Finishes a staged commit whose move into place failed earlier (see
    /// [`FileState::unsettled`]), before the file is used again.
    fn settle_locked(&self, kv: &Kv, st: &mut FileState) -> Result<()> {
        if !st.unsettled {
            return Ok(());
        }
        if let Settled::Finished(stored) = kv.settle_staged(self.id)? {
            st.persisted = Some(stored);
        }
        st.unsettled = false;
        st.first_chunk = None;
        st.reset_to_persisted();
        self.account(st);
        Ok(())
    }

    /// Brings the shared budget in line with this file's overlay. Only a database's
    /// overlay counts (a journal's is a write-back cache with its own limit).
    fn account(&self, st: &mut FileState) {
        if self.kind != FileKind::Main {
            return;
        }
        if st.dirty_bytes >= st.accounted {
            self.budget
                .used
                .fetch_add(st.dirty_bytes - st.accounted, Ordering::Relaxed);
        } else {
            self.budget
                .used
                .fetch_sub(st.accounted - st.dirty_bytes, Ordering::Relaxed);
        }
        st.accounted = st.dirty_bytes;
    }

    /// Keeps chunk 0 as read from the kv, unless the file was flushed since or has a
    /// pending change to it.
    fn remember_first_chunk(&self, data: &Bytes, generation_when_read: Option<u64>) {
        let mut st = self.state.lock();
        let generation = st.persisted.as_ref().map(|p| p.meta.generation);
        if generation == generation_when_read
            && !st.dirty.contains_key(&0)
            && st.truncate_from.is_none()
        {
            st.first_chunk = Some(data.clone());
        }
    }

    /// A stored chunk, verified and checked for the length the file size implies.
    fn stored_chunk(&self, kv: &Kv, c: u32, size: u64, cs: u64) -> Result<Bytes> {
        self.chunk_in(kv, self.kind, c, size, cs)
    }

    /// Chunk `c` as stored under `kind` (the file's own, or the staging area of its
    /// transaction), checked for the length the file size implies.
    fn chunk_in(&self, kv: &Kv, kind: FileKind, c: u32, size: u64, cs: u64) -> Result<Bytes> {
        let what = if kind == FileKind::Staged {
            "staged chunk"
        } else {
            "chunk"
        };
        let expected = chunk_len(size, cs, u64::from(c));
        match kv.read_chunk(self.id, kind, ChunkNo(c))? {
            Some(data) if data.len() as u64 == expected => Ok(data),
            Some(data) => Err(Error::corrupt(
                &self.name,
                format!(
                    "{what} {c} is {} bytes where the file size implies {expected}",
                    data.len()
                ),
            )),
            None => Err(Error::corrupt(
                &self.name,
                format!("{what} {c} is missing inside the file"),
            )),
        }
    }

    /// The stored buffer of one whole chunk, for xFetch; `None` when the range is not
    /// exactly one clean stored chunk (SQLite then falls back to xRead).
    pub(crate) fn fetch(&self, kv: &Kv, offset: u64, len: usize) -> Result<Option<Bytes>> {
        let (c, size, cs) = {
            let st = self.state.lock();
            let cs = u64::from(st.chunk_size);
            if st.in_batch
                || cs == 0
                || len as u64 != cs
                || !offset.is_multiple_of(cs)
                || offset + cs > st.size
            {
                return Ok(None);
            }
            let Ok(c) = u32::try_from(offset / cs) else {
                return Ok(None);
            };
            if st.dirty.contains_key(&c)
                || st.truncate_from.is_some_and(|t| t <= c)
                || st.staged.as_ref().is_some_and(|s| s.chunks.contains(&c))
                || st.unsettled
            {
                return Ok(None);
            }
            (c, st.size, cs)
        };
        let data = self.stored_chunk(kv, c, size, cs)?;
        DbCounters::add(&self.counters.pages_fetched, 1);
        Ok(Some(data))
    }

    /// Writes `data` at `offset` into the overlay (flushing it if it grew too large).
    pub(crate) fn write(&self, kv: &Kv, data: &[u8], offset: u64) -> Result<()> {
        let mut st = self.state.lock();
        self.settle_locked(kv, &mut st)?;
        if st.chunk_size == 0 {
            st.chunk_size = self.initial_chunk_size(data.len(), offset);
        }
        let cs = u64::from(st.chunk_size);
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| self.too_large(cs))?;
        if end > max_size(cs) {
            return Err(self.too_large(cs));
        }
        if offset > st.size {
            self.resize(kv, &mut st, offset)?;
        }
        let mut pos = 0usize;
        while pos < data.len() {
            let at = offset + pos as u64;
            let c = at / cs;
            let within = usize_of(at % cs);
            let take = (usize_of(cs) - within).min(data.len() - pos);
            let src = data.get(pos..pos + take).unwrap_or_default();
            let c32 = u32::try_from(c).map_err(|_| self.too_large(cs))?;
            let current_len = usize_of(chunk_len(st.size, cs, c));
            let buf = if within == 0 && take >= current_len {
                // The write covers everything the chunk holds: no need to read it.
                let mut v = Vec::with_capacity(take + FileWrite::SPARE_CAPACITY);
                v.extend_from_slice(src);
                v
            } else {
                let mut v = self.take_chunk(kv, &mut st, c32)?;
                if v.len() < within + take {
                    v.resize(within + take, 0);
                }
                v.get_mut(within..within + take)
                    .ok_or_else(|| Error::corrupt(&self.name, "chunk shorter than written"))?
                    .copy_from_slice(src);
                v
            };
            st.put_dirty(c32, buf);
            st.size = st.size.max(at + take as u64);
            pos += take;
        }
        DbCounters::add(&self.counters.bytes_written, data.len() as u64);
        if self.kind == FileKind::Main {
            self.account(&mut st);
            // Past the shared budget, or past what one kv batch may carry (every
            // backend keeps FoundationDB's limits), the overlay moves to staging.
            if self.budget.used() > self.budget.limit()
                || st.dirty_bytes > WRITEBACK_LIMIT
                || st.dirty.len() >= MAX_OVERLAY_CHUNKS
            {
                self.stage_locked(kv, &mut st)?;
            }
        } else if st.dirty_bytes > WRITEBACK_LIMIT {
            self.flush_locked(kv, &mut st)?;
        }
        Ok(())
    }

    /// Moves the overlay of the transaction in progress into the kv's staging area
    /// (one batch no reader sees), freeing its memory.
    fn stage_locked(&self, kv: &Kv, st: &mut FileState) -> Result<()> {
        // In batches within the kv's limits (a write far past the end fills its gap with
        // zero chunks all at once).
        while !st.dirty.is_empty() {
            self.stage_part_locked(kv, st)?;
        }
        Ok(())
    }

    /// Moves the first chunks of the overlay, up to one batch's worth, to staging.
    fn stage_part_locked(&self, kv: &Kv, st: &mut FileState) -> Result<()> {
        let mut write = kv.file_write(self.id, FileKind::Staged);
        if st.staged.is_none() {
            write.begin_staging();
        }
        let before = st.dirty.len();
        let staged = st.move_overlay_part_to(&mut write, MAX_OVERLAY_CHUNKS, WRITEBACK_LIMIT);
        let pages = (before - st.dirty.len()) as u64;
        self.account(st);
        st.staged = Some(staged);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write.commit()));
        match applied {
            Ok(Ok(())) => {
                DbCounters::add(&self.counters.kv_batches, 1);
                DbCounters::add(&self.counters.pages_staged, pages);
                Ok(())
            }
            Ok(Err(e)) => {
                // The transaction lost pages it had written: it cannot go on. Back to
                // the persisted file; what was staged is removed now or at the next open.
                st.reset_to_persisted();
                self.account(st);
                let _ = kv.discard_staged(self.id);
                Err(e.into())
            }
            Err(panic) => {
                st.reset_to_persisted();
                self.account(st);
                std::panic::resume_unwind(panic)
            }
        }
    }

    fn initial_chunk_size(&self, len: usize, offset: u64) -> u32 {
        match self.kind {
            // The first write to a database is page 1: its length is the page size.
            FileKind::Main => match u32::try_from(len) {
                Ok(n) if offset == 0 && n.is_power_of_two() && (512..=65536).contains(&n) => n,
                _ => FALLBACK_PAGE_SIZE,
            },
            FileKind::MainJournal | FileKind::SuperJournal | FileKind::Staged => JOURNAL_CHUNK,
        }
    }

    fn too_large(&self, cs: u64) -> Error {
        Error::TooLarge {
            file: self.name.clone(),
            max: max_size(cs.max(1)),
        }
    }

    /// Removes chunk `c` from the overlay, or reads it from the kv, as an owned buffer
    /// with room for the checksum trailer. Chunks past the end of the file are empty.
    fn take_chunk(&self, kv: &Kv, st: &mut FileState, c: u32) -> Result<Vec<u8>> {
        if let Some(v) = st.dirty.remove(&c) {
            st.dirty_bytes -= v.len();
            return Ok(v);
        }
        let cs = u64::from(st.chunk_size);
        let mut v = Vec::with_capacity(usize_of(cs) + FileWrite::SPARE_CAPACITY);
        if u64::from(c) * cs < st.size {
            let kind = if st.staged.as_ref().is_some_and(|s| s.chunks.contains(&c)) {
                FileKind::Staged
            } else {
                self.kind
            };
            v.extend_from_slice(&self.chunk_in(kv, kind, c, st.size, cs)?);
        }
        Ok(v)
    }

    /// Sets the file size, dropping chunks past it or adding zero chunks up to it.
    fn resize(&self, kv: &Kv, st: &mut FileState, new_size: u64) -> Result<()> {
        let cs = u64::from(st.chunk_size);
        if cs == 0 {
            // Nothing was ever written, so there is nothing to drop; a grow of an
            // empty file fixes the chunk size like a first write.
            if new_size == 0 {
                st.size = 0;
                return Ok(());
            }
            st.chunk_size = self.initial_chunk_size(0, 0);
            return self.resize(kv, st, new_size);
        }
        if new_size > max_size(cs) {
            return Err(self.too_large(cs));
        }
        let old_size = st.size;
        if new_size < old_size {
            let keep = new_size.div_ceil(cs);
            let keep32 = u32::try_from(keep).map_err(|_| self.too_large(cs))?;
            // Read the new last chunk before changing anything: a failed read must leave
            // the file as it was, not with its tail dropped but its old size.
            let last = if new_size.is_multiple_of(cs) {
                None
            } else {
                let last = keep32 - 1;
                let mut v = self.take_chunk(kv, st, last)?;
                v.truncate(usize_of(new_size % cs));
                Some((last, v))
            };
            let tail = st.dirty.split_off(&keep32);
            st.dirty_bytes -= tail.values().map(Vec::len).sum::<usize>();
            if let Some(staged) = st.staged.as_mut()
                && !staged.chunks.split_off(&keep32).is_empty()
            {
                staged.drop_from = Some(staged.drop_from.map_or(keep32, |t| t.min(keep32)));
            }
            if keep < old_size.div_ceil(cs) {
                st.truncate_from = Some(st.truncate_from.map_or(keep32, |t| t.min(keep32)));
            }
            if let Some((last, v)) = last {
                st.put_dirty(last, v);
            }
            st.size = new_size;
        } else if new_size > old_size {
            let first_new = old_size.div_ceil(cs);
            if !old_size.is_multiple_of(cs) {
                let last = u32::try_from(old_size / cs).map_err(|_| self.too_large(cs))?;
                let mut v = self.take_chunk(kv, st, last)?;
                v.resize(usize_of(chunk_len(new_size, cs, u64::from(last))), 0);
                st.put_dirty(last, v);
            }
            for c in first_new..new_size.div_ceil(cs) {
                let len = usize_of(chunk_len(new_size, cs, c));
                let mut v = Vec::with_capacity(len + FileWrite::SPARE_CAPACITY);
                v.resize(len, 0);
                st.put_dirty(u32::try_from(c).map_err(|_| self.too_large(cs))?, v);
            }
            st.size = new_size;
        }
        Ok(())
    }

    /// xTruncate.
    pub(crate) fn truncate(&self, kv: &Kv, size: u64) -> Result<()> {
        let mut st = self.state.lock();
        self.settle_locked(kv, &mut st)?;
        let resized = self.resize(kv, &mut st, size);
        self.account(&mut st);
        resized
    }

    /// Runs `change`, a change of the stored database made beside SQLite (a restore of
    /// its history), while no handle holds a lock on it and none can take one, then reads
    /// the file afresh. Refused with [`Error::InUse`] while any handle reads or writes it.
    /// The change must move the header's change counter on, so that every connection's
    /// page cache sees it at its next transaction.
    pub(crate) fn replace<T>(&self, kv: &Kv, change: impl FnOnce() -> Result<T>) -> Result<T> {
        let locks = self.locks.lock();
        if !locks.idle() {
            return Err(Error::InUse(self.name.clone()));
        }
        let mut st = self.state.lock();
        self.settle_locked(kv, &mut st)?;
        if st.has_pending() {
            return Err(Error::InUse(self.name.clone()));
        }
        let changed = change();
        // Whatever happened, read the stored file again.
        let persisted = kv.read_meta(self.id, self.kind)?;
        st.persisted = persisted;
        st.first_chunk = None;
        st.durable_generation = None;
        st.reset_to_persisted();
        drop(locks);
        changed
    }

    /// Runs `f` while no commit of this file can run (a fork reads its committed state).
    pub(crate) fn quiet<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _st = self.state.lock();
        f()
    }

    /// Applies the overlay as one kv batch (see the module docs).
    pub(crate) fn flush(&self, kv: &Kv) -> Result<Flushed> {
        let mut st = self.state.lock();
        let flushed = self.flush_locked(kv, &mut st);
        self.account(&mut st);
        self.note_stale(flushed)
    }

    /// Marks the inode stale if `result` says its view of the file is out of date (and
    /// says so in the error).
    fn note_stale<T>(&self, result: Result<T>) -> Result<T> {
        match result {
            Err(Error::Kv(cause @ shoal_kv::Error::PreconditionFailed { .. })) => {
                self.stale.store(true, Ordering::SeqCst);
                Err(Error::Stale {
                    db: self.name.clone(),
                    cause,
                })
            }
            Err(e @ Error::Kv(shoal_kv::Error::Fenced { .. })) => {
                self.stale.store(true, Ordering::SeqCst);
                Err(e)
            }
            other => other,
        }
    }

    /// Commits the transaction in progress (SQLITE_FCNTL_SYNC of the main file): the
    /// overlay as ONE kv batch, or, for a transaction that staged pages, the commit batch
    /// of the staging area and the move of its pages into place.
    pub(crate) fn commit(&self, kv: &Kv) -> Result<Flushed> {
        let mut st = self.state.lock();
        self.settle_locked(kv, &mut st)?;
        // More than one batch can carry (a gap filled just before the commit point):
        // staged first, so the commit batch stays within the kv's limits.
        if st.dirty.len() >= MAX_OVERLAY_CHUNKS || st.dirty_bytes > WRITEBACK_LIMIT {
            self.stage_locked(kv, &mut st)?;
        }
        if st.staged.is_none() {
            let flushed = self.flush_locked(kv, &mut st);
            self.account(&mut st);
            return self.note_stale(flushed);
        }
        let result = self.commit_staged_locked(kv, &mut st);
        self.account(&mut st);
        self.note_stale(result)
    }

    fn commit_staged_locked(&self, kv: &Kv, st: &mut FileState) -> Result<Flushed> {
        let meta = FileMeta {
            chunk_size: st.chunk_size,
            size: st.size,
            generation: st.persisted.as_ref().map_or(0, |p| p.meta.generation) + 1,
        };
        let mut write = kv.file_write(self.id, FileKind::Staged);
        let staged = st.move_overlay_to(&mut write);
        // The move drops every chunk past the new size; chunks truncated and grown
        // again are all rewritten (files have no holes), so they are staged.
        st.truncate_from = None;
        st.first_chunk = None;
        let chunks = staged.chunks.len() as u64;
        let expected = st.persisted.clone();
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write.commit_staged(&meta, expected.as_ref())
        }));
        let stored = match applied {
            Ok(Ok(stored)) => stored,
            Ok(Err(e)) => {
                // Committed or not? The staging area says.
                st.reset_to_persisted();
                match kv.settle_staged(self.id) {
                    Ok(Settled::Finished(stored)) => stored,
                    Ok(_) => return Err(e.into()),
                    Err(_) => {
                        st.unsettled = true;
                        return Err(e.into());
                    }
                }
            }
            Err(panic) => {
                st.reset_to_persisted();
                st.unsettled = true;
                std::panic::resume_unwind(panic)
            }
        };
        st.persisted = Some(stored);
        st.reset_to_persisted();
        DbCounters::add(&self.counters.kv_batches, 1);
        DbCounters::add(&self.counters.staged_commits, 1);
        if self.kind == FileKind::Main {
            DbCounters::add(&self.counters.pages_written, chunks);
        }
        Ok(Flushed { chunks })
    }

    /// Forgets the transaction in progress: its overlay and its staged pages. What it
    /// wrote never reached the kv, so the file is again as last committed. Returns
    /// whether there was anything to forget.
    pub(crate) fn discard(&self, kv: &Kv) -> Result<bool> {
        let mut st = self.state.lock();
        if !st.has_pending() {
            return Ok(false);
        }
        let staged = st.staged.is_some();
        st.reset_to_persisted();
        self.account(&mut st);
        DbCounters::add(&self.counters.rollbacks, 1);
        if staged {
            // Left behind if this fails: the next open removes it.
            kv.discard_staged(self.id)?;
        }
        Ok(true)
    }

    fn flush_locked(&self, kv: &Kv, st: &mut FileState) -> Result<Flushed> {
        let persisted_meta = st.persisted.as_ref().map(|p| p.meta);
        let meta = FileMeta {
            chunk_size: st.chunk_size,
            size: st.size,
            generation: persisted_meta.map_or(0, |m| m.generation) + 1,
        };
        let unchanged = st.dirty.is_empty()
            && st.truncate_from.is_none()
            && persisted_meta
                .is_some_and(|m| m.size == meta.size && m.chunk_size == meta.chunk_size);
        if unchanged {
            return Ok(Flushed::default());
        }
        let mut write = kv.file_write(self.id, self.kind);
        let keeps_first_chunk = st.truncate_from != Some(0);
        if let Some(t) = st.truncate_from.take() {
            write.drop_chunks_from(ChunkNo(t));
        }
        let chunks = st.dirty.len() as u64;
        let mut first = st.first_chunk.take().filter(|_| keeps_first_chunk);
        for (c, data) in std::mem::take(&mut st.dirty) {
            let stored = write.put_chunk(ChunkNo(c), data);
            if c == 0 {
                first = Some(stored);
            }
        }
        st.dirty_bytes = 0;
        let persisted = write.set_meta(&meta, st.persisted.as_ref());
        // The overlay has moved into the write: a backend that panics must leave the file
        // as one that fails does, or the next flush would store the new size without
        // the chunks (the FFI layer still reports the panic).
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write.commit()));
        match applied {
            Ok(Ok(())) => {
                st.persisted = Some(persisted);
                st.first_chunk = first;
                DbCounters::add(&self.counters.kv_batches, 1);
                if self.kind == FileKind::Main {
                    DbCounters::add(&self.counters.pages_written, chunks);
                }
                Ok(Flushed { chunks })
            }
            Ok(Err(e)) => {
                // What the kv did not take never happened: back to the persisted file.
                st.reset_to_persisted();
                Err(e.into())
            }
            Err(panic) => {
                st.reset_to_persisted();
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// The generation of the file as last flushed, if it was ever stored.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.state
            .lock()
            .persisted
            .as_ref()
            .map(|p| p.meta.generation)
    }

    /// Whether generation `generation` is known to be durable already.
    pub(crate) fn is_durable(&self, generation: Option<u64>) -> bool {
        generation.is_some() && self.state.lock().durable_generation == generation
    }

    /// Records that a kv flush completed after generation `generation` was applied.
    pub(crate) fn mark_durable(&self, generation: Option<u64>) {
        let mut st = self.state.lock();
        if generation > st.durable_generation {
            st.durable_generation = generation;
        }
    }

    /// Later writes gather until commit or rollback: the file-level form of an atomic
    /// write batch, which the vfs_file fuzz body drives (SQLite itself never does: the VFS
    /// does not advertise SQLITE_IOCAP_BATCH_ATOMIC, see `vfs.rs`).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn begin_batch(&self, kv: &Kv) -> Result<()> {
        let mut st = self.state.lock();
        self.flush_locked(kv, &mut st)?;
        st.in_batch = true;
        Ok(())
    }

    /// The gathered pages and metadata as ONE batch.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn commit_batch(&self, kv: &Kv) -> Result<Flushed> {
        let mut st = self.state.lock();
        st.in_batch = false;
        let flushed = self.flush_locked(kv, &mut st);
        self.account(&mut st);
        let flushed = flushed?;
        DbCounters::add(&self.counters.batch_commits, 1);
        Ok(flushed)
    }

    /// Forget the gathered pages.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn rollback_batch(&self) {
        DbCounters::add(&self.counters.rollbacks, 1);
        let mut st = self.state.lock();
        st.reset_to_persisted();
        self.account(&mut st);
    }

    /// The file was deleted: every open handle now sees an empty, unstored file.
    pub(crate) fn forget(&self) {
        let mut st = self.state.lock();
        st.persisted = None;
        st.reset_to_persisted();
        self.account(&mut st);
        // A recreated file counts generations from 1 again.
        st.durable_generation = None;
        st.first_chunk = None;
    }
}

impl FileState {
    /// Where chunk `c`'s current bytes are: the overlay, the staging area, the cached
    /// first chunk, or the stored file.
    fn source(&self, c: u32) -> Source<'_> {
        if let Some(chunk) = self.dirty.get(&c) {
            return Source::Bytes(chunk);
        }
        if self.staged.as_ref().is_some_and(|s| s.chunks.contains(&c)) {
            return Source::Staged;
        }
        match &self.first_chunk {
            Some(first) if c == 0 => Source::Bytes(first),
            _ => Source::Stored,
        }
    }

    /// Adds the overlay to `write` (a write of the staging area), after dropping the
    /// staged chunks truncated away since the last one, and returns what is staged once
    /// it applies. The overlay is left empty.
    /// [`FileState::move_overlay_to`] for the overlay's first chunks only: at most
    /// `chunks` of them and about `bytes` bytes (at least one chunk).
    fn move_overlay_part_to(
        &mut self,
        write: &mut FileWrite<'_>,
        chunks: usize,
        bytes: usize,
    ) -> Staged {
        let mut staged = self.staged.take().unwrap_or_default();
        if let Some(t) = staged.drop_from.take() {
            write.drop_chunks_from(ChunkNo(t));
        }
        let (mut moved, mut moved_bytes) = (0, 0);
        while moved < chunks && (moved == 0 || moved_bytes < bytes) {
            let Some((c, data)) = self.dirty.pop_first() else {
                break;
            };
            moved += 1;
            moved_bytes += data.len();
            self.dirty_bytes -= data.len();
            write.put_chunk(ChunkNo(c), data);
            staged.chunks.insert(c);
        }
        staged
    }

    fn move_overlay_to(&mut self, write: &mut FileWrite<'_>) -> Staged {
        let mut staged = self.staged.take().unwrap_or_default();
        if let Some(t) = staged.drop_from.take() {
            write.drop_chunks_from(ChunkNo(t));
        }
        for (c, data) in std::mem::take(&mut self.dirty) {
            write.put_chunk(ChunkNo(c), data);
            staged.chunks.insert(c);
        }
        self.dirty_bytes = 0;
        staged
    }

    fn has_pending(&self) -> bool {
        let meta = self.persisted.as_ref().map_or(FileMeta::EMPTY, |p| p.meta);
        !self.dirty.is_empty()
            || self.truncate_from.is_some()
            || self.staged.is_some()
            || self.size != meta.size
            || (self.size > 0 && self.chunk_size != meta.chunk_size)
    }

    fn put_dirty(&mut self, c: u32, v: Vec<u8>) {
        self.dirty_bytes += v.len();
        if let Some(old) = self.dirty.insert(c, v) {
            self.dirty_bytes -= old.len();
        }
    }

    fn reset_to_persisted(&mut self) {
        // The cached chunk 0 is the persisted one or was taken by the failed flush.
        self.dirty.clear();
        self.dirty_bytes = 0;
        self.truncate_from = None;
        self.in_batch = false;
        self.staged = None;
        let meta = self.persisted.as_ref().map_or(FileMeta::EMPTY, |p| p.meta);
        self.size = meta.size;
        self.chunk_size = meta.chunk_size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_kv::{EntryKind, MemKv};

    fn setup(kind: FileKind) -> (Kv, Inode) {
        let kv = Kv::open(Arc::new(MemKv::new())).unwrap();
        let e = kv.create("f", EntryKind::Database).unwrap();
        let inode = Inode::load(
            &kv,
            e.id,
            kind,
            "f",
            Arc::default(),
            OverlayBudget::new(1 << 30),
            true,
        )
        .unwrap();
        (kv, inode)
    }

    fn contents(kv: &Kv, f: &Inode) -> Vec<u8> {
        let mut buf = vec![0xAA; usize_of(f.size())];
        assert_eq!(f.read(kv, &mut buf, 0).unwrap(), buf.len());
        buf
    }

    fn reload(kv: &Kv, f: &Inode) -> Inode {
        Inode::load(
            kv,
            f.id,
            f.kind,
            "f",
            Arc::default(),
            OverlayBudget::new(1 << 30),
            true,
        )
        .unwrap()
    }

    #[test]
    fn unaligned_writes_match_a_byte_vector_and_survive_a_flush() {
        let (kv, f) = setup(FileKind::MainJournal);
        let mut model = Vec::new();
        let writes: [(u64, usize); 6] = [
            (0, 28),
            (512, 4),
            (516, 4096),
            (4612, 4),
            (100_000, 10),
            (30, 70_000),
        ];
        for (i, (off, len)) in writes.into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            f.write(&kv, &data, off).unwrap();
            let end = usize_of(off) + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[usize_of(off)..end].copy_from_slice(&data);
            assert_eq!(contents(&kv, &f), model, "after write {i}");
        }
        f.flush(&kv).unwrap();
        assert_eq!(contents(&kv, &reload(&kv, &f)), model);
        for new_size in [50_000u64, 50_001, 32_768, 1, 0, 40_000] {
            f.truncate(&kv, new_size).unwrap();
            model.resize(usize_of(new_size), 0);
            assert_eq!(contents(&kv, &f), model, "truncate {new_size}");
            f.flush(&kv).unwrap();
            assert_eq!(
                contents(&kv, &reload(&kv, &f)),
                model,
                "reloaded at {new_size}"
            );
        }
    }

    #[test]
    fn the_first_page_fixes_the_chunk_size() {
        let (kv, f) = setup(FileKind::Main);
        f.write(&kv, &[7u8; 8192], 0).unwrap();
        f.flush(&kv).unwrap();
        let meta = kv.read_meta(f.id, FileKind::Main).unwrap().unwrap().meta;
        assert_eq!((meta.chunk_size, meta.size), (8192, 8192));
    }

    #[test]
    fn a_rolled_back_batch_leaves_the_persisted_file() {
        let (kv, f) = setup(FileKind::Main);
        f.write(&kv, &[1u8; 4096], 0).unwrap();
        f.flush(&kv).unwrap();
        f.begin_batch(&kv).unwrap();
        f.write(&kv, &[2u8; 4096], 4096).unwrap();
        f.write(&kv, &[3u8; 4096], 0).unwrap();
        assert_eq!(f.size(), 8192);
        f.rollback_batch();
        assert_eq!(contents(&kv, &f), vec![1u8; 4096]);
        f.begin_batch(&kv).unwrap();
        f.write(&kv, &[2u8; 4096], 4096).unwrap();
        let flushed = f.commit_batch(&kv).unwrap();
        assert_eq!(flushed.chunks, 1);
        assert_eq!(contents(&kv, &reload(&kv, &f)).len(), 8192);
    }

    #[test]
    fn a_stored_chunk_of_the_wrong_length_is_corrupt() {
        let (kv, f) = setup(FileKind::Main);
        f.write(&kv, &[1u8; 4096], 0).unwrap();
        f.write(&kv, &[1u8; 4096], 4096).unwrap();
        f.flush(&kv).unwrap();
        let mut w = kv.file_write(f.id, FileKind::Main);
        w.put_chunk(ChunkNo(1), vec![0u8; 100]);
        w.commit().unwrap();
        let mut buf = [0u8; 4096];
        assert!(matches!(
            f.read(&kv, &mut buf, 4096),
            Err(Error::Corrupt { .. })
        ));
        assert!(f.fetch(&kv, 4096, 4096).is_err());
        let mut b = shoal_kv::raw::Batch::new();
        b.delete(shoal_kv::raw::keys::chunk_key(f.id, FileKind::Main, ChunkNo(1)).to_vec());
        shoal_kv::raw::of(&kv).apply(b).unwrap();
        let err = f.read(&kv, &mut buf, 4096).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn fetch_lends_the_stored_buffer_only_for_clean_whole_pages() {
        let (kv, f) = setup(FileKind::Main);
        f.write(&kv, &[5u8; 4096], 0).unwrap();
        assert!(
            f.fetch(&kv, 0, 4096).unwrap().is_none(),
            "dirty pages are not lent"
        );
        f.flush(&kv).unwrap();
        let page = f.fetch(&kv, 0, 4096).unwrap().unwrap();
        assert_eq!(&page[..], &[5u8; 4096][..]);
        assert!(f.fetch(&kv, 0, 1024).unwrap().is_none());
        assert!(f.fetch(&kv, 4096, 4096).unwrap().is_none());
    }
}
