//! The loadable extension's entry points (feature `extension`): what SQLite calls when a
//! host loads `libshoal`, and the auto-extension that sets up every connection opened
//! after it. Everything they do is in `crate::extension`, safe.
//!
//! SQLite's contract for an entry point (loadext.html): it receives the connection, a
//! place for an error message (allocated with sqlite3_malloc, freed by SQLite) and the
//! API table through which every SQLite call of the extension goes. Returning
//! SQLITE_OK_LOAD_PERMANENTLY keeps the library loaded after that connection closes: the
//! VFS it registered must outlive every connection.
//!
//! The API table. rusqlite's bindings are those of SQLite 3.45.3, and its
//! `extension_init2` refuses a host whose `sqlite3_libversion_number` is lower, because
//! an older SQLite's table is shorter than the one the bindings read. Hosts ship older
//! SQLites (Debian 12's sqlite3 shell and python3 have 3.40.1), and the table only ever
//! grew at its end, each field in the release sqlite3ext.h marks. So the entry point
//! checks the host's version itself ([`MIN_VERSION`], the oldest whose table this code
//! knows), copies exactly the fields that version has into a full-size table, leaves
//! the rest NULL (rusqlite's wrapper of an absent function asserts rather than calls,
//! and shoal calls none of the four: `is_interrupted`, `stmt_explain`,
//! `get_clientdata`, `set_clientdata`), and gives rusqlite that table with a
//! `libversion_number` that reports at least the bindings' version (rusqlite's own uses
//! of the number are thresholds of 3.37 and older, all below [`MIN_VERSION`]).
//!
//! One SQLite per process: rusqlite keeps the API table's functions in process-wide
//! statics, so a second load from a different SQLite library in the same process (Node
//! with both better-sqlite3 and node:sqlite, say) is refused instead of redirecting the
//! first one's calls.

use std::ffi::{c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use rusqlite::Connection;
use rusqlite::ffi as sys;

use super::vfs::sqlite_string;
use crate::error::panic_message;
use crate::extension;

/// The oldest SQLite the extension loads into: 3.40.0, whose API table ends at
/// `value_encoding`.
pub(crate) const MIN_VERSION: c_int = 3_040_000;

/// How many fields the API table has in each SQLite since [`MIN_VERSION`] (sqlite3ext.h:
/// 3.41.0 added `is_interrupted`, 3.43.0 `stmt_explain`, 3.44.0 `get_clientdata` and
/// `set_clientdata`; 3.45 added none), newest first.
const TABLE_FIELDS: [(c_int, usize); 4] = [
    (3_044_000, 270),
    (3_043_000, 268),
    (3_041_000, 267),
    (MIN_VERSION, 266),
];

const FIELD_SIZE: usize = std::mem::size_of::<usize>();

const _: () = assert!(
    std::mem::size_of::<sys::sqlite3_api_routines>() == 270 * FIELD_SIZE,
    "the bindings' API table is not the 3.44/3.45 one TABLE_FIELDS describes"
);

/// The host's real version, for the `libversion_number` rusqlite is given.
static HOST_VERSION: AtomicI32 = AtomicI32::new(0);

/// The table rusqlite was given, and the host table it was made from.
struct Adapted {
    host: usize,
    table: Box<sys::sqlite3_api_routines>,
}

static ADAPTED: OnceLock<Adapted> = OnceLock::new();

extern "C" fn libversion_number() -> c_int {
    HOST_VERSION
        .load(Ordering::Relaxed)
        .max(sys::SQLITE_VERSION_NUMBER)
}

/// The API table to give rusqlite for the host table `api` (see the module docs).
///
/// # Safety
/// `api` must be the API table SQLite passed an entry point.
unsafe fn adapt(
    api: *mut sys::sqlite3_api_routines,
) -> Result<*mut sys::sqlite3_api_routines, String> {
    if api.is_null() {
        return Err("shoal: SQLite passed no API table".into());
    }
    // SAFETY: per this function's contract `api` is SQLite's table, which always has
    // `libversion_number` (it dates from the table's first release).
    let version = match unsafe { (*api).libversion_number } {
        // SAFETY: SQLite's own function, no arguments.
        Some(f) => unsafe { f() },
        None => return Err("shoal: SQLite's API table has no libversion_number".into()),
    };
    let Some(&(_, fields)) = TABLE_FIELDS.iter().find(|(since, _)| version >= *since) else {
        return Err(format!(
            "shoal: this SQLite is {}.{}.{}; shoal needs 3.40.0 or newer",
            version / 1_000_000,
            version / 1000 % 1000,
            version % 1000
        ));
    };
    let host = api as usize;
    let adapted = ADAPTED.get_or_init(|| {
        HOST_VERSION.store(version, Ordering::Relaxed);
        // SAFETY: every field of the table is an Option of a function pointer, for which
        // all-zero bytes are None.
        let mut table: Box<sys::sqlite3_api_routines> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: the host's table has at least `fields` pointer-sized fields (its
        // version's count, from TABLE_FIELDS), ours has 270 (checked at compile time),
        // and they are two separate allocations.
        unsafe {
            std::ptr::copy_nonoverlapping(
                api.cast::<u8>().cast_const(),
                (&raw mut *table).cast::<u8>(),
                fields * FIELD_SIZE,
            )
        };
        table.libversion_number = Some(libversion_number);
        Adapted { host, table }
    });
    if adapted.host != host {
        return Err(
            "shoal: already loaded into another SQLite library in this process; load it \
             into one SQLite only (its calls go through that library's API table)"
                .into(),
        );
    }
    Ok((&raw const *adapted.table).cast_mut())
}

/// `sqlite3_db_config(db, SQLITE_DBCONFIG_LOOKASIDE, NULL, size, count)` through the
/// host's own function (its binding in rusqlite takes one int only); SQLITE_MISUSE if no
/// table is installed.
pub(crate) fn set_lookaside(db: *mut sys::sqlite3, size: c_int, count: c_int) -> c_int {
    let Some(db_config) = ADAPTED.get().and_then(|a| a.table.db_config) else {
        return sys::SQLITE_MISUSE;
    };
    // SAFETY: the host's sqlite3_db_config; LOOKASIDE takes (void* buffer, int size, int
    // count) and a NULL buffer makes SQLite allocate it; `db` is an open connection
    // (the caller's borrow of it).
    unsafe {
        db_config(
            db,
            sys::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<c_void>(),
            size,
            count,
        )
    }
}

/// Runs an entry point: adapts the table, then rusqlite's `extension_init2` with `load`.
///
/// # Safety
/// The arguments are SQLite's, as an entry point receives them.
unsafe fn enter(
    db: *mut sys::sqlite3,
    err: *mut *mut c_char,
    api: *mut sys::sqlite3_api_routines,
    load: fn(Connection) -> rusqlite::Result<bool>,
) -> c_int {
    let adapted = catch_unwind(|| {
        // SAFETY: SQLite's API table, per this function's contract.
        unsafe { adapt(api) }
    })
    .unwrap_or_else(|panic| {
        Err(format!(
            "shoal: panic while loading: {}",
            panic_message(panic.as_ref())
        ))
    });
    match adapted {
        // SAFETY: SQLite's connection and message pointer; a complete API table.
        Ok(table) => unsafe { Connection::extension_init2(db, err, table, load) },
        Err(message) => {
            if !err.is_null() {
                // SAFETY: `api` is SQLite's table. The table is not installed, so the
                // message is allocated with the host's own sqlite3_malloc, from it.
                let text = unsafe { host_string(api, &message) };
                // SAFETY: SQLite passes a writable pointer for the message, which it
                // frees with sqlite3_free.
                unsafe { *err = text };
            }
            sys::SQLITE_ERROR
        }
    }
}

/// `text` copied into memory from the host's `sqlite3_malloc` (before rusqlite has the
/// table); NULL if there is none.
///
/// # Safety
/// `api` must be NULL or SQLite's API table.
unsafe fn host_string(api: *mut sys::sqlite3_api_routines, text: &str) -> *mut c_char {
    if api.is_null() {
        return std::ptr::null_mut();
    }
    let text = std::ffi::CString::new(text.replace('\0', " ")).unwrap_or_default();
    let bytes = text.as_bytes_with_nul();
    // SAFETY: SQLite's table (this function's contract); `malloc` is in every version.
    let Some(malloc) = (unsafe { (*api).malloc }) else {
        return std::ptr::null_mut();
    };
    let Ok(len) = c_int::try_from(bytes.len()) else {
        return std::ptr::null_mut();
    };
    // SAFETY: sqlite3_malloc returns NULL or `len` writable bytes.
    let out = unsafe { malloc(len) }.cast::<u8>();
    if !out.is_null() {
        // SAFETY: `out` has `bytes.len()` bytes, a fresh allocation apart from `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, bytes.len()) };
    }
    out.cast()
}

/// The entry point SQLite derives from the file name `libshoal.so`: registers the `shoal`
/// VFS (databases name it with `vfs=shoal`).
///
/// # Safety
/// Called by SQLite's extension loader with its arguments (see the module docs).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_shoal_init(
    db: *mut sys::sqlite3,
    err: *mut *mut c_char,
    api: *mut sys::sqlite3_api_routines,
) -> c_int {
    // SAFETY: SQLite's arguments, passed on as they came.
    unsafe { enter(db, err, api, load) }
}

/// Registers the `shoal` VFS as SQLite's default too, for hosts that open databases by
/// name without a URI (better-sqlite3 opens without SQLITE_OPEN_URI, so `?vfs=` is not
/// read): every database opened without naming a VFS is then an actor of the store.
///
/// # Safety
/// As [`sqlite3_shoal_init`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_shoal_default_init(
    db: *mut sys::sqlite3,
    err: *mut *mut c_char,
    api: *mut sys::sqlite3_api_routines,
) -> c_int {
    // SAFETY: as above.
    unsafe { enter(db, err, api, load_as_default) }
}

fn load(conn: Connection) -> rusqlite::Result<bool> {
    load_with(&conn, false)
}

fn load_as_default(conn: Connection) -> rusqlite::Result<bool> {
    load_with(&conn, true)
}

/// Registers the VFS and the auto-extension (once per process) and sets up the loading
/// connection. `Ok(true)`: SQLITE_OK_LOAD_PERMANENTLY.
fn load_with(conn: &Connection, make_default: bool) -> rusqlite::Result<bool> {
    let loaded = catch_unwind(AssertUnwindSafe(|| -> rusqlite::Result<()> {
        extension::register(make_default).map_err(|e| {
            rusqlite::Error::UserFunctionError(
                format!("shoal: cannot register the VFS: {e}").into(),
            )
        })?;
        install_auto_extension()?;
        extension::add_functions(conn)
    }));
    match loaded {
        Ok(done) => done.map(|()| true),
        Err(panic) => Err(rusqlite::Error::UserFunctionError(
            format!(
                "shoal: panic while loading: {}",
                panic_message(panic.as_ref())
            )
            .into(),
        )),
    }
}

/// Has SQLite call [`set_up_connection`] for every connection opened from now on.
/// SQLite ignores a second registration of the same function.
fn install_auto_extension() -> rusqlite::Result<()> {
    type Entry = unsafe extern "C" fn(
        *mut sys::sqlite3,
        *mut *mut c_char,
        *const sys::sqlite3_api_routines,
    ) -> c_int;
    let entry: Entry = set_up_connection;
    // SAFETY: SQLite calls an auto-extension with exactly an entry point's three
    // arguments (sqlite3_auto_extension's contract: "xEntryPoint ... should be cast to
    // the correct signature"); the cast only changes the pointer's declared type.
    let entry = unsafe { std::mem::transmute::<Entry, unsafe extern "C" fn()>(entry) };
    // SAFETY: the function lives as long as the library, which stays loaded.
    let rc = unsafe { sys::sqlite3_auto_extension(Some(entry)) };
    if rc == sys::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            sys::Error::new(rc),
            Some("shoal: cannot install the connection set-up".into()),
        ))
    }
}

/// The auto-extension: sets up a connection as it opens (`extension::set_up`). An error
/// fails the open, with the message SQLite shows as "automatic extension loading failed:
/// <message>".
unsafe extern "C" fn set_up_connection(
    db: *mut sys::sqlite3,
    err: *mut *mut c_char,
    _api: *const sys::sqlite3_api_routines,
) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        // SAFETY: SQLite passes the connection being opened; the Connection made here
        // does not own it (it is not closed on drop) and is dropped before returning.
        let conn = unsafe { Connection::from_handle(db) }.map_err(|e| e.to_string())?;
        let shoal = main_is_shoal(db);
        extension::set_up(&conn, shoal).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message,
            other => other.to_string(),
        })
    }));
    let message = match outcome {
        Ok(Ok(())) => return sys::SQLITE_OK,
        // A refused database's reason, as its pragma failed: say whose it is.
        Ok(Err(message)) if !message.starts_with("shoal") => format!("shoal: {message}"),
        Ok(Err(message)) => message,
        Err(panic) => format!(
            "shoal: panic while setting up a connection: {}",
            panic_message(panic.as_ref())
        ),
    };
    if !err.is_null() {
        // SAFETY: SQLite passes a writable pointer for the message, which it frees with
        // sqlite3_free; sqlite_string allocates with sqlite3_malloc.
        unsafe { *err = sqlite_string(&message) };
    }
    sys::SQLITE_ERROR
}

/// Whether connection `db`'s main database is served by the `shoal` VFS.
fn main_is_shoal(db: *mut sys::sqlite3) -> bool {
    let Some(reg) = extension::registered() else {
        return false;
    };
    let mut vfs: *mut sys::sqlite3_vfs = std::ptr::null_mut();
    // SAFETY: `db` is an open connection (the auto-extension's argument);
    // SQLITE_FCNTL_VFS_POINTER writes one sqlite3_vfs pointer to its argument and is
    // answered by SQLite itself, not the VFS.
    let rc = unsafe {
        sys::sqlite3_file_control(
            db,
            c"main".as_ptr(),
            sys::SQLITE_FCNTL_VFS_POINTER,
            (&raw mut vfs).cast::<c_void>(),
        )
    };
    rc == sys::SQLITE_OK && reg.is_table(vfs)
}
