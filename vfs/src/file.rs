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

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use shoal_kv::{ChunkNo, DbId, FileKind, FileMeta, FileWrite, Kv, StoredMeta, chunk_len};

use crate::error::{Error, Result};
use crate::lock::LockTable;
use crate::stats::DbCounters;

/// Dirty bytes after which a write-back overlay is flushed even without a sync.
pub(crate) const WRITEBACK_LIMIT: usize = 8 << 20;

/// Chunk size of journals and super-journals (their writes are not page-aligned).
pub(crate) const JOURNAL_CHUNK: u32 = 32 << 10;

/// Chunk size of a database whose first write does not reveal its page size.
const FALLBACK_PAGE_SIZE: u32 = 4096;

/// What a flush wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Flushed {
    /// Chunks written (puts).
    pub(crate) chunks: u64,
}

#[derive(Debug)]
pub(crate) struct FileState {
    persisted: Option<StoredMeta>,
    size: u64,
    chunk_size: u32,
    dirty: BTreeMap<u32, Vec<u8>>,
    dirty_bytes: usize,
    truncate_from: Option<u32>,
    in_batch: bool,
    /// The metadata generation last made durable by a flush of the kv (`None`: unknown).
    durable_generation: Option<u64>,
    /// Chunk 0 as stored (SQLite reads the database header at every transaction start).
    first_chunk: Option<Bytes>,
}

/// One stored file, shared by every handle that has it open.
#[derive(Debug)]
pub(crate) struct Inode {
    pub(crate) id: DbId,
    pub(crate) kind: FileKind,
    /// The file's name as SQLite gave it, for messages.
    pub(crate) name: String,
    pub(crate) counters: Arc<DbCounters>,
    pub(crate) locks: Mutex<LockTable>,
    /// For a database file: what is known of its rollback journal without asking the kv
    /// (see [`JournalHint`]).
    pub(crate) journal_hint: Mutex<JournalHint>,
    state: Mutex<FileState>,
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
        may_be_absent: bool,
    ) -> Result<Inode> {
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
            id,
            kind,
            name: name.to_owned(),
            counters,
            locks: Mutex::new(LockTable::default()),
            journal_hint: Mutex::new(JournalHint::default()),
            state: Mutex::new(FileState {
                persisted,
                size: meta.size,
                chunk_size: meta.chunk_size,
                dirty: BTreeMap::new(),
                dirty_bytes: 0,
                truncate_from: None,
                in_batch: false,
                durable_generation: None,
                first_chunk: None,
            }),
        })
    }

    pub(crate) fn size(&self) -> u64 {
        self.state.lock().size
    }

    /// Whether SQLite is between BEGIN_ATOMIC_WRITE and its commit or rollback, and the
    /// size of the file as last stored (0 if it never was), read under one lock: every
    /// write outside a batch asks for both.
    pub(crate) fn batch_and_stored_size(&self) -> (bool, u64) {
        let st = self.state.lock();
        (
            st.in_batch,
            st.persisted.as_ref().map_or(0, |p| p.meta.size),
        )
    }

    /// Whether the file's first bytes, as SQLite would read them now (pending writes
    /// included), are `prefix`. Counts no read in the statistics: it is the VFS looking,
    /// not SQLite.
    pub(crate) fn begins_with(&self, kv: &Kv, prefix: &[u8]) -> Result<bool> {
        let (size, cs, generation) = {
            let st = self.state.lock();
            if st.size < prefix.len() as u64 || st.chunk_size == 0 {
                return Ok(false);
            }
            let cached = st.dirty.get(&0).map(Vec::as_slice);
            if let Some(chunk) = cached.or(st.first_chunk.as_deref()) {
                return Ok(chunk.starts_with(prefix));
            }
            (
                st.size,
                u64::from(st.chunk_size),
                st.persisted.as_ref().map(|p| p.meta.generation),
            )
        };
        let data = self.stored_chunk(kv, 0, size, cs)?;
        self.remember_first_chunk(&data, generation);
        Ok(data.starts_with(prefix))
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
        let mut from_kv: Vec<(u32, usize, usize, usize)> = Vec::new();
        let (size, cs, n, generation) = {
            let st = self.state.lock();
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
                let cached = if c32 == 0 {
                    st.first_chunk.as_deref()
                } else {
                    None
                };
                match st.dirty.get(&c32).map(Vec::as_slice).or(cached) {
                    Some(chunk) => {
                        let src = chunk.get(within..within + take).ok_or_else(|| {
                            Error::corrupt(&self.name, "dirty chunk shorter than the file")
                        })?;
                        buf.get_mut(pos..pos + take)
                            .ok_or_else(|| Error::corrupt(&self.name, "read past the buffer"))?
                            .copy_from_slice(src);
                    }
                    None => from_kv.push((c32, within, pos, take)),
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
        for (c, within, pos, take) in from_kv {
            let data = self.stored_chunk(kv, c, size, cs)?;
            if c == 0 {
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
        let expected = chunk_len(size, cs, u64::from(c));
        match kv.read_chunk(self.id, self.kind, ChunkNo(c))? {
            Some(data) if data.len() as u64 == expected => Ok(data),
            Some(data) => Err(Error::corrupt(
                &self.name,
                format!(
                    "chunk {c} is {} bytes where the file size implies {expected}",
                    data.len()
                ),
            )),
            None => Err(Error::corrupt(
                &self.name,
                format!("chunk {c} is missing inside the file"),
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
            if st.dirty.contains_key(&c) || st.truncate_from.is_some_and(|t| t <= c) {
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
        if !st.in_batch && st.dirty_bytes > WRITEBACK_LIMIT {
            self.flush_locked(kv, &mut st)?;
        }
        Ok(())
    }

    fn initial_chunk_size(&self, len: usize, offset: u64) -> u32 {
        match self.kind {
            // The first write to a database is page 1: its length is the page size.
            FileKind::Main => match u32::try_from(len) {
                Ok(n) if offset == 0 && n.is_power_of_two() && (512..=65536).contains(&n) => n,
                _ => FALLBACK_PAGE_SIZE,
            },
            FileKind::MainJournal | FileKind::SuperJournal => JOURNAL_CHUNK,
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
            v.extend_from_slice(&self.stored_chunk(kv, c, st.size, cs)?);
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
        self.resize(kv, &mut st, size)
    }

    /// Applies the overlay as one kv batch (see the module docs).
    pub(crate) fn flush(&self, kv: &Kv) -> Result<Flushed> {
        let mut st = self.state.lock();
        self.flush_locked(kv, &mut st)
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

    /// SQLITE_FCNTL_BEGIN_ATOMIC_WRITE: later writes gather until commit or rollback.
    pub(crate) fn begin_batch(&self, kv: &Kv) -> Result<()> {
        let mut st = self.state.lock();
        self.flush_locked(kv, &mut st)?;
        st.in_batch = true;
        Ok(())
    }

    /// SQLITE_FCNTL_COMMIT_ATOMIC_WRITE: the gathered pages and metadata as ONE batch.
    pub(crate) fn commit_batch(&self, kv: &Kv) -> Result<Flushed> {
        let mut st = self.state.lock();
        st.in_batch = false;
        let flushed = self.flush_locked(kv, &mut st)?;
        DbCounters::add(&self.counters.batch_commits, 1);
        Ok(flushed)
    }

    /// SQLITE_FCNTL_ROLLBACK_ATOMIC_WRITE: forget the gathered pages.
    pub(crate) fn rollback_batch(&self) {
        DbCounters::add(&self.counters.batch_rollbacks, 1);
        self.state.lock().reset_to_persisted();
    }

    /// The file was deleted: every open handle now sees an empty, unstored file.
    pub(crate) fn forget(&self) {
        let mut st = self.state.lock();
        st.persisted = None;
        st.reset_to_persisted();
        // A recreated file counts generations from 1 again.
        st.durable_generation = None;
        st.first_chunk = None;
    }
}

impl FileState {
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
        let inode = Inode::load(&kv, e.id, kind, "f", Arc::default(), true).unwrap();
        (kv, inode)
    }

    fn contents(kv: &Kv, f: &Inode) -> Vec<u8> {
        let mut buf = vec![0xAA; usize_of(f.size())];
        assert_eq!(f.read(kv, &mut buf, 0).unwrap(), buf.len());
        buf
    }

    fn reload(kv: &Kv, f: &Inode) -> Inode {
        Inode::load(kv, f.id, f.kind, "f", Arc::default(), true).unwrap()
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
