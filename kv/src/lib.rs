//! shoal-kv: the key-value layer that every actor database of a process lives in.
//!
//! It knows nothing of SQLite, and it owns the stored format end to end: nothing above
//! it builds a key, seals a value, decodes a record or assembles a batch. It offers:
//! - [`KvStore`], the backend trait (ordered keys, refcounted values, atomic guarded
//!   batches, flush), with `FjallKv` (feature `fjall`, the default: an LSM-tree
//!   whose memory stays within its configured cache), `SledKv` (feature `sled`: sled 0.34,
//!   selectable) and [`MemKv`] (the reference model, in every build); [`FaultyKv`] wraps any of them to inject failures;
//! - [`Kv`], the shared handle the layers above use: the catalog of names
//!   ([`Kv::lookup`], [`Kv::create`], [`Kv::rename`], [`Kv::drop_entry`], [`Kv::list`]),
//!   verified reads of files ([`Kv::read_meta`], [`Kv::read_chunk`]), typed writes of one
//!   file as one atomic batch ([`Kv::file_write`], [`FileWrite`]), the audit of a
//!   database's records ([`Kv::audit`]), the one-writer [`Claim`], and the
//!   [`GroupCommitter`] that lets many commits share one flush;
//! - [`raw`], the key bytes, checksum trailer, record layouts and batches underneath, for
//!   tests and tools only.
//!
//! Invariants: `keys` is the only place keys are built and parsed, `checksum` the only
//! place values are sealed and opened, `records` the only place record layouts are
//! written and read; a value read through [`Kv`] has been verified against its key. The
//! format is pinned by the golden-byte fixtures in `kv/tests/golden/`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::indexing_slicing)]

mod audit;
mod cache;
mod checksum;
mod error;
mod faulty;
mod file_write;
#[cfg(feature = "fjall")]
mod fjall_kv;
#[cfg(feature = "fjall")]
mod fjall_preflight;
mod group_commit;
mod history;
mod keys;
mod lease;
mod mem;
#[cfg(feature = "postgres")]
mod pg_kv;
pub mod raw;
mod records;
mod shared;
#[cfg(feature = "sled")]
mod sled_kv;
mod staging;
mod store;

pub use audit::Audit;
pub use error::{Error, Result};
pub use faulty::{FaultMode, FaultOp, FaultyKv};
pub use file_write::FileWrite;
#[cfg(feature = "fjall")]
pub use fjall_kv::{FjallConfig, FjallKv};
pub use group_commit::{GroupCommitStats, GroupCommitter};
pub use history::{
    Bookmark, Collected, CommitInfo, HistoryUsage, MAX_FORK_DEPTH, MAX_LABEL_LEN, PointInTime,
    Retention, validate_label,
};
pub use keys::{ChunkNo, DbId, FileKind, KeyRange, MAX_NAME_LEN, validate_name};
pub use lease::{LeaseConfig, LeaseHold};
pub use mem::MemKv;
#[cfg(feature = "postgres")]
pub use pg_kv::{PgConfig, PgKv};
pub use records::{CatalogEntry, EntryKind, FileMeta, LeaseRecord, StageRecord, chunk_len};
pub use shared::{Claim, DEFAULT_READ_CACHE, Kv, StoredMeta};
#[cfg(feature = "sled")]
pub use sled_kv::{SledConfig, SledKv};
pub use staging::{MOVE_BATCH_BYTES, Settled};
pub use store::{KvStats, KvStore, MAX_BATCH_BYTES, MAX_BATCH_KEYS, MAX_KEY_LEN, MAX_VALUE_LEN};
