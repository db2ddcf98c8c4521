//! SQLite's heap in a build without an allocator arena of shoal's own (feature `arena`
//! off): the loadable extension, which runs inside a host that initialised SQLite long
//! before loading it (and a jemalloc linked into a library loaded with dlopen could not
//! get the thread-local storage it needs).

use crate::error::HeapRefused;

pub use super::SqliteHeap;

/// Refuses: this build has no arena to give SQLite.
///
/// # Errors
///
/// Always [`HeapRefused::NoArena`].
pub fn configure() -> Result<SqliteHeap, HeapRefused> {
    Err(HeapRefused::NoArena)
}

/// [`SqliteHeap::Default`]: SQLite allocates from the heap it was built with.
pub fn current() -> SqliteHeap {
    SqliteHeap::Default
}

/// Nothing to return to the kernel without an arena.
pub fn purge() {}
