//! The only unsafe code of shoal, over `rusqlite::ffi` (no second binding, no second
//! SQLite):
//! - [`sqlite`] and [`heap`]: SQLite's memory (status, the soft heap limit, lookaside,
//!   its own allocator arena), which the facade uses for both of its backings, so they
//!   are compiled in every build;
//! - with feature `vfs`, the VFS itself: SQLite's method tables, the safe seam
//!   (`VfsImpl`, `FileImpl`) and the generic trampolines over it (`vfs.rs`, `traits.rs`,
//!   `io.rs`, `methods.rs`, `probe.rs`).

#[cfg(feature = "extension")]
mod extension;
#[cfg(feature = "arena")]
pub(crate) mod heap;
#[cfg(not(feature = "arena"))]
#[path = "heap_none.rs"]
pub(crate) mod heap;
pub(crate) mod sqlite;
#[cfg(feature = "vfs")]
mod vfs;

#[cfg(feature = "extension")]
pub(crate) use vfs::register_as;
#[cfg(feature = "vfs")]
pub(crate) use vfs::take_last_failure;
#[cfg(feature = "vfs")]
pub use vfs::{
    Control, FileImpl, LockLevel, OpenParams, RegisteredVfs, Reply, SyncFlags, VfsImpl, probe,
    register,
};

/// Which heap SQLite allocates from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqliteHeap {
    /// A jemalloc arena of its own, emptied back to the kernel by `purge`.
    OwnArena,
    /// The heap SQLite was built with (the process's malloc): SQLite had already
    /// initialised, the arena could not be made, or the build has none (feature `arena`).
    Default,
}
