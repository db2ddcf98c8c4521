//! Files that never need to survive the connection: temp databases, temp and statement
//! journals, transient files. SQLite deletes them on close anyway, so they live in memory
//! owned by the handle and never touch the kv.
//!
//! Their memory is bounded: every temp file of one VFS draws on one [`TempSpace`], and a
//! write that would take it past its limit fails with [`Error::TempFull`] (SQLITE_FULL)
//! instead of growing the process. A file holds its bytes in fixed [`CHUNK`]s, so what it
//! holds is what it is charged (no doubling `Vec` capacity behind the count) and growing a
//! large file never copies it.
//!
//! Nothing else can open them, so locks never conflict; the handle only remembers the
//! level it was asked for, as os_unix.c keeps `eFileLock`, to answer
//! SQLITE_FCNTL_LOCKSTATE.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::ffi::{Control, FileImpl, Reply, SyncFlags};
use crate::lock::LockLevel;

/// Bytes per allocation of a temp file.
const CHUNK: usize = 16 << 10;

/// The memory every temp file of one VFS shares, and its limit.
#[derive(Debug)]
pub(crate) struct TempSpace {
    limit: u64,
    used: AtomicU64,
}

impl TempSpace {
    pub(crate) fn new(limit: u64) -> Arc<TempSpace> {
        Arc::new(TempSpace {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes held by temp files now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Charges `bytes`, or fails without charging anything if that would pass the limit.
    fn take(&self, bytes: u64) -> Result<()> {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .map(drop)
            .map_err(|_| Error::TempFull { limit: self.limit })
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// An in-memory file.
#[derive(Debug)]
pub(crate) struct MemFile {
    space: Arc<TempSpace>,
    chunks: Vec<Box<[u8]>>,
    size: u64,
    lock: LockLevel,
}

impl MemFile {
    pub(crate) fn new(space: Arc<TempSpace>) -> MemFile {
        MemFile {
            space,
            chunks: Vec::new(),
            size: 0,
            lock: LockLevel::None,
        }
    }

    /// Reads into `buf` from `offset`; returns the bytes filled.
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> usize {
        let available = self.size.saturating_sub(offset);
        let n = usize::try_from(available).map_or(buf.len(), |a| a.min(buf.len()));
        let mut done = 0;
        while done < n {
            let (chunk, at) = locate(offset + done as u64);
            let Some(src) = self.chunks.get(chunk).and_then(|c| c.get(at..)) else {
                break;
            };
            let len = src.len().min(n - done);
            if let (Some(dst), Some(src)) = (buf.get_mut(done..done + len), src.get(..len)) {
                dst.copy_from_slice(src);
            }
            done += len;
        }
        done
    }

    /// Writes `data` at `offset`, zero-filling any gap.
    pub(crate) fn write(&mut self, data: &[u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Error::TempFull {
                limit: self.space.limit(),
            })?;
        self.grow_to(end)?;
        let mut done = 0;
        while done < data.len() {
            let (chunk, at) = locate(offset + done as u64);
            let Some(dst) = self.chunks.get_mut(chunk).and_then(|c| c.get_mut(at..)) else {
                break;
            };
            let len = dst.len().min(data.len() - done);
            if let (Some(dst), Some(src)) = (dst.get_mut(..len), data.get(done..done + len)) {
                dst.copy_from_slice(src);
            }
            done += len;
        }
        self.size = self.size.max(end);
        Ok(())
    }

    pub(crate) fn truncate(&mut self, size: u64) -> Result<()> {
        if size > self.size {
            self.grow_to(size)?;
            self.size = size;
            return Ok(());
        }
        let keep = chunks_for(size)?;
        let dropped = self.chunks.len().saturating_sub(keep);
        self.chunks.truncate(keep);
        self.space.give_back((dropped * CHUNK) as u64);
        // A later extension must read zeros where the old bytes were.
        let (last, at) = locate(size);
        if let Some(tail) = self.chunks.get_mut(last).and_then(|c| c.get_mut(at..)) {
            tail.fill(0);
        }
        self.size = size;
        Ok(())
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// xLock: raises the level (never lowers it, as `unixLock`); always granted.
    pub(crate) fn lock(&mut self, level: LockLevel) {
        self.lock = self.lock.max(level);
    }

    /// xUnlock: lowers the level (never raises it, as `posixUnlock`).
    pub(crate) fn unlock(&mut self, level: LockLevel) {
        self.lock = self.lock.min(level);
    }

    /// The level SQLite last asked for (SQLITE_FCNTL_LOCKSTATE).
    pub(crate) fn lock_level(&self) -> LockLevel {
        self.lock
    }

    /// Allocates (zeroed) chunks up to byte `end`, charging them to the temp space first.
    fn grow_to(&mut self, end: u64) -> Result<()> {
        let need = chunks_for(end)?;
        let more = need.saturating_sub(self.chunks.len());
        if more == 0 {
            return Ok(());
        }
        self.space.take((more * CHUNK) as u64)?;
        self.chunks.reserve(more);
        self.chunks
            .extend(std::iter::repeat_with(|| vec![0; CHUNK].into_boxed_slice()).take(more));
        Ok(())
    }
}

/// The trait SQLite's calls reach a temp file through. Each method calls the inherent one
/// of the same name (inherent methods win over trait methods in `MemFile::read` paths).
impl FileImpl for MemFile {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<usize> {
        Ok(MemFile::read(self, buf, offset))
    }

    fn write(&mut self, data: &[u8], offset: u64) -> Result<()> {
        MemFile::write(self, data, offset)
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        MemFile::truncate(self, size)
    }

    /// Nothing to make durable: SQLite deletes these files on close.
    fn sync(&mut self, _flags: SyncFlags) -> Result<()> {
        Ok(())
    }

    fn file_size(&mut self) -> Result<u64> {
        Ok(self.size())
    }

    fn lock(&mut self, level: LockLevel) -> Result<bool> {
        MemFile::lock(self, level);
        Ok(true)
    }

    fn unlock(&mut self, level: LockLevel) -> Result<()> {
        MemFile::unlock(self, level);
        Ok(())
    }

    fn check_reserved_lock(&mut self) -> Result<bool> {
        Ok(false)
    }

    fn control(&mut self, control: Control<'_>) -> Result<Reply> {
        Ok(match control {
            Control::Hint => Reply::Done,
            Control::LockState => Reply::Int(self.lock_level() as i64),
            _ => Reply::NotFound,
        })
    }

    /// A write never disturbs bytes outside it; nothing more is claimed.
    fn device_characteristics(&self) -> i32 {
        rusqlite::ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
    }

    /// Nothing is lent ([`FileImpl::fetch`] is always `None`), so nothing comes back.
    fn unfetch(&mut self, _offset: u64, _ptr: Option<*const u8>) {}

    fn close(self) -> Result<()> {
        Ok(())
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        self.space.give_back((self.chunks.len() * CHUNK) as u64);
    }
}

/// The chunk holding byte `offset`, and the offset inside it.
fn locate(offset: u64) -> (usize, usize) {
    let chunk = usize::try_from(offset / CHUNK as u64).unwrap_or(usize::MAX);
    // Less than CHUNK, so it fits.
    let at = usize::try_from(offset % CHUNK as u64).unwrap_or(0);
    (chunk, at)
}

/// Chunks a file of `size` bytes needs.
fn chunks_for(size: u64) -> Result<usize> {
    usize::try_from(size.div_ceil(CHUNK as u64)).map_err(|_| Error::TooLarge {
        file: "temp file".into(),
        max: usize::MAX as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_short() {
        let mut f = MemFile::new(TempSpace::new(u64::MAX));
        f.write(b"hello", 3).unwrap();
        let mut buf = [9u8; 10];
        assert_eq!(f.read(&mut buf, 0), 8);
        assert_eq!(&buf[..8], b"\0\0\0hello");
        assert_eq!(f.read(&mut buf, 100), 0);
        f.truncate(4).unwrap();
        assert_eq!(f.size(), 4);
    }

    #[test]
    fn writes_and_reads_cross_chunks_and_truncation_zeroes_what_it_cut() {
        let mut f = MemFile::new(TempSpace::new(u64::MAX));
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        f.write(&data, 5).unwrap();
        let mut back = vec![0u8; data.len()];
        assert_eq!(f.read(&mut back, 5), data.len());
        assert_eq!(back, data);
        f.truncate(CHUNK as u64 + 1).unwrap();
        f.truncate(2 * CHUNK as u64).unwrap();
        let mut tail = vec![1u8; CHUNK - 1];
        assert_eq!(f.read(&mut tail, CHUNK as u64 + 1), CHUNK - 1);
        assert!(tail.iter().all(|&b| b == 0), "cut bytes read back as zeros");
    }

    #[test]
    fn temp_files_share_one_limit_and_give_it_back() {
        let space = TempSpace::new(4 * CHUNK as u64);
        let mut a = MemFile::new(Arc::clone(&space));
        let mut b = MemFile::new(Arc::clone(&space));
        a.write(&vec![1; 3 * CHUNK], 0).unwrap();
        let err = b.write(&vec![2; 2 * CHUNK], 0).unwrap_err();
        assert!(matches!(err, Error::TempFull { limit } if limit == 4 * CHUNK as u64));
        assert_eq!(b.size(), 0, "a refused write changes nothing");
        assert_eq!(space.used(), 3 * CHUNK as u64);
        a.truncate(CHUNK as u64).unwrap();
        b.write(&vec![2; 2 * CHUNK], 0).unwrap();
        drop(a);
        drop(b);
        assert_eq!(space.used(), 0);
    }
}
