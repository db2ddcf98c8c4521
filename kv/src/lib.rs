//! shoal-kv: the key-value layer that every actor database of a process lives in.
//!
//! It knows nothing of SQLite. It offers:
//! - [`KvStore`], the backend trait (ordered keys, refcounted values, atomic guarded
//!   batches, flush), with [`FjallKv`] (the default: an LSM-tree whose memory
//!   stays within its configured cache), [`SledKv`] (sled 0.34, selectable) and [`MemKv`]
//!   (the reference model);
//! - [`keys`], the only place keys are built and parsed, and [`checksum`], the only place
//!   values are sealed and verified;
//! - [`Kv`], the shared handle: catalog of names, file records, and the
//!   [`GroupCommitter`] that lets many commits share one flush;
//! - [`FaultyKv`], a wrapper that injects failures for tests;
//! - with the `fuzzing` feature, `fuzzing::kv_ops`, the body of the `kv_ops` fuzz target.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::indexing_slicing)]

mod cache;
pub mod checksum;
mod error;
mod faulty;
mod fjall_kv;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod group_commit;
pub mod keys;
mod mem;
pub mod records;
mod shared;
mod sled_kv;
mod store;

pub use error::{Error, Result};
pub use faulty::{FaultMode, FaultOp, FaultyKv};
pub use fjall_kv::{FjallConfig, FjallKv};
pub use group_commit::{GroupCommitStats, GroupCommitter};
pub use keys::{ChunkNo, DbId, FileKind, KeyRange};
pub use mem::MemKv;
pub use records::{CatalogEntry, EntryKind, FileMeta};
pub use shared::{DEFAULT_READ_CACHE, Kv, StoredMeta};
pub use sled_kv::{SledConfig, SledKv};
pub use store::{Batch, Entry, KvStats, KvStore, Op, Precondition, Scan};
