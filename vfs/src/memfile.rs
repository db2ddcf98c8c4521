//! Files that never need to survive the connection: temp databases, temp and statement
//! journals, transient files. SQLite deletes them on close anyway, so they live in a
//! byte vector owned by the handle and never touch the kv.
//!
//! Nothing else can open them, so locks never conflict; the handle only remembers the
//! level it was asked for, as os_unix.c keeps `eFileLock`, to answer
//! SQLITE_FCNTL_LOCKSTATE.

use crate::lock::LockLevel;

/// An in-memory file.
#[derive(Debug, Default)]
pub(crate) struct MemFile {
    data: Vec<u8>,
    lock: LockLevel,
}

impl MemFile {
    /// Reads into `buf` from `offset`; returns the bytes filled.
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> usize {
        let Ok(start) = usize::try_from(offset) else {
            return 0;
        };
        let src = self.data.get(start..).unwrap_or_default();
        let n = src.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        n
    }

    /// Writes `data` at `offset`, zero-filling any gap.
    pub(crate) fn write(&mut self, data: &[u8], offset: u64) -> Option<()> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(data.len())?;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data.get_mut(start..end)?.copy_from_slice(data);
        Some(())
    }

    pub(crate) fn truncate(&mut self, size: u64) -> Option<()> {
        let size = usize::try_from(size).ok()?;
        if size < self.data.len() {
            self.data.truncate(size);
            self.data.shrink_to_fit();
        } else {
            self.data.resize(size, 0);
        }
        Some(())
    }

    pub(crate) fn size(&self) -> u64 {
        self.data.len() as u64
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_short() {
        let mut f = MemFile::default();
        f.write(b"hello", 3).unwrap();
        let mut buf = [9u8; 10];
        assert_eq!(f.read(&mut buf, 0), 8);
        assert_eq!(&buf[..8], b"\0\0\0hello");
        assert_eq!(f.read(&mut buf, 100), 0);
        f.truncate(4).unwrap();
        assert_eq!(f.size(), 4);
    }
}
