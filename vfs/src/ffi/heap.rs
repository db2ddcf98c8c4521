//! SQLite's heap on an allocator arena of its own (`SQLITE_CONFIG_MALLOC`).
//!
//! Why: with SQLite allocating from the process's malloc, a mass wake interleaves every
//! connection's schema and statements with the blocks the key-value caches take in at the
//! same time on the same threads. When the connections close, their memory is free but
//! spread between live cache blocks in pages the allocator cannot give back: measured, a
//! 10,000-actor wake left 135 MB of free heap resident after every actor slept
//! (docs/BENCHMARKS.md, "Memory after a mass wake"). On an arena of its own, SQLite's
//! freed memory is whole pages that [`purge`] returns to the kernel.
//!
//! The arena is jemalloc's (`tikv-jemalloc-sys`, built prefixed, so it is an allocator
//! beside the process's, not a replacement of it: the host keeps its own malloc), created
//! with `arenas.create` and used without thread caches, so any thread may allocate and
//! free in it. It only takes effect if configured before SQLite initialises; otherwise
//! SQLite keeps the heap it has.

use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi as sys;
use tikv_jemalloc_sys as je;

/// Which heap SQLite allocates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqliteHeap {
    /// A jemalloc arena of its own, emptied back to the kernel by [`purge`].
    OwnArena,
    /// The heap SQLite was built with (the process's malloc): SQLite had already
    /// initialised, or the arena could not be made.
    Default,
}

/// The arena index, once SQLite uses it.
static ARENA: OnceLock<Option<u32>> = OnceLock::new();

fn flags(arena: u32) -> c_int {
    je::MALLOCX_ARENA(usize::try_from(arena).unwrap_or(0)) | je::MALLOCX_TCACHE_NONE
}

fn arena() -> u32 {
    // Only called by SQLite after `configure` installed these methods with an arena.
    ARENA.get().copied().flatten().unwrap_or(0)
}

// The methods SQLite calls. None of them can panic (plain calls into jemalloc and integer
// conversions that saturate), so no unwinding can reach SQLite.

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    match usize::try_from(n) {
        // jemalloc's contract: size 0 is undefined; SQLite never asks for it, but guard.
        Ok(size) if size > 0 => {
            // SAFETY: size > 0; the flags name an arena that exists for the process's life.
            unsafe { je::mallocx(size, flags(arena())) }
        }
        _ => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: SQLite only frees what x_malloc/x_realloc returned, once.
    unsafe { je::dallocx(p, je::MALLOCX_TCACHE_NONE) }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    match usize::try_from(n) {
        Ok(size) if size > 0 => {
            // SAFETY: `p` is a live allocation of ours (SQLite never reallocs NULL through
            // xRealloc: sqlite3Realloc sends that to xMalloc); size > 0.
            unsafe { je::rallocx(p, size, flags(arena())) }
        }
        _ => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live allocation of ours.
    let size = unsafe { je::sallocx(p, 0) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    match usize::try_from(n) {
        Ok(size) if size > 0 => {
            // SAFETY: nallocx only computes; size > 0.
            let rounded = unsafe { je::nallocx(size, flags(arena())) };
            c_int::try_from(rounded).unwrap_or(n)
        }
        _ => n,
    }
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    sys::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Makes a jemalloc arena of its own; `None` if jemalloc refuses.
fn create_arena() -> Option<u32> {
    let mut index: u32 = 0;
    let mut len = std::mem::size_of::<u32>();
    // SAFETY: "arenas.create" writes the new arena's index (an unsigned) to `index`,
    // whose size `len` gives; no new value is passed.
    let rc = unsafe {
        je::mallctl(
            c"arenas.create".as_ptr(),
            (&raw mut index).cast(),
            &raw mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(index)
}

/// Puts SQLite's heap on an arena of its own if SQLite has not initialised yet, and says
/// which heap SQLite uses. Only the first call configures; later ones report.
///
/// SQLite's contract for `sqlite3_config`: no other thread may be using SQLite while it
/// runs. Call it before anything in the process uses SQLite (the facade does, in the
/// first `Store::open`); once SQLite is initialised it refuses (SQLITE_MISUSE) and this
/// returns [`SqliteHeap::Default`].
pub fn configure() -> SqliteHeap {
    let arena = ARENA.get_or_init(|| {
        let arena = create_arena()?;
        // Set before SQLite can call the methods (they read it).
        let methods = sys::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: CONFIG_MALLOC takes one pointer to a sqlite3_mem_methods, which SQLite
        // copies before returning. It is refused (SQLITE_MISUSE) once SQLite is
        // initialised; the caller keeps other threads off SQLite meanwhile (above).
        let rc = unsafe { sys::sqlite3_config(sys::SQLITE_CONFIG_MALLOC, &raw const methods) };
        (rc == sys::SQLITE_OK).then_some(arena)
    });
    if arena.is_some() {
        SqliteHeap::OwnArena
    } else {
        SqliteHeap::Default
    }
}

/// Which heap SQLite uses, without configuring anything.
pub fn current() -> SqliteHeap {
    match ARENA.get() {
        Some(Some(_)) => SqliteHeap::OwnArena,
        _ => SqliteHeap::Default,
    }
}

/// Returns the free pages of SQLite's arena to the kernel (nothing without one).
pub fn purge() {
    let Some(Some(arena)) = ARENA.get() else {
        return;
    };
    let Ok(name) = std::ffi::CString::new(format!("arena.{arena}.purge")) else {
        return;
    };
    // SAFETY: "arena.<i>.purge" takes and returns nothing; `name` is NUL-terminated.
    unsafe {
        je::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}
