//! shoal: many small SQLite databases, one per actor, stored as pages in one shared
//! embedded key-value store, behind one process-wide memory budget.
//!
//! - [`Store::open`] opens a store directory with a [`Config`] (the backing and the
//!   memory budget);
//! - [`Store::actor`] / [`Store::with_actor`] wake an actor (open its connection, or take
//!   the idle one) and hand out a [`rusqlite::Connection`] tuned for actors; idle actors
//!   beyond the budget are put to sleep (closed), least recently used first;
//! - [`Store::open_actor`] gives a connection the caller owns outright;
//! - list, delete, stats, export to a plain SQLite file, import from one, check;
//! - [`configure_sqlite_heap`], called first thing in `main`, puts SQLite's heap on an
//!   allocator arena of its own so that memory freed by sleeping actors goes back to the
//!   kernel (see its documentation), and [`cap_malloc_arenas`] keeps glibc's per-thread
//!   arenas from holding freed memory beyond the budget.
//!
//! With the default feature `kv-vfs` actors live in the shared key-value store through
//! the shoal VFS ([`Backing::Kv`]); without it, and with [`Backing::Files`] or
//! [`Backing::FilesTuned`] in any build, each actor is one plain SQLite file.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod config;
mod error;
pub mod memory;
mod names;
mod pool;
mod reset;
mod store;
mod transfer;

pub use config::{ActorTuning, Backing, Config, Durability, KvEngine, StoreLayout};
pub use error::{Error, Result};
pub use memory::MemoryReport;
pub use names::{MAX_ACTOR_NAME, validate_actor_name};
pub use store::{Actor, ActorStats, CheckReport, Store};

// The types the API's signatures name, so a caller needs no other crate to name them.
#[cfg(feature = "kv-vfs")]
pub use shoal_kv::Error as KvError;
#[cfg(feature = "kv-vfs")]
pub use shoal_kv::{Bookmark, Collected, CommitInfo, HistoryUsage, PointInTime};
pub use shoal_vfs::sqlite::SqliteHeap;
#[cfg(feature = "kv-vfs")]
pub use shoal_vfs::{Audit, Vfs};
pub use shoal_vfs::{DbStats, Error as VfsError, HeapRefused};

/// Puts SQLite's heap on an allocator arena of its own (a jemalloc arena beside the
/// process's malloc, which stays the host's), unless SQLite has initialised already;
/// returns the heap SQLite uses. Only the first call configures.
///
/// Why: with SQLite on the process's malloc, the memory of actors put to sleep after a
/// mass wake stays resident, spread between blocks the key-value caches took in at the
/// same time (measured: 117 MB of a 10,000-actor wake's 184 MB; docs/BENCHMARKS.md,
/// "Memory after a mass wake"). On its own arena, [`Store::sleep_all`] returns it.
///
/// Call it first thing in `main`, before anything in the process uses SQLite:
/// `sqlite3_config` must not run while another thread is inside SQLite, which SQLite
/// cannot check, so this configures only while the process has exactly one thread
/// (Linux, where the count is known); otherwise it changes nothing and says why. Calls
/// after SQLite started change nothing and return [`SqliteHeap::Default`]; calls after one
/// that configured return the heap configured then. The `shoal` command calls it first
/// thing; [`Store::open`] does not.
///
/// # Errors
///
/// [`HeapRefused`] if the process has other threads, or its thread count is unknown.
pub fn configure_sqlite_heap() -> std::result::Result<SqliteHeap, HeapRefused> {
    shoal_vfs::sqlite::configure_heap()
}

/// Caps the malloc arenas glibc makes for the process's threads at `max`, so memory that
/// many threads freed is reused instead of held in an arena per thread; returns whether
/// the cap was set (`false` with another C library, or for `max` 0).
///
/// Why: with many threads writing, glibc's arenas (up to eight per core) each keep what
/// their threads freed, outside any budget: 1,000 actors committing on 64 threads peaked
/// at up to 296 MB with glibc's bound, 227 to 242 MB with two arenas per core
/// (docs/BENCHMARKS.md, "Memory while 1,000 actors write"). Call it first thing in `main`
/// (arenas made before it stay). Fewer arenas are contended more: one per core cost
/// relaxed commits a fifth of their rate, two per core nothing measurable. The `shoal`
/// command calls it with twice the machine's core count unless the `MALLOC_ARENA_MAX`
/// environment variable is set; [`Store::open`] does not.
pub fn cap_malloc_arenas(max: usize) -> bool {
    shoal_vfs::sqlite::cap_malloc_arenas(max)
}

/// Re-exported so callers name the same rusqlite the store hands out.
pub use rusqlite;
