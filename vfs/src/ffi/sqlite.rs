//! Safe wrappers for the few process-wide and per-connection SQLite calls that
//! rusqlite does not expose: memory accounting, heap limits, lookaside, page-cache use.
//! (Where rusqlite has the call, such as `Connection::release_memory`, use its.)

use std::ffi::c_int;

use rusqlite::Connection;
use rusqlite::ffi as sys;

use crate::error::{Error, Result};

/// Bytes SQLite currently has allocated, process-wide.
pub fn memory_used() -> i64 {
    // SAFETY: no arguments; thread-safe in SQLite's serialized/multi-thread modes.
    unsafe { sys::sqlite3_memory_used() }
}

/// The most SQLite has had allocated at once since the last reset.
pub fn memory_highwater(reset: bool) -> i64 {
    // SAFETY: plain integer argument.
    unsafe { sys::sqlite3_memory_highwater(c_int::from(reset)) }
}

/// Sets SQLite's soft heap limit (0 disables it); returns the previous limit. Past it
/// SQLite frees page-cache memory before allocating more.
pub fn set_soft_heap_limit(bytes: i64) -> i64 {
    // SAFETY: plain integer argument.
    unsafe { sys::sqlite3_soft_heap_limit64(bytes) }
}

/// Bytes of page cache `conn` holds (SQLITE_DBSTATUS_CACHE_USED).
pub fn cache_used(conn: &Connection) -> Result<i64> {
    db_status(conn, sys::SQLITE_DBSTATUS_CACHE_USED)
}

/// Bytes of heap `conn` holds for page cache, schema and prepared statements.
pub fn connection_memory(conn: &Connection) -> Result<i64> {
    let mut total = 0;
    for op in [
        sys::SQLITE_DBSTATUS_CACHE_USED,
        sys::SQLITE_DBSTATUS_SCHEMA_USED,
        sys::SQLITE_DBSTATUS_STMT_USED,
    ] {
        total += db_status(conn, op)?;
    }
    Ok(total)
}

/// The raw handle of `conn`, valid while `conn` is borrowed.
fn handle(conn: &Connection) -> *mut sys::sqlite3 {
    // SAFETY: only the pointer is taken; callers use it while `conn` is borrowed and never
    // close it.
    unsafe { conn.handle() }
}

fn db_status(conn: &Connection, op: c_int) -> Result<i64> {
    let (mut current, mut highwater): (c_int, c_int) = (0, 0);
    // SAFETY: the handle is valid while `conn` is borrowed; the out-pointers are locals.
    let rc = unsafe { sys::sqlite3_db_status(handle(conn), op, &mut current, &mut highwater, 0) };
    if rc != sys::SQLITE_OK {
        return Err(Error::Sqlite {
            what: "sqlite3_db_status",
            code: rc,
        });
    }
    Ok(i64::from(current))
}

/// Sets `conn`'s lookaside allocator to `slots` slots of `slot_size` bytes (0 slots
/// disables it). SQLite only changes it while no lookaside memory is in use, so call
/// this right after opening.
pub fn set_lookaside(conn: &Connection, slot_size: u32, slots: u32) -> Result<()> {
    let size = c_int::try_from(slot_size).map_err(|_| Error::Sqlite {
        what: "a lookaside slot size",
        code: sys::SQLITE_RANGE,
    })?;
    let count = c_int::try_from(slots).map_err(|_| Error::Sqlite {
        what: "a lookaside slot count",
        code: sys::SQLITE_RANGE,
    })?;
    #[cfg(not(feature = "extension"))]
    // SAFETY: LOOKASIDE takes (void* buffer, int size, int count); a NULL buffer makes
    // SQLite allocate it; the handle is valid while `conn` is borrowed.
    let rc = unsafe {
        sys::sqlite3_db_config(
            handle(conn),
            sys::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            size,
            count,
        )
    };
    // A loaded extension's binding of sqlite3_db_config takes one int argument only.
    #[cfg(feature = "extension")]
    let rc = super::extension::set_lookaside(handle(conn), size, count);
    if rc != sys::SQLITE_OK {
        return Err(Error::Sqlite {
            what: "setting lookaside",
            code: rc,
        });
    }
    Ok(())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    /// glibc: returns free memory at the top of the heap and in free chunks of every
    /// arena to the kernel.
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
}

/// Frees every page SQLite can drop from its caches, process-wide, and (with glibc) hands
/// freed heap memory back to the kernel, so that RSS falls after many connections close.
/// Returns the bytes SQLite released.
pub fn trim_heap() -> i64 {
    // SAFETY: plain integer argument; SQLite serialises this internally.
    let released = unsafe { sys::sqlite3_release_memory(c_int::MAX) };
    super::heap::purge();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a byte count and only touches allocator state, under
    // glibc's own arena locks; it is safe to call from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
    i64::from(released)
}
