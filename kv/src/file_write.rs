//! [`FileWrite`]: the typed way to change one stored file, so callers above this crate
//! never build keys, seal values or assemble batches.
//!
//! A `FileWrite` collects the changes of one file (chunks dropped from a number on,
//! chunks put, the file removed, the metadata replaced) and [`FileWrite::commit`] applies
//! them as ONE kv batch, in the order they were added: everything or nothing is visible
//! after a crash. Every value is sealed here with the checksum trailer of its key.
//!
//! Invariant it keeps for the one-writer rule: a metadata write is always guarded by
//! the record the writer last saw ([`StoredMeta::raw`]), so a write based on a stale view
//! of the file is refused ([`Error::PreconditionFailed`](crate::Error)) instead of
//! merged.

use bytes::Bytes;

use crate::checksum;
use crate::error::Result;
use crate::keys::{self, ChunkNo, DbId, FileKind};
use crate::records::FileMeta;
use crate::shared::{Kv, StoredMeta};
use crate::store::Batch;

/// Changes to one stored file, applied atomically by [`FileWrite::commit`]. Made by
/// [`Kv::file_write`].
#[derive(Debug)]
#[must_use = "a FileWrite does nothing until it is committed"]
pub struct FileWrite<'a> {
    pub(crate) kv: &'a Kv,
    pub(crate) id: DbId,
    pub(crate) kind: FileKind,
    pub(crate) batch: Batch,
}

impl Kv {
    /// Starts a write of file `kind` of database `id`.
    pub fn file_write(&self, id: DbId, kind: FileKind) -> FileWrite<'_> {
        FileWrite {
            kv: self,
            id,
            kind,
            batch: Batch::new(),
        }
    }
}

impl FileWrite<'_> {
    /// Spare capacity a chunk's buffer should have beyond its data, so that sealing it
    /// in [`FileWrite::put_chunk`] does not reallocate.
    pub const SPARE_CAPACITY: usize = checksum::TRAILER_LEN;

    /// Removes every stored chunk numbered `first` or more (a truncation). Chunks put
    /// after this call in the same write survive it.
    pub fn drop_chunks_from(&mut self, first: ChunkNo) -> &mut Self {
        self.batch
            .delete_range(keys::chunks_from(self.id, self.kind, first));
        self
    }

    /// Removes the whole file: its metadata and every chunk.
    pub fn remove(&mut self) -> &mut Self {
        self.batch
            .delete_range(keys::file_range(self.id, self.kind));
        self
    }

    /// Stores chunk `no` as `data` and returns the chunk's bytes as they will be read
    /// back (a view of the sealed value, without a copy). `data` should have
    /// [`FileWrite::SPARE_CAPACITY`] bytes of spare capacity.
    pub fn put_chunk(&mut self, no: ChunkNo, data: Vec<u8>) -> Bytes {
        put_chunk(&mut self.batch, self.id, self.kind, no, data)
    }

    /// Replaces the file's metadata with `meta`, guarded on the stored record being
    /// `expected` (`None`: the file must not exist). Returns the record as it will be
    /// stored, which guards the next write.
    pub fn set_meta(&mut self, meta: &FileMeta, expected: Option<&StoredMeta>) -> StoredMeta {
        put_meta(&mut self.batch, self.id, self.kind, meta, expected)
    }

    /// Whether the write changes nothing.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Applies the write as one batch (see [`Kv::commit_durable`] for making it
    /// durable). Fails, applying nothing, if the metadata guard does not hold or the store
    /// refuses writes.
    pub fn commit(self) -> Result<()> {
        self.kv.apply_for(self.id, self.kind, self.batch)
    }

    /// [`FileWrite::commit`], then waits until the write is durable (sharing the flush
    /// with other commits, see [`crate::GroupCommitter`]).
    pub fn commit_durable(self) -> Result<()> {
        let kv = self.kv;
        self.commit()?;
        kv.commit_durable()
    }
}

/// Adds a put of chunk `no` of file `kind` of database `id`, sealed, to `batch`; returns
/// the chunk's bytes (a view of the sealed value).
pub fn put_chunk(batch: &mut Batch, id: DbId, kind: FileKind, no: ChunkNo, data: Vec<u8>) -> Bytes {
    let key = keys::chunk_key(id, kind, no);
    let len = data.len();
    let value = checksum::seal(&key, data);
    let payload = value.slice(..len);
    batch.put(key.to_vec(), value);
    payload
}

/// Adds a put of file `kind`'s metadata to `batch`, guarded on the stored record being
/// `expected`; returns the record as it will be stored.
pub fn put_meta(
    batch: &mut Batch,
    id: DbId,
    kind: FileKind,
    meta: &FileMeta,
    expected: Option<&StoredMeta>,
) -> StoredMeta {
    let key = keys::meta_key(id, kind);
    let raw = meta.encode(id, kind);
    batch
        .put(key.to_vec(), raw.clone())
        .guard(key.to_vec(), expected.map(|p| p.raw.clone()));
    StoredMeta { meta: *meta, raw }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::Error;
    use crate::mem::MemKv;
    use crate::records::EntryKind;

    fn kv() -> Kv {
        Kv::open(Arc::new(MemKv::new())).unwrap()
    }

    #[test]
    fn a_write_is_one_guarded_batch_and_reads_back() {
        let kv = kv();
        let e = kv.create("a", EntryKind::Database).unwrap();
        let before = kv.read_meta(e.id, FileKind::Main).unwrap();
        let mut w = kv.file_write(e.id, FileKind::Main);
        let page = w.put_chunk(ChunkNo(0), vec![7; 16]);
        let meta = FileMeta {
            chunk_size: 16,
            size: 16,
            generation: 1,
        };
        let stored = w.set_meta(&meta, before.as_ref());
        w.commit().unwrap();
        assert_eq!(&page[..], &[7; 16]);
        assert_eq!(kv.read_meta(e.id, FileKind::Main).unwrap(), Some(stored));
        let chunk = kv.read_chunk(e.id, FileKind::Main, ChunkNo(0)).unwrap();
        assert_eq!(chunk.as_deref(), Some(&[7u8; 16][..]));

        // A second write from the stale view is refused and applies nothing.
        let mut stale = kv.file_write(e.id, FileKind::Main);
        stale.put_chunk(ChunkNo(0), vec![9; 16]);
        stale.set_meta(&meta, before.as_ref());
        assert!(matches!(
            stale.commit(),
            Err(Error::PreconditionFailed { .. })
        ));
        let chunk = kv.read_chunk(e.id, FileKind::Main, ChunkNo(0)).unwrap();
        assert_eq!(chunk.as_deref(), Some(&[7u8; 16][..]));
    }

    #[test]
    fn truncation_and_removal_drop_only_this_file() {
        let kv = kv();
        let e = kv.create("a", EntryKind::Database).unwrap();
        for kind in [FileKind::Main, FileKind::MainJournal] {
            let mut w = kv.file_write(e.id, kind);
            for c in 0..4 {
                w.put_chunk(ChunkNo(c), vec![1; 8]);
            }
            w.commit().unwrap();
        }
        let mut w = kv.file_write(e.id, FileKind::Main);
        w.drop_chunks_from(ChunkNo(1))
            .put_chunk(ChunkNo(2), vec![2; 8]);
        w.commit().unwrap();
        let present = |kind, c| {
            kv.read_chunk(e.id, kind, ChunkNo(c))
                .unwrap()
                .map(|b| b.to_vec())
        };
        assert_eq!(present(FileKind::Main, 0), Some(vec![1; 8]));
        assert_eq!(present(FileKind::Main, 1), None);
        assert_eq!(present(FileKind::Main, 2), Some(vec![2; 8]), "put after");
        assert_eq!(present(FileKind::Main, 3), None);

        let mut w = kv.file_write(e.id, FileKind::MainJournal);
        w.remove();
        w.commit_durable().unwrap();
        assert_eq!(present(FileKind::MainJournal, 0), None);
        assert!(kv.read_meta(e.id, FileKind::MainJournal).unwrap().is_none());
        assert!(kv.read_meta(e.id, FileKind::Main).unwrap().is_some());
    }
}
