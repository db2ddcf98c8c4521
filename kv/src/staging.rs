//! The staging area of large transactions: how a transaction larger than its memory
//! share commits atomically without holding its pages in memory.
//!
//! A transaction whose pages outgrow its share writes them, as they come, under
//! [`FileKind::Staged`] of its database: keys no reader looks at, so the database as
//! readers see it is unchanged. The first such write also stores the staging record
//! [`StageRecord::Staging`]. The commit is ONE batch: the last pages (staged too) and
//! the record turned into [`StageRecord::Committed`] with the main file's new metadata,
//! guarded by the main file's current metadata. That batch is the commit point. Then the
//! staged pages are moved into place in batches of at most [`MOVE_BATCH_BYTES`]
//! (resealed under their main keys, the staged keys deleted in the same batch), and a
//! last batch drops the main file's chunks past its new size, writes its new metadata
//! and deletes the record.
//!
//! After a crash, [`Kv::settle_staged`] (run by the VFS before anything reads the
//! database) finishes the move of a committed transaction, or removes the staged pages of
//! one that never committed. Invariants:
//! - before the commit batch, the main file's keys are untouched: a crash leaves the
//!   database as it was;
//! - after it, the transaction is committed and the move is idempotent: every batch of it
//!   moves whole chunks and leaves each either staged or in place, never both lost;
//! - no reader sees the main file between the commit batch and the end of the move (the
//!   VFS holds the writer's exclusive lock through it, and settles before the first read
//!   after a crash), so the half-moved state is never read.

use bytes::Bytes;

use crate::checksum;
use crate::error::{Error, Result};
use crate::file_write::{FileWrite, put_chunk, put_meta};
use crate::keys::{self, ChunkNo, DbId, FileKind, Key};
use crate::records::{FileMeta, StageRecord};
use crate::shared::{Kv, StoredMeta};
use crate::store::Batch;

/// Bytes of staged pages moved into place per batch.
pub const MOVE_BATCH_BYTES: usize = 4 << 20;

/// Operations per batch of the move (two per chunk), well inside
/// [`MAX_BATCH_KEYS`](crate::MAX_BATCH_KEYS) with the last batch's few more and its guards.
const MOVE_BATCH_OPS: usize = 8_000;

/// What [`Kv::settle_staged`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Nothing was staged.
    Nothing,
    /// A transaction that never committed had staged pages: they were removed.
    Discarded,
    /// A committed transaction's pages were moved into place; the main file's metadata
    /// is now this record.
    Finished(StoredMeta),
}

impl FileWrite<'_> {
    /// Marks the first staging write of a transaction: stores [`StageRecord::Staging`],
    /// guarded on no staging record existing. Only for a write of [`FileKind::Staged`].
    pub fn begin_staging(&mut self) -> &mut Self {
        debug_assert_eq!(self.kind, FileKind::Staged);
        let key = keys::meta_key(self.id, FileKind::Staged);
        self.batch
            .put(key.to_vec(), StageRecord::Staging.encode(self.id))
            .guard(key.to_vec(), None);
        self
    }

    /// Commits a staged transaction: applies this write (the transaction's last staged
    /// pages) with the record turned into [`StageRecord::Committed`]`(target)`, guarded on
    /// the main file's metadata being `main_expected` — the commit point — then moves
    /// every staged page into place. Returns the main file's metadata as stored.
    ///
    /// An error before the commit batch applied leaves the database as it was; an error
    /// during the move leaves the transaction committed and the move to
    /// [`Kv::settle_staged`], which must run before the database is read again.
    pub fn commit_staged(
        mut self,
        target: &FileMeta,
        main_expected: Option<&StoredMeta>,
    ) -> Result<StoredMeta> {
        debug_assert_eq!(self.kind, FileKind::Staged);
        let (kv, id) = (self.kv, self.id);
        let key = keys::meta_key(id, FileKind::Staged);
        let main_key = keys::meta_key(id, FileKind::Main);
        self.batch
            .put(key.to_vec(), StageRecord::Committed(*target).encode(id))
            .guard(key.to_vec(), Some(StageRecord::Staging.encode(id)))
            .guard(main_key.to_vec(), main_expected.map(|m| m.raw.clone()));
        kv.apply_for(id, FileKind::Staged, self.batch)?;
        kv.move_staged(id, target)
    }
}

impl Kv {
    /// Removes the staging area of database `id`: the staged pages and record of a
    /// transaction that ended without committing.
    pub fn discard_staged(&self, id: DbId) -> Result<()> {
        let mut b = Batch::new();
        b.delete_range(keys::file_range(id, FileKind::Staged));
        self.apply_for(id, FileKind::Staged, b)
    }

    /// Settles what a transaction left in database `id`'s staging area (see the module
    /// docs): finishes moving a committed one's pages into place, removes an uncommitted
    /// one's. One point read when nothing is staged.
    pub fn settle_staged(&self, id: DbId) -> Result<Settled> {
        let Some(raw) = self.get(&keys::meta_key(id, FileKind::Staged))? else {
            return Ok(Settled::Nothing);
        };
        match StageRecord::decode(id, raw)? {
            StageRecord::Staging => {
                self.discard_staged(id)?;
                Ok(Settled::Discarded)
            }
            StageRecord::Committed(target) => Ok(Settled::Finished(self.move_staged(id, &target)?)),
        }
    }

    /// Moves every staged page of database `id` into place, then makes `target` the main
    /// file's metadata and deletes the staging record.
    fn move_staged(&self, id: DbId, target: &FileMeta) -> Result<StoredMeta> {
        let mut from = ChunkNo(0);
        loop {
            let mut batch = Batch::new();
            let mut bytes = 0usize;
            let mut next = None;
            for item in self.scan(keys::chunks_from(id, FileKind::Staged, from))? {
                let (key, value) = item?;
                let no = match Key::decode(&key)? {
                    Key::Chunk(_, FileKind::Staged, no) => no,
                    other => {
                        return Err(Error::Corrupt {
                            what: other.to_string(),
                            reason: "found among staged chunks".into(),
                        });
                    }
                };
                if bytes >= MOVE_BATCH_BYTES || batch.ops.len() >= MOVE_BATCH_OPS {
                    next = Some(no);
                    break;
                }
                let data = checksum::open(&key, value)?;
                bytes += data.len();
                let mut page = Vec::with_capacity(data.len() + FileWrite::SPARE_CAPACITY);
                page.extend_from_slice(&data);
                put_chunk(&mut batch, id, FileKind::Main, no, page);
                batch.delete(Bytes::copy_from_slice(&key));
            }
            if let Some(no) = next {
                self.apply_for(id, FileKind::Main, batch)?;
                from = no;
                continue;
            }
            let cs = u64::from(target.chunk_size.max(1));
            let keep = u32::try_from(target.size.div_ceil(cs)).map_err(|_| Error::Corrupt {
                what: keys::describe(&keys::meta_key(id, FileKind::Staged)),
                reason: format!("a file of {} bytes in chunks of {cs}", target.size),
            })?;
            batch.delete_range(keys::chunks_from(id, FileKind::Main, ChunkNo(keep)));
            let current = self.read_meta(id, FileKind::Main)?;
            let stored = put_meta(&mut batch, id, FileKind::Main, target, current.as_ref());
            batch.delete(keys::meta_key(id, FileKind::Staged).to_vec());
            self.apply_for(id, FileKind::Main, batch)?;
            return Ok(stored);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mem::MemKv;
    use crate::records::EntryKind;

    fn meta(size: u64, generation: u64) -> FileMeta {
        FileMeta {
            chunk_size: 8,
            size,
            generation,
        }
    }

    fn chunk(kv: &Kv, id: DbId, kind: FileKind, c: u32) -> Option<Vec<u8>> {
        kv.read_chunk(id, kind, ChunkNo(c))
            .unwrap()
            .map(|b| b.to_vec())
    }

    /// A database of 4 chunks of 1s, committed the ordinary way.
    fn setup() -> (Kv, DbId, StoredMeta) {
        let kv = Kv::open(Arc::new(MemKv::new())).unwrap();
        let id = kv.create("a", EntryKind::Database).unwrap().id;
        let empty = kv.read_meta(id, FileKind::Main).unwrap();
        let mut w = kv.file_write(id, FileKind::Main);
        for c in 0..4 {
            w.put_chunk(ChunkNo(c), vec![1; 8]);
        }
        let stored = w.set_meta(&meta(32, 1), empty.as_ref());
        w.commit().unwrap();
        (kv, id, stored)
    }

    #[test]
    fn a_committed_transaction_is_moved_into_place_in_several_batches() {
        let (kv, id, before) = setup();
        // Enough staged chunks for more than one move batch, staged in several writes as
        // the VFS does (each within the batch limits).
        let big = MOVE_BATCH_OPS + 1_000;
        for (n, first) in (0..big as u32).step_by(3_000).enumerate() {
            let mut w = kv.file_write(id, FileKind::Staged);
            if n == 0 {
                w.begin_staging();
            }
            for c in first..(first + 3_000).min(big as u32) {
                w.put_chunk(ChunkNo(c), vec![2; 8]);
            }
            w.commit().unwrap();
        }
        assert_eq!(
            chunk(&kv, id, FileKind::Main, 0),
            Some(vec![1; 8]),
            "unseen"
        );
        let mut last = kv.file_write(id, FileKind::Staged);
        last.put_chunk(ChunkNo(1), vec![3; 8]);
        let target = meta(big as u64 * 8, 2);
        let stored = last.commit_staged(&target, Some(&before)).unwrap();
        assert_eq!(stored.meta, target);
        assert_eq!(kv.read_meta(id, FileKind::Main).unwrap(), Some(stored));
        assert_eq!(chunk(&kv, id, FileKind::Main, 0), Some(vec![2; 8]));
        assert_eq!(chunk(&kv, id, FileKind::Main, 1), Some(vec![3; 8]));
        assert_eq!(
            chunk(&kv, id, FileKind::Main, big as u32 - 1),
            Some(vec![2; 8])
        );
        assert!(
            kv.scan(keys::file_range(id, FileKind::Staged))
                .unwrap()
                .next()
                .is_none()
        );
        assert_eq!(
            kv.audit("a").unwrap().unwrap().problems,
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_shrinking_commit_drops_the_chunks_past_the_new_size() {
        let (kv, id, before) = setup();
        let mut w = kv.file_write(id, FileKind::Staged);
        w.begin_staging().put_chunk(ChunkNo(1), vec![5; 4]);
        w.commit().unwrap();
        let w = kv.file_write(id, FileKind::Staged);
        w.commit_staged(&meta(12, 2), Some(&before)).unwrap();
        assert_eq!(chunk(&kv, id, FileKind::Main, 1), Some(vec![5; 4]));
        assert_eq!(chunk(&kv, id, FileKind::Main, 2), None);
        assert_eq!(chunk(&kv, id, FileKind::Main, 3), None);
        assert_eq!(
            kv.audit("a").unwrap().unwrap().problems,
            Vec::<String>::new()
        );
    }

    #[test]
    fn settling_removes_an_uncommitted_transaction_and_finishes_a_committed_one() {
        let (kv, id, _) = setup();
        assert_eq!(kv.settle_staged(id).unwrap(), Settled::Nothing);
        let mut w = kv.file_write(id, FileKind::Staged);
        w.begin_staging().put_chunk(ChunkNo(0), vec![9; 8]);
        w.commit().unwrap();
        assert_eq!(kv.settle_staged(id).unwrap(), Settled::Discarded);
        assert!(
            kv.scan(keys::file_range(id, FileKind::Staged))
                .unwrap()
                .next()
                .is_none()
        );
        assert_eq!(chunk(&kv, id, FileKind::Main, 0), Some(vec![1; 8]));

        // A crash after the commit batch: the record says committed, nothing moved yet.
        let mut b = Batch::new();
        crate::file_write::put_chunk(&mut b, id, FileKind::Staged, ChunkNo(2), vec![7; 8]);
        b.put(
            keys::meta_key(id, FileKind::Staged).to_vec(),
            StageRecord::Committed(meta(32, 2)).encode(id),
        );
        kv.apply(b).unwrap();
        match kv.settle_staged(id).unwrap() {
            Settled::Finished(m) => assert_eq!(m.meta, meta(32, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(chunk(&kv, id, FileKind::Main, 2), Some(vec![7; 8]));
        assert_eq!(
            kv.read_meta(id, FileKind::Main)
                .unwrap()
                .unwrap()
                .meta
                .generation,
            2
        );
    }

    #[test]
    fn a_stale_writer_cannot_commit_a_staged_transaction() {
        let (kv, id, _) = setup();
        let stale = crate::raw::stored_meta(id, FileKind::Main, meta(32, 7));
        let mut w = kv.file_write(id, FileKind::Staged);
        w.begin_staging().put_chunk(ChunkNo(0), vec![4; 8]);
        let err = w.commit_staged(&meta(32, 8), Some(&stale)).unwrap_err();
        assert!(matches!(err, Error::PreconditionFailed { .. }), "{err}");
        assert_eq!(chunk(&kv, id, FileKind::Main, 0), Some(vec![1; 8]));
    }
}
