//! The only unsafe code of shoal: the `sqlite3_vfs` and `sqlite3_io_methods` tables and
//! their trampolines, over `rusqlite::ffi` (no second binding, no second SQLite).
//!
//! Each trampoline is named after the SQLite method it implements (`x_read` for xRead),
//! converts its C arguments with checked conversions, calls the safe code in
//! [`crate::vfs`], and converts the result back. Each one runs its body inside
//! [`catch`]: a panic must never cross `extern "C"` (it would abort the host), so it
//! becomes the method's `SQLITE_IOERR_*` code and an entry in SQLite's error log.
//!
//! Memory ownership:
//! - a [`Registration`] is boxed and leaked while registered; `pAppData` points at it;
//! - each open file's state is boxed by xOpen (`ShoalFile::open`) and freed by xClose;
//! - buffers lent by xFetch are owned by the handle until xUnfetch (or xClose).

mod io;
mod methods;
pub(crate) mod sqlite;

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use rusqlite::ffi as sys;

use crate::error::{Error, Op, Result, io_code, panic_message, sqlite_code};
use crate::vfs::{FileHandle, VfsState};

/// Longest file name SQLite may pass (a 512-byte name plus SQLite's suffixes).
const MAX_PATHNAME: c_int = 1024;

/// Serialises find-then-register so two registrations of one name cannot both succeed.
static REGISTRY: Mutex<()> = Mutex::new(());

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// One registered VFS: SQLite's method table and what it needs.
struct Registration {
    vfs: sys::sqlite3_vfs,
    state: Arc<VfsState>,
    /// The default VFS, for randomness, time, sleep and extension loading.
    parent: *mut sys::sqlite3_vfs,
    _name: CString,
}

/// An open file as SQLite allocates it: its `sqlite3_file` header, then our pointer.
#[repr(C)]
struct ShoalFile {
    base: sys::sqlite3_file,
    open: *mut OpenFile,
}

/// What an open file owns.
struct OpenFile {
    vfs: Arc<VfsState>,
    file: FileHandle,
}

/// A registered VFS. Dropping it unregisters the VFS when no file is open; if files are
/// still open it stays registered (and its memory stays allocated) for the rest of the
/// process, since SQLite would still call into it.
pub(crate) struct RegisteredVfs {
    reg: *mut Registration,
}

// SAFETY: the Registration is immutable after registration (SQLite only reads it, under
// its own mutex), and VfsState is Sync; the pointer is only freed in Drop.
unsafe impl Send for RegisteredVfs {}
// SAFETY: as above; &RegisteredVfs only reads the Registration.
unsafe impl Sync for RegisteredVfs {}

impl std::fmt::Debug for RegisteredVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredVfs")
            .field("name", &self.state().name)
            .finish()
    }
}

impl RegisteredVfs {
    pub(crate) fn state(&self) -> &Arc<VfsState> {
        // SAFETY: `reg` came from Box::into_raw in `register` and is freed only in Drop.
        let reg = unsafe { &*self.reg };
        &reg.state
    }
}

impl Drop for RegisteredVfs {
    fn drop(&mut self) {
        let _serial = REGISTRY.lock();
        if self
            .state()
            .open_files
            .load(std::sync::atomic::Ordering::SeqCst)
            != 0
        {
            return;
        }
        // SAFETY: `reg` is live (see `state`); no file is open, so no connection uses the
        // VFS, and after unregistering SQLite holds no pointer to it.
        let vfs = unsafe { &raw mut (*self.reg).vfs };
        // SAFETY: `vfs` was registered by `register`.
        unsafe { sys::sqlite3_vfs_unregister(vfs) };
        // SAFETY: unregistered above; this is the only owner of the box.
        drop(unsafe { Box::from_raw(self.reg) });
    }
}

/// Checks that the linked SQLite was built with SQLITE_ENABLE_BATCH_ATOMIC_WRITE.
pub(crate) fn has_batch_atomic_write() -> bool {
    // SAFETY: the argument is a NUL-terminated string; the call only reads it.
    unsafe { sys::sqlite3_compileoption_used(c"ENABLE_BATCH_ATOMIC_WRITE".as_ptr()) != 0 }
}

/// Registers `state` with SQLite under `state.name` (not as the default VFS).
pub(crate) fn register(state: Arc<VfsState>) -> Result<RegisteredVfs> {
    if !has_batch_atomic_write() {
        return Err(Error::NoBatchAtomicWrite);
    }
    let name = CString::new(state.name.clone())
        .map_err(|_| Error::cant_open(&state.name, "a VFS name may not contain NUL"))?;
    let _serial = REGISTRY.lock();
    // SAFETY: `name` is NUL-terminated and outlives the call.
    if !unsafe { sys::sqlite3_vfs_find(name.as_ptr()) }.is_null() {
        return Err(Error::AlreadyRegistered(state.name.clone()));
    }
    // SAFETY: a null name asks for the default VFS; SQLite initialises itself first.
    let parent = unsafe { sys::sqlite3_vfs_find(std::ptr::null()) };
    if parent.is_null() {
        return Err(Error::Sqlite {
            what: "finding the default VFS",
            code: sys::SQLITE_ERROR,
        });
    }
    let size = c_int::try_from(std::mem::size_of::<ShoalFile>()).unwrap_or(c_int::MAX);
    let reg = Box::into_raw(Box::new(Registration {
        vfs: methods::vfs_table(size, MAX_PATHNAME, name.as_ptr()),
        state,
        parent,
        _name: name,
    }));
    // SAFETY: `reg` is a live, uniquely owned box.
    let table = unsafe { &raw mut (*reg).vfs };
    // SAFETY: as above; pAppData lets trampolines find the registration.
    unsafe { (*table).pAppData = reg.cast() };
    // SAFETY: the table is fully initialised and lives until unregistered in Drop.
    let rc = unsafe { sys::sqlite3_vfs_register(table, 0) };
    if rc != sys::SQLITE_OK {
        // SAFETY: registration failed, so SQLite holds no pointer to the box.
        drop(unsafe { Box::from_raw(reg) });
        return Err(Error::Sqlite {
            what: "registering the VFS",
            code: rc,
        });
    }
    Ok(RegisteredVfs { reg })
}

/// Runs a trampoline body: converts its error, or a panic, to SQLite's code for `op`.
fn catch(op: Op, body: impl FnOnce() -> Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(rc)) => rc,
        Ok(Err(err)) => {
            let code = sqlite_code(&err, op);
            record_error(code, &format!("shoal: {err}"));
            code
        }
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            let code = io_code(op);
            record_error(code, &format!("shoal: panic during {op:?}: {what}"));
            code
        }
    }
}

/// Keeps `msg` for xGetLastError and sends it to SQLite's error log.
fn record_error(code: c_int, msg: &str) {
    LAST_ERROR.with(|e| msg.clone_into(&mut e.borrow_mut()));
    let text = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: the format is "%s" with one NUL-terminated string argument.
    unsafe { sys::sqlite3_log(code, c"%s".as_ptr(), text.as_ptr()) };
}

/// Converts a C string from SQLite to `&str`.
///
/// # Safety
/// `ptr` must be null or a NUL-terminated string that outlives `'a`.
unsafe fn c_str<'a>(ptr: *const c_char) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: per this function's contract.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str()
        .map(Some)
        .map_err(|_| Error::cant_open(&s.to_string_lossy(), "file names must be UTF-8"))
}

/// A copy of `text` allocated with sqlite3_malloc, for SQLite to free.
fn sqlite_string(text: &str) -> *mut c_char {
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    // SAFETY: "%s" with one NUL-terminated argument; SQLite copies it.
    unsafe { sys::sqlite3_mprintf(c"%s".as_ptr(), text.as_ptr()) }
}
