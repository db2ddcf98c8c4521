//! The `sqlite3_vfs` and `sqlite3_io_methods` tables and their trampolines (feature
//! `vfs`), over `rusqlite::ffi` (no second binding, no second SQLite).
//!
//! The seam is two safe traits ([`VfsImpl`], [`FileImpl`], in `traits.rs`) with SQLite's
//! contract written on each method. The trampolines (`x_read::<V>` for xRead, ...) are
//! generic over them and know nothing of shoal: each converts its C arguments with checked
//! conversions, calls the trait, and converts the result back, keeping the parts of the
//! contract a safe signature cannot (a short read's zero-fill and code, `pMethods` NULL
//! after a failed open). Each one runs its body inside [`catch`]: a panic must never cross
//! `extern "C"` (it would abort the host), so it becomes the method's `SQLITE_IOERR_*`
//! code and an entry in SQLite's error log. shoal's VFS (`crate::vfs`) and a test's mock
//! are two implementations of the same traits.
//!
//! Memory ownership:
//! - a [`Registration`] (SQLite's method table for one VFS name) is leaked: SQLite's VFS
//!   list points at it for the rest of the process, so a thread that found the VFS can
//!   never call into freed memory, even while another thread drops the `Vfs`. What it
//!   serves is its [`Slot`], behind a lock that every VFS-level call (xOpen, xDelete,
//!   xAccess, xFullPathname) holds for its whole duration: dropping the `Vfs` takes the
//!   state out (waiting for those calls in flight) and new opens then fail with
//!   SQLITE_CANTOPEN. The io methods of an open file do not take that lock: they reach the
//!   state through the file's own `Arc` ([`OpenFile`]), which keeps the store alive until
//!   the file's xClose, and the last xClose frees a closing slot (taking the lock only
//!   then). A later registration of the same name refills the slot, so the leak is one
//!   small table per distinct name;
//! - each open file's state lives inline in SQLite's own `sqlite3_file` allocation
//!   ([`FileSlot`]: `szOsFile` is its size), written by a successful xOpen and moved out
//!   and dropped by xClose; no second allocation per file;
//! - buffers lent by xFetch are owned by the handle until xUnfetch (or xClose).

// The trampolines and the seam's traits, beside this file in `ffi/`.
#[path = "io.rs"]
mod io;
#[path = "methods.rs"]
mod methods;
#[path = "probe.rs"]
pub mod probe;
#[path = "traits.rs"]
mod traits;

use std::any::Any;
use std::cell::{RefCell, UnsafeCell};
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use parking_lot::RwLock;

use rusqlite::ffi as sys;

pub use traits::{Control, FileImpl, LockLevel, OpenParams, Reply, SyncFlags, VfsImpl};

use crate::error::{Error, Op, Result, io_code, panic_message, sqlite_code};

/// Longest file name SQLite may pass (a 512-byte name plus SQLite's suffixes).
const MAX_PATHNAME: c_int = 1024;

/// Every registration this process made, by name, whatever it serves. Its lock also
/// serialises find-then-register, so two registrations of one name cannot both succeed.
static REGISTRY: Mutex<Vec<(CString, &'static (dyn Any + Send + Sync))>> = Mutex::new(Vec::new());

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    /// The code and message of the last failure on this thread, until taken.
    static LAST_FAILURE: RefCell<Option<(c_int, String)>> = const { RefCell::new(None) };
}

/// Takes the code and message of the last failure a VFS method returned to SQLite on
/// this thread (SQLite runs a statement's VFS calls on the statement's thread).
pub(crate) fn take_last_failure() -> Option<(c_int, String)> {
    LAST_FAILURE.with(|f| f.borrow_mut().take())
}

/// One VFS name registered with SQLite: its method table and what it serves. Never
/// freed (see the module docs).
struct Registration<V> {
    /// SQLite's table. SQLite writes its `pNext` (under its own mutex) when it links or
    /// unlinks a VFS, so Rust only reaches it through the cell's pointer.
    vfs: UnsafeCell<sys::sqlite3_vfs>,
    slot: RwLock<Slot<V>>,
    /// Files open through this name. Exact: opens count under the slot's read lock, and a
    /// slot is refilled only once every file of the state it served has closed.
    open_files: AtomicUsize,
    /// The default VFS, for randomness, time, sleep and extension loading.
    parent: *mut sys::sqlite3_vfs,
    name: CString,
}

// SAFETY: after registration the table is only touched by SQLite under its mutex; the
// parent is SQLite's default VFS, registered for the life of the process and only passed
// back to SQLite; the slot is behind a lock and `V` is Send + Sync.
unsafe impl<V: VfsImpl> Sync for Registration<V> {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl<V: VfsImpl> Send for Registration<V> {}

/// What a registration serves.
enum Slot<V> {
    /// The state of a live `Vfs`.
    Open(Arc<V>),
    /// Its `Vfs` was dropped while files were open: their connections go on (journals,
    /// temp files, xAccess and xDelete still work), but no new database is opened. The
    /// last xClose frees the slot.
    Closing(Arc<V>),
    /// Nothing: new opens fail; the next registration of this name refills it.
    Free,
}

impl<V: VfsImpl> Registration<V> {
    /// The state serving calls for an open database file (`Open` or `Closing`), or an
    /// error saying the store was closed. Runs `body` under the slot's read lock, so a
    /// `Vfs` being dropped waits for it.
    fn serve<T>(&self, new_database: bool, body: impl FnOnce(&Arc<V>) -> Result<T>) -> Result<T> {
        let slot = self.slot.read();
        match &*slot {
            Slot::Open(state) => body(state),
            Slot::Closing(state) if !new_database => body(state),
            _ => Err(Error::StoreClosed(self.name.to_string_lossy().into_owned())),
        }
    }

    /// Called after a file of `state` closed: frees a closing slot once nothing is open.
    fn closed_one(&self, state: &Arc<V>) {
        if self.open_files.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let mut slot = self.slot.write();
        if let Slot::Closing(s) = &*slot
            && Arc::ptr_eq(s, state)
            && self.open_files.load(Ordering::SeqCst) == 0
        {
            *slot = Slot::Free;
        }
    }

    fn table(&self) -> *mut sys::sqlite3_vfs {
        self.vfs.get()
    }
}

/// An open file as SQLite allocates it (`szOsFile` bytes): its `sqlite3_file` header,
/// then the file's state inline. `open` is `Some` from a successful xOpen until xClose.
///
/// SQLite allocates these 8-byte aligned (sqlite3_malloc, or ROUND8 offsets inside the
/// pager's allocation), so [`register`] refuses at compile time a file type that needs
/// more; shoal's handles need 8.
#[repr(C)]
struct FileSlot<V: VfsImpl> {
    base: sys::sqlite3_file,
    open: Option<OpenFile<V>>,
}

/// What an open file owns.
struct OpenFile<V: VfsImpl> {
    reg: &'static Registration<V>,
    vfs: Arc<V>,
    file: V::File,
}

/// A registered VFS: fills its name's `Registration` until dropped. Dropping it waits for
/// SQLite calls in flight on that name, then empties the slot (or, while files are still
/// open, marks it closing so their connections go on until they close).
pub struct RegisteredVfs<V: VfsImpl> {
    reg: &'static Registration<V>,
    state: Arc<V>,
}

impl<V: VfsImpl> std::fmt::Debug for RegisteredVfs<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredVfs")
            .field("name", &self.reg.name)
            .finish()
    }
}

impl<V: VfsImpl> RegisteredVfs<V> {
    /// What this registration serves.
    pub fn state(&self) -> &Arc<V> {
        &self.state
    }

    /// The name SQLite knows the VFS by.
    pub fn name(&self) -> &str {
        self.reg.name.to_str().unwrap_or_default()
    }

    /// Makes this VFS SQLite's default (registering a VFS again moves it to the front).
    #[cfg_attr(not(feature = "extension"), allow(dead_code))]
    pub(crate) fn make_default(&self) -> Result<()> {
        // SAFETY: the table is registered and leaked, so it lives for the process;
        // SQLite relinks it under its own mutex.
        let rc = unsafe { sys::sqlite3_vfs_register(self.reg.table(), 1) };
        if rc != sys::SQLITE_OK {
            return Err(Error::Sqlite {
                what: "making the VFS the default",
                code: rc,
            });
        }
        Ok(())
    }

    /// Whether `vfs` is this registration's table (SQLite's pointer for a file's VFS).
    #[cfg_attr(not(feature = "extension"), allow(dead_code))]
    pub(crate) fn is_table(&self, vfs: *const sys::sqlite3_vfs) -> bool {
        std::ptr::eq(self.reg.table(), vfs)
    }

    /// Files open through this name now (journals and temp files included).
    pub fn open_files(&self) -> usize {
        self.reg.open_files.load(Ordering::SeqCst)
    }
}

impl<V: VfsImpl> Drop for RegisteredVfs<V> {
    fn drop(&mut self) {
        let mut slot = self.reg.slot.write();
        if let Slot::Open(s) = &*slot
            && Arc::ptr_eq(s, &self.state)
        {
            // The write lock waited for every xOpen in flight, so the count is exact.
            *slot = if self.reg.open_files.load(Ordering::SeqCst) == 0 {
                Slot::Free
            } else {
                Slot::Closing(Arc::clone(&self.state))
            };
        }
    }
}

/// Registers `state` with SQLite under `name` (not as the default VFS), reusing the
/// registration of an earlier, dropped VFS of that name and type.
pub fn register<V: VfsImpl>(name: &str, state: Arc<V>) -> Result<RegisteredVfs<V>> {
    register_as(name, state, false)
}

/// [`register`], and as SQLite's default VFS if `make_default` (what an open uses when it
/// names no VFS).
pub(crate) fn register_as<V: VfsImpl>(
    name: &str,
    state: Arc<V>,
    make_default: bool,
) -> Result<RegisteredVfs<V>> {
    const {
        assert!(
            std::mem::align_of::<FileSlot<V>>() <= 8,
            "SQLite aligns a sqlite3_file to 8 bytes only"
        );
    };
    let c_name =
        CString::new(name).map_err(|_| Error::cant_open(name, "a VFS name may not contain NUL"))?;
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, any)) = registry.iter().find(|(n, _)| *n == c_name) {
        // A name once registered for another implementation stays that one's.
        let Some(reg) = any.downcast_ref::<Registration<V>>() else {
            return Err(Error::AlreadyRegistered(name.to_owned()));
        };
        let mut slot = reg.slot.write();
        if !matches!(*slot, Slot::Free) {
            return Err(Error::AlreadyRegistered(name.to_owned()));
        }
        *slot = Slot::Open(Arc::clone(&state));
        let registered = RegisteredVfs { reg, state };
        if make_default {
            registered.make_default()?;
        }
        return Ok(registered);
    }
    let name_ptr = c_name.as_ptr();
    // SAFETY: `name` is NUL-terminated and outlives the call.
    if !unsafe { sys::sqlite3_vfs_find(name_ptr) }.is_null() {
        return Err(Error::AlreadyRegistered(name.to_owned()));
    }
    // SAFETY: a null name asks for the default VFS; SQLite initialises itself first.
    let parent = unsafe { sys::sqlite3_vfs_find(std::ptr::null()) };
    if parent.is_null() {
        return Err(Error::Sqlite {
            what: "finding the default VFS",
            code: sys::SQLITE_ERROR,
        });
    }
    let size = c_int::try_from(std::mem::size_of::<FileSlot<V>>()).unwrap_or(c_int::MAX);
    let reg: &'static Registration<V> = Box::leak(Box::new(Registration {
        vfs: UnsafeCell::new(methods::vfs_table::<V>(size, MAX_PATHNAME, name_ptr)),
        slot: RwLock::new(Slot::Open(Arc::clone(&state))),
        open_files: AtomicUsize::new(0),
        parent,
        // Moving the CString keeps its heap buffer, so `name_ptr` stays valid.
        name: c_name,
    }));
    let table = reg.table();
    // SAFETY: the table is not registered yet, so nothing else reads or writes it;
    // pAppData lets trampolines find the registration.
    unsafe { (*table).pAppData = std::ptr::from_ref(reg).cast_mut().cast() };
    // SAFETY: the table is fully initialised and, leaked, lives for the process.
    let rc = unsafe { sys::sqlite3_vfs_register(table, c_int::from(make_default)) };
    if rc != sys::SQLITE_OK {
        // SQLite holds no pointer to the table; it stays leaked, unused, and releases
        // the state (a rare, small leak).
        *reg.slot.write() = Slot::Free;
        return Err(Error::Sqlite {
            what: "registering the VFS",
            code: rc,
        });
    }
    registry.push((reg.name.clone(), reg));
    Ok(RegisteredVfs { reg, state })
}

/// Runs a trampoline body: converts its error, or a panic, to SQLite's code for `op`.
fn catch(op: Op, body: impl FnOnce() -> Result<c_int>) -> c_int {
    guard(op, body).unwrap_or_else(|code| code)
}

/// Runs a trampoline body whose result is not a code: an error, or a panic, is recorded
/// and comes back as SQLite's code for `op`, for the caller to answer in its own terms.
fn guard<T>(op: Op, body: impl FnOnce() -> Result<T>) -> std::result::Result<T, c_int> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => {
            let code = sqlite_code(&err, op);
            record_error(code, &format!("shoal: {err}"));
            Err(code)
        }
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            let code = io_code(op);
            record_error(code, &format!("shoal: panic during {op:?}: {what}"));
            Err(code)
        }
    }
}

/// Keeps `msg` for xGetLastError and sends it to SQLite's error log.
fn record_error(code: c_int, msg: &str) {
    LAST_ERROR.with(|e| msg.clone_into(&mut e.borrow_mut()));
    LAST_FAILURE.with(|f| *f.borrow_mut() = Some((code, msg.to_owned())));
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

/// A copy of `text` allocated with sqlite3_malloc, for SQLite to free; NULL if SQLite is
/// out of memory. (Not sqlite3_mprintf: a loadable extension cannot call C varargs
/// through SQLite's API table from Rust.)
pub(crate) fn sqlite_string(text: &str) -> *mut c_char {
    let text = CString::new(text.replace('\0', " ")).unwrap_or_default();
    let bytes = text.as_bytes_with_nul();
    let Ok(len) = u64::try_from(bytes.len()) else {
        return std::ptr::null_mut();
    };
    // SAFETY: sqlite3_malloc64 takes any size and returns NULL or that many bytes.
    let out = unsafe { sys::sqlite3_malloc64(len) }.cast::<u8>();
    if !out.is_null() {
        // SAFETY: `out` has `bytes.len()` writable bytes, a fresh allocation that cannot
        // overlap `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, bytes.len()) };
    }
    out.cast()
}
