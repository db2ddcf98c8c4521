//! The only unsafe code of shoal, over `rusqlite::ffi` (no second binding, no second
//! SQLite):
//! - [`sqlite`] and [`heap`]: SQLite's memory (status, the soft heap limit, lookaside,
//!   its own allocator arena), which the facade uses for both of its backings, so they
//!   are compiled in every build;
//! - with feature `vfs`, the VFS itself: SQLite's method tables, the safe seam
//!   (`VfsImpl`, `FileImpl`) and the generic trampolines over it (`vfs.rs`, `traits.rs`,
//!   `io.rs`, `methods.rs`, `probe.rs`).

pub(crate) mod heap;
pub(crate) mod sqlite;
#[cfg(feature = "vfs")]
mod vfs;

#[cfg(feature = "vfs")]
pub use vfs::{
    Control, FileImpl, LockLevel, RegisteredVfs, Reply, SyncFlags, VfsImpl, probe, register,
};
#[cfg(feature = "vfs")]
pub(crate) use vfs::{has_batch_atomic_write, take_last_failure};
