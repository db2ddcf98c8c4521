//! libshoal: the shoal VFS as a SQLite loadable extension. The entry points
//! (`sqlite3_shoal_init`, `sqlite3_shoal_default_init`) and what they register are in
//! shoal-vfs, feature `extension` (`vfs/src/ffi/extension.rs` and `vfs/src/extension.rs`);
//! linking that crate here is what exports them from the library.

#![forbid(unsafe_code)]

pub use shoal_vfs;
