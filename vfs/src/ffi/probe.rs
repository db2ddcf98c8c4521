//! A safe driver of one registered VFS's methods, for the contract tests: it calls the
//! `sqlite3_vfs` and `sqlite3_io_methods` tables as SQLite would, including the edges
//! SQLite itself rarely reaches (a short read, xUnfetch(NULL), a method that fails or
//! panics), and reports SQLite's codes. It keeps SQLite's side of the contract: the file
//! is allocated with `szOsFile` bytes 8-byte aligned, io methods are called only after a
//! successful xOpen, xClose once, and xUnfetch only with a pointer xFetch returned.

use std::ffi::{CString, c_int};

use rusqlite::ffi as sys;

/// One file opened through a registered VFS's xOpen, closed (if it opened) on drop.
#[derive(Debug)]
pub struct Probe {
    /// `szOsFile` bytes, 8-byte aligned as SQLite's allocator gives them; never moves
    /// (a `Vec`'s buffer stays put when the `Probe` moves). They start as a non-zero
    /// pattern, so a `pMethods` that xOpen failed to write cannot pass for NULL.
    space: Vec<u64>,
    /// The file's name, alive until xClose as SQLite's contract requires.
    _name: Option<CString>,
    /// Whether xOpen succeeded and xClose has not run.
    open: bool,
}

/// A page xFetch lent, to give back with [`Probe::unfetch`].
#[derive(Debug)]
pub struct Lend {
    offset: i64,
    ptr: *mut std::ffi::c_void,
}

impl Lend {
    /// The lent page's address.
    pub fn addr(&self) -> usize {
        self.ptr.addr()
    }
}

impl Probe {
    /// Calls xOpen of the VFS registered as `vfs` on `name` (`None`: an anonymous temp
    /// file) with `flags`; returns the probe and xOpen's code. `None` if no VFS of that
    /// name is registered or a name contains NUL.
    pub fn open(vfs: &str, name: Option<&str>, flags: i32) -> Option<(Probe, i32)> {
        let vfs = CString::new(vfs).ok()?;
        let name = match name {
            Some(n) => Some(CString::new(n).ok()?),
            None => None,
        };
        // SAFETY: `vfs` is NUL-terminated and outlives the call.
        let table = unsafe { sys::sqlite3_vfs_find(vfs.as_ptr()) };
        // SAFETY: a registered VFS's table lives while it is registered (shoal's are
        // leaked); it is only read here.
        let t = unsafe { table.as_ref() }?;
        let size = usize::try_from(t.szOsFile).ok()?;
        let x_open = t.xOpen?;
        let mut probe = Probe {
            space: vec![0xaaaa_aaaa_aaaa_aaaa_u64; size.div_ceil(8).max(1)],
            _name: name,
            open: false,
        };
        let file = probe.file();
        let name_ptr = probe
            ._name
            .as_ref()
            .map_or(std::ptr::null(), |n| n.as_ptr());
        let mut out_flags: c_int = 0;
        // SAFETY: as SQLite calls xOpen: the VFS's own table, a name (or NULL) that lives
        // until xClose, szOsFile bytes 8-byte aligned, a writable int.
        let rc = unsafe { x_open(table, name_ptr, file, flags, &mut out_flags) };
        probe.open = rc == sys::SQLITE_OK;
        Some((probe, rc))
    }

    fn file(&mut self) -> *mut sys::sqlite3_file {
        self.space.as_mut_ptr().cast()
    }

    /// Whether the file's `pMethods` is set (it must be NULL after a failed xOpen).
    pub fn has_methods(&self) -> bool {
        // SAFETY: the space holds at least a `sqlite3_file` (written by xOpen, or the
        // initial pattern); reading its pointer field only copies bits.
        !unsafe { (*self.space.as_ptr().cast::<sys::sqlite3_file>()).pMethods }.is_null()
    }

    /// The io methods, while the file is open.
    fn methods(&self) -> Option<&'static sys::sqlite3_io_methods> {
        if !self.open {
            return None;
        }
        // SAFETY: the space starts with a `sqlite3_file` xOpen wrote.
        let methods = unsafe { (*self.space.as_ptr().cast::<sys::sqlite3_file>()).pMethods };
        // SAFETY: xOpen succeeded, so pMethods is null or a table that lives as long as
        // the registration (static per implementation).
        unsafe { methods.as_ref() }
    }

    /// xRead of `buf.len()` bytes at `offset`; `SQLITE_MISUSE` if the file is not open.
    pub fn read(&mut self, buf: &mut [u8], offset: i64) -> i32 {
        let (Some(f), Ok(n)) = (
            self.methods().and_then(|m| m.xRead),
            c_int::try_from(buf.len()),
        ) else {
            return sys::SQLITE_MISUSE;
        };
        // SAFETY: the file is open; `buf` has `n` writable bytes.
        unsafe { f(self.file(), buf.as_mut_ptr().cast(), n, offset) }
    }

    /// xWrite of `data` at `offset`.
    pub fn write(&mut self, data: &[u8], offset: i64) -> i32 {
        let (Some(f), Ok(n)) = (
            self.methods().and_then(|m| m.xWrite),
            c_int::try_from(data.len()),
        ) else {
            return sys::SQLITE_MISUSE;
        };
        // SAFETY: the file is open; `data` has `n` readable bytes.
        unsafe { f(self.file(), data.as_ptr().cast(), n, offset) }
    }

    /// xSync with SQLite's `SQLITE_SYNC_*` `flags`.
    pub fn sync(&mut self, flags: i32) -> i32 {
        let Some(f) = self.methods().and_then(|m| m.xSync) else {
            return sys::SQLITE_MISUSE;
        };
        // SAFETY: the file is open.
        unsafe { f(self.file(), flags) }
    }

    /// xFileSize: its code and the size.
    pub fn file_size(&mut self) -> (i32, i64) {
        let Some(f) = self.methods().and_then(|m| m.xFileSize) else {
            return (sys::SQLITE_MISUSE, 0);
        };
        let mut size = 0;
        // SAFETY: the file is open; `size` is a writable i64.
        let rc = unsafe { f(self.file(), &mut size) };
        (rc, size)
    }

    /// xLock at `level` (an `SQLITE_LOCK_*` value).
    pub fn lock(&mut self, level: i32) -> i32 {
        let Some(f) = self.methods().and_then(|m| m.xLock) else {
            return sys::SQLITE_MISUSE;
        };
        // SAFETY: the file is open.
        unsafe { f(self.file(), level) }
    }

    /// xSectorSize.
    pub fn sector_size(&mut self) -> i32 {
        let Some(f) = self.methods().and_then(|m| m.xSectorSize) else {
            return 0;
        };
        // SAFETY: the file is open.
        unsafe { f(self.file()) }
    }

    /// xDeviceCharacteristics.
    pub fn device_characteristics(&mut self) -> i32 {
        let Some(f) = self.methods().and_then(|m| m.xDeviceCharacteristics) else {
            return 0;
        };
        // SAFETY: the file is open.
        unsafe { f(self.file()) }
    }

    /// xFetch of `len` bytes at `offset`: its code and the page lent, if any.
    pub fn fetch(&mut self, offset: i64, len: i32) -> (i32, Option<Lend>) {
        let Some(f) = self.methods().and_then(|m| m.xFetch) else {
            return (sys::SQLITE_MISUSE, None);
        };
        let mut ptr = std::ptr::null_mut();
        // SAFETY: the file is open; `ptr` is a writable pointer slot.
        let rc = unsafe { f(self.file(), offset, len, &mut ptr) };
        (rc, (!ptr.is_null()).then_some(Lend { offset, ptr }))
    }

    /// xUnfetch of a page [`Probe::fetch`] lent, or xUnfetch(0, NULL) for `None`: drop
    /// every mapping, with no page lent.
    pub fn unfetch(&mut self, lend: Option<Lend>) -> i32 {
        let Some(f) = self.methods().and_then(|m| m.xUnfetch) else {
            return sys::SQLITE_MISUSE;
        };
        let (offset, ptr) = lend.map_or((0, std::ptr::null_mut()), |l| (l.offset, l.ptr));
        // SAFETY: the file is open; `ptr` is NULL or a pointer its xFetch returned.
        unsafe { f(self.file(), offset, ptr) }
    }

    /// xClose; `SQLITE_MISUSE` if the file is not open. The file is closed either way.
    pub fn close(mut self) -> i32 {
        self.close_once()
    }

    fn close_once(&mut self) -> i32 {
        let Some(f) = self.methods().and_then(|m| m.xClose) else {
            return sys::SQLITE_MISUSE;
        };
        self.open = false;
        // SAFETY: the file is open and closed once (`open` is now false).
        unsafe { f(self.file()) }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.close_once();
    }
}
