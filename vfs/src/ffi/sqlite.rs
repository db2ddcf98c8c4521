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
    /// glibc: sets one of malloc's parameters; returns 1 on success, 0 on error.
    fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
}

/// glibc's `M_ARENA_MAX` (malloc.h).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_ARENA_MAX: c_int = -8;

/// Caps the number of malloc arenas glibc creates for the process's threads at `max`
/// (`mallopt(M_ARENA_MAX)`, what the `MALLOC_ARENA_MAX` environment variable sets), and
/// returns whether the cap was set: `false` with another C library, for `max` 0 or past
/// `c_int`, or if glibc refused it.
///
/// Why: glibc gives each thread that meets a locked arena a new one, up to eight per core,
/// and each keeps the memory its threads freed. Many writer threads each filling the key-value
/// store's journal and memtable buffers then hold tens of MB beyond the budget (measured:
/// 1,000 actors writing on 64 threads for 60 s peaked at up to 296 MB with glibc's bound,
/// 227 to 242 MB with two arenas per core; docs/BENCHMARKS.md, "Memory while 1,000 actors
/// write").
/// Arenas created before the call stay; call it first thing in `main`.
pub fn cap_malloc_arenas(max: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Ok(max) = c_int::try_from(max) else {
            return false;
        };
        if max == 0 {
            return false;
        }
        // SAFETY: mallopt takes two integers and only changes allocator parameters,
        // under glibc's own lock of the main arena; any thread may call it at any time.
        unsafe { mallopt(M_ARENA_MAX, max) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = max;
        false
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arena_cap_is_set_on_glibc_and_refused_when_meaningless() {
        assert!(!cap_malloc_arenas(0));
        assert!(!cap_malloc_arenas(usize::MAX));
        // Raising the cap above glibc's default changes nothing a test process relies on.
        let set = cap_malloc_arenas(64);
        assert_eq!(set, cfg!(all(target_os = "linux", target_env = "gnu")));
    }
}
