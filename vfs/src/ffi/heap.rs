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
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::HeapRefused;

use rusqlite::ffi as sys;
use tikv_jemalloc_sys as je;

pub use super::SqliteHeap;

/// The arena index, once SQLite uses it: what [`current`] and [`purge`] read.
static ARENA: OnceLock<Option<u32>> = OnceLock::new();

/// The arena index the methods allocate in, stored before `sqlite3_config` installs them
/// (`ARENA` is set only once `configure`'s initialiser has returned, after that call).
static METHODS_ARENA: AtomicU32 = AtomicU32::new(0);

fn flags(arena: u32) -> c_int {
    je::MALLOCX_ARENA(usize::try_from(arena).unwrap_or(0)) | je::MALLOCX_TCACHE_NONE
}

fn arena() -> u32 {
    // Only called by SQLite after `configure` stored the index and installed the methods.
    METHODS_ARENA.load(Ordering::Acquire)
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
/// which heap SQLite uses. Only the first call that is not refused configures; later ones
/// report.
///
/// SQLite's contract for `sqlite3_config`: no other thread may be using SQLite while it
/// runs, and SQLite cannot check it (it refuses only once `sqlite3_initialize` has
/// finished, so a thread in the middle of initialising would get its memory methods
/// swapped). So this configures only while the process has exactly one thread, the
/// caller's; otherwise, and where the thread count is unknown (not Linux), it changes
/// nothing and returns the refusal. Call it first thing in `main` (the `shoal` command
/// does; the facade's `Store::open` does not). Once SQLite is initialised it refuses
/// (SQLITE_MISUSE) and this returns [`SqliteHeap::Default`].
///
/// # Errors
///
/// [`HeapRefused`] if the process has other threads or its thread count is unknown;
/// SQLite then keeps the heap it has.
pub fn configure() -> Result<SqliteHeap, HeapRefused> {
    if let Some(configured) = ARENA.get() {
        return Ok(heap_of(*configured));
    }
    match crate::procfs::thread_count() {
        Some(1) => {}
        Some(threads) => return Err(HeapRefused::OtherThreads { threads }),
        None => return Err(HeapRefused::ThreadCountUnknown),
    }
    // From here to the end the process has one thread, this one: no other thread exists to
    // be inside SQLite, and none can start before this function returns.
    let arena = ARENA.get_or_init(|| {
        let arena = create_arena()?;
        // Stored before SQLite can call the methods (they read it).
        METHODS_ARENA.store(arena, Ordering::Release);
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
        // copies before returning. The process has exactly one thread (checked above), so
        // no other thread is inside SQLite or can enter it while this runs; SQLite refuses
        // (SQLITE_MISUSE) if it has initialised already, keeping the heap it has.
        let rc = unsafe { sys::sqlite3_config(sys::SQLITE_CONFIG_MALLOC, &raw const methods) };
        (rc == sys::SQLITE_OK).then_some(arena)
    });
    Ok(heap_of(*arena))
}

fn heap_of(arena: Option<u32>) -> SqliteHeap {
    if arena.is_some() {
        SqliteHeap::OwnArena
    } else {
        SqliteHeap::Default
    }
}

/// Which heap SQLite uses, without configuring anything.
pub fn current() -> SqliteHeap {
    heap_of(ARENA.get().copied().flatten())
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
