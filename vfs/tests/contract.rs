//! The contract of the FFI seam, checked with a mock: a byte-vector VFS implementing
//! `VfsImpl`/`FileImpl`, served through the same generic trampolines as shoal's VFS.
//! Real SQLite drives it through a database's life; `Probe` drives the io methods
//! directly at the edges SQLite rarely reaches (a short read, a failed or panicking
//! xOpen, a panicking method, xUnfetch(NULL), xClose dropping the handle once).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, ffi};
use shoal_vfs::contract::{
    Control, FileImpl, LockLevel, Probe, RegisteredVfs, Reply, SyncFlags, VfsImpl, register,
};
use shoal_vfs::{Error, Result};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// What the mock holds and what it saw.
#[derive(Debug, Default)]
struct Mock {
    files: Mutex<HashMap<String, Vec<u8>>>,
    /// xOpen fails with CANTOPEN.
    fail_open: AtomicBool,
    /// The method (`"open"`, `"read"`, ...) that panics, if any.
    panic_in: Mutex<Option<&'static str>>,
    opened: AtomicUsize,
    dropped: AtomicUsize,
    /// xUnfetch(NULL) calls.
    unmapped_all: AtomicUsize,
    /// Pages given back by xUnfetch.
    given_back: AtomicUsize,
    synced: Mutex<Vec<SyncFlags>>,
}

impl Mock {
    fn maybe_panic(&self, method: &str) {
        if *self.panic_in.lock() == Some(method) {
            panic!("the mock panics in {method}");
        }
    }
}

#[derive(Debug)]
struct MockFile {
    vfs: Arc<Mock>,
    /// `None`: an anonymous temp file, whose bytes are `temp`.
    name: Option<String>,
    temp: Vec<u8>,
    /// Pages lent by xFetch (copies, kept until xUnfetch or xClose).
    lent: Vec<Box<[u8]>>,
}

impl MockFile {
    fn bytes<T>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        match &self.name {
            Some(name) => f(self.vfs.files.lock().entry(name.clone()).or_default()),
            None => f(&mut self.temp),
        }
    }
}

impl Drop for MockFile {
    fn drop(&mut self) {
        self.vfs.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl VfsImpl for Mock {
    type File = MockFile;

    fn open(self: &Arc<Self>, name: Option<&str>, flags: i32) -> Result<MockFile> {
        self.maybe_panic("open");
        if self.fail_open.load(Ordering::SeqCst) {
            return Err(Error::CantOpen {
                name: name.unwrap_or_default().to_owned(),
                reason: "the mock refuses".to_owned(),
            });
        }
        if let Some(name) = name {
            let mut files = self.files.lock();
            if !files.contains_key(name) && flags & ffi::SQLITE_OPEN_CREATE == 0 {
                return Err(Error::NoSuchFile(name.to_owned()));
            }
            files.entry(name.to_owned()).or_default();
        }
        self.opened.fetch_add(1, Ordering::SeqCst);
        Ok(MockFile {
            vfs: Arc::clone(self),
            name: name.map(str::to_owned),
            temp: Vec::new(),
            lent: Vec::new(),
        })
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.maybe_panic("delete");
        match self.files.lock().remove(name) {
            Some(_) => Ok(()),
            None => Err(Error::NoSuchFile(name.to_owned())),
        }
    }

    fn access(&self, name: &str) -> Result<bool> {
        Ok(self.files.lock().get(name).is_some_and(|f| !f.is_empty()))
    }

    fn full_pathname(&self, name: &str) -> Result<String> {
        Ok(name.to_owned())
    }
}

impl FileImpl for MockFile {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.vfs.maybe_panic("read");
        let at = usize::try_from(offset).unwrap();
        Ok(self.bytes(|b| {
            let src = b.get(at..).unwrap_or_default();
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        }))
    }

    fn write(&mut self, data: &[u8], offset: u64) -> Result<()> {
        self.vfs.maybe_panic("write");
        let at = usize::try_from(offset).unwrap();
        self.bytes(|b| {
            if b.len() < at + data.len() {
                b.resize(at + data.len(), 0);
            }
            b[at..at + data.len()].copy_from_slice(data);
        });
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        let size = usize::try_from(size).unwrap();
        self.bytes(|b| b.resize(size, 0));
        Ok(())
    }

    fn sync(&mut self, flags: SyncFlags) -> Result<()> {
        self.vfs.synced.lock().push(flags);
        Ok(())
    }

    fn file_size(&mut self) -> Result<u64> {
        Ok(self.bytes(|b| u64::try_from(b.len()).unwrap()))
    }

    fn lock(&mut self, _level: LockLevel) -> Result<bool> {
        Ok(true)
    }

    fn unlock(&mut self, _level: LockLevel) -> Result<()> {
        Ok(())
    }

    fn check_reserved_lock(&mut self) -> Result<bool> {
        Ok(false)
    }

    fn control(&mut self, _control: Control<'_>) -> Result<Reply> {
        Ok(Reply::NotFound)
    }

    fn device_characteristics(&self) -> i32 {
        self.vfs.maybe_panic("device_characteristics");
        0
    }

    fn fetch(&mut self, offset: u64, len: usize) -> Option<*const u8> {
        let at = usize::try_from(offset).ok()?;
        let page: Box<[u8]> = self.bytes(|b| b.get(at..at + len).map(Into::into))?;
        let ptr = page.as_ptr();
        self.lent.push(page);
        Some(ptr)
    }

    fn unfetch(&mut self, _offset: u64, ptr: Option<*const u8>) {
        match ptr {
            Some(ptr) => {
                self.lent.retain(|p| p.as_ptr() != ptr);
                self.vfs.given_back.fetch_add(1, Ordering::SeqCst);
            }
            None => {
                self.vfs.unmapped_all.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    fn close(self) -> Result<()> {
        self.vfs.maybe_panic("close");
        Ok(())
    }
}

fn mock() -> (Arc<Mock>, RegisteredVfs<Mock>) {
    let name = format!("mock-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let mock = Arc::new(Mock::default());
    let registered = register(&name, Arc::clone(&mock)).unwrap();
    (mock, registered)
}

const CREATE: i32 = ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_CREATE | ffi::SQLITE_OPEN_READWRITE;

fn open(vfs: &RegisteredVfs<Mock>, file: &str) -> Probe {
    let (probe, rc) = Probe::open(vfs.name(), Some(file), CREATE).unwrap();
    assert_eq!(rc, ffi::SQLITE_OK);
    probe
}

#[test]
fn sqlite_keeps_a_database_in_the_mock() {
    let (mock, vfs) = mock();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    {
        let conn = Connection::open_with_flags_and_vfs("db", flags, vfs.name()).unwrap();
        conn.execute_batch(
            "CREATE TABLE t(x INTEGER, y TEXT);
             WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 300)
             INSERT INTO t SELECT i, printf('%0200d', i) FROM k;",
        )
        .unwrap();
    }
    let main = mock.files.lock().get("db").cloned().unwrap();
    assert!(
        main.starts_with(b"SQLite format 3\0"),
        "the mock holds the file"
    );
    assert!(
        !mock.files.lock().contains_key("db-journal"),
        "the commit deleted its journal through xDelete"
    );
    assert!(!mock.synced.lock().is_empty(), "the commit synced");
    let conn = Connection::open_with_flags_and_vfs("db", flags, vfs.name()).unwrap();
    let (n, sum): (i64, i64) = conn
        .query_row("SELECT count(*), sum(x) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((n, sum), (300, 300 * 301 / 2));
    drop(conn);
    let opened = mock.opened.load(Ordering::SeqCst);
    assert!(opened >= 3, "the database twice and its journal");
    assert_eq!(
        mock.dropped.load(Ordering::SeqCst),
        opened,
        "each xClose dropped its handle once"
    );
    assert_eq!(vfs.open_files(), 0);
}

#[test]
fn a_short_read_zero_fills_the_rest_and_returns_short_read() {
    let (_mock, vfs) = mock();
    let mut file = open(&vfs, "short");
    assert_eq!(file.write(b"0123456789", 0), ffi::SQLITE_OK);
    let mut buf = [0xaa_u8; 32];
    assert_eq!(file.read(&mut buf, 4), ffi::SQLITE_IOERR_SHORT_READ);
    assert_eq!(&buf[..6], b"456789");
    assert!(buf[6..].iter().all(|&b| b == 0), "zero-filled: {buf:?}");
    let mut past = [0xaa_u8; 8];
    assert_eq!(file.read(&mut past, 100), ffi::SQLITE_IOERR_SHORT_READ);
    assert_eq!(past, [0; 8], "a read past the end is all zeros");
    let mut full = [0u8; 10];
    assert_eq!(file.read(&mut full, 0), ffi::SQLITE_OK);
    assert_eq!(&full, b"0123456789");
    assert_eq!(file.file_size(), (ffi::SQLITE_OK, 10));
}

#[test]
fn a_failed_open_leaves_pmethods_null() {
    let (mock, vfs) = mock();
    mock.fail_open.store(true, Ordering::SeqCst);
    let (file, rc) = Probe::open(vfs.name(), Some("refused"), CREATE).unwrap();
    assert_eq!(rc, ffi::SQLITE_CANTOPEN);
    assert!(!file.has_methods(), "SQLite must not call xClose on it");
    let (code, msg) = shoal_vfs::take_last_failure().unwrap();
    assert_eq!(code, ffi::SQLITE_CANTOPEN);
    assert!(msg.contains("the mock refuses"), "{msg}");
    drop(file);
    mock.fail_open.store(false, Ordering::SeqCst);

    let (file, rc) = Probe::open(vfs.name(), Some("absent"), ffi::SQLITE_OPEN_MAIN_DB).unwrap();
    assert_ne!(rc, ffi::SQLITE_OK);
    assert!(!file.has_methods());
    drop(file);
    assert_eq!(vfs.open_files(), 0, "a failed open is not counted as open");

    *mock.panic_in.lock() = Some("open");
    let (file, rc) = Probe::open(vfs.name(), Some("panics"), CREATE).unwrap();
    assert_eq!(
        rc,
        ffi::SQLITE_CANTOPEN,
        "a panic in xOpen is its own error code"
    );
    assert!(!file.has_methods());
    drop(file);
    assert_eq!(mock.opened.load(Ordering::SeqCst), 0);
    assert_eq!(mock.dropped.load(Ordering::SeqCst), 0);
}

#[test]
fn a_panicking_method_returns_its_ioerr_code_and_the_file_goes_on() {
    let (mock, vfs) = mock();
    let mut file = open(&vfs, "panics");
    assert_eq!(file.write(b"abcd", 0), ffi::SQLITE_OK);
    *mock.panic_in.lock() = Some("read");
    let mut buf = [0u8; 4];
    assert_eq!(file.read(&mut buf, 0), ffi::SQLITE_IOERR_READ);
    let (code, msg) = shoal_vfs::take_last_failure().unwrap();
    assert_eq!(code, ffi::SQLITE_IOERR_READ);
    assert!(
        msg.contains("panic") && msg.contains("the mock panics in read"),
        "{msg}"
    );
    *mock.panic_in.lock() = Some("write");
    assert_eq!(file.write(b"x", 0), ffi::SQLITE_IOERR_WRITE);
    *mock.panic_in.lock() = Some("device_characteristics");
    assert_eq!(file.device_characteristics(), 0, "a panic claims nothing");
    *mock.panic_in.lock() = None;
    assert_eq!(file.read(&mut buf, 0), ffi::SQLITE_OK);
    assert_eq!(&buf, b"abcd");
    *mock.panic_in.lock() = Some("close");
    assert_eq!(file.close(), ffi::SQLITE_IOERR_CLOSE);
    assert_eq!(
        mock.dropped.load(Ordering::SeqCst),
        1,
        "a panicking close still drops the handle"
    );
    assert_eq!(vfs.open_files(), 0, "and counts the file closed");
}

#[test]
fn unfetch_null_asks_to_drop_every_mapping() {
    let (mock, vfs) = mock();
    let mut file = open(&vfs, "mapped");
    assert_eq!(file.write(&[7; 64], 0), ffi::SQLITE_OK);
    let (rc, lend) = file.fetch(0, 16);
    assert_eq!(rc, ffi::SQLITE_OK);
    let lend = lend.unwrap();
    assert_ne!(lend.addr(), 0);
    assert_eq!(file.unfetch(Some(lend)), ffi::SQLITE_OK);
    assert_eq!(mock.given_back.load(Ordering::SeqCst), 1);
    assert_eq!(mock.unmapped_all.load(Ordering::SeqCst), 0);
    assert_eq!(file.unfetch(None), ffi::SQLITE_OK);
    assert_eq!(
        mock.unmapped_all.load(Ordering::SeqCst),
        1,
        "xUnfetch(NULL) reached the file as `None`"
    );
    assert_eq!(mock.given_back.load(Ordering::SeqCst), 1);
    let (rc, lend) = file.fetch(1000, 16);
    assert_eq!(rc, ffi::SQLITE_OK);
    assert!(lend.is_none(), "no page: SQLite falls back to xRead");
}

#[test]
fn the_handle_is_dropped_once_by_its_close() {
    let (mock, vfs) = mock();
    let mut file = open(&vfs, "once");
    assert_eq!(vfs.open_files(), 1);
    assert_eq!(file.sector_size(), 512);
    assert_eq!(file.lock(ffi::SQLITE_LOCK_SHARED), ffi::SQLITE_OK);
    assert_eq!(
        file.lock(7),
        ffi::SQLITE_IOERR_LOCK,
        "an unknown lock level"
    );
    assert_eq!(mock.dropped.load(Ordering::SeqCst), 0);
    assert_eq!(file.close(), ffi::SQLITE_OK);
    assert_eq!(mock.dropped.load(Ordering::SeqCst), 1);
    assert_eq!(vfs.open_files(), 0);
    let (mut temp, rc) = Probe::open(vfs.name(), None, ffi::SQLITE_OPEN_TEMP_JOURNAL).unwrap();
    assert_eq!(temp.sync(ffi::SQLITE_SYNC_NORMAL), ffi::SQLITE_OK);
    let full_data = ffi::SQLITE_SYNC_FULL | ffi::SQLITE_SYNC_DATAONLY;
    assert_eq!(temp.sync(full_data), ffi::SQLITE_OK);
    let flags = |full, data_only| SyncFlags { full, data_only };
    assert_eq!(
        *mock.synced.lock(),
        [flags(false, false), flags(true, true)],
        "xSync's flags reach the file"
    );
    assert_eq!(rc, ffi::SQLITE_OK);
    drop(temp);
    assert_eq!(mock.dropped.load(Ordering::SeqCst), 2);
}
