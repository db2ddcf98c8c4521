//! Raw access below the typed API, for tests and tools only: key bytes ([`keys`]), the
//! checksum trailer ([`checksum`]), record layouts ([`records`]), batches ([`Batch`]) and
//! the backend behind a [`Kv`] ([`Raw`]).
//!
//! Nothing in the VFS or the facade uses this module: they go through [`Kv`]'s catalog
//! calls, [`Kv::file_write`], [`Kv::read_meta`], [`Kv::read_chunk`] and [`Kv::audit`], so
//! the format stays owned by this crate. Tests use it to damage a store on purpose
//! (flip a value, drop a chunk) and to check the bytes a write left. A write made through
//! here bypasses the checks the typed API keeps (sealing, the metadata guard), which is
//! what those tests want and no production caller should.

use std::sync::Arc;

use bytes::Bytes;

/// The key format: builders and the parser of every key.
pub mod keys {
    pub use crate::keys::*;
}

/// The checksum trailer every stored value carries.
pub mod checksum {
    pub use crate::checksum::*;
}

/// Record layouts: file metadata, catalog entries, counters, the store version.
pub mod records {
    pub use crate::records::*;
}

pub use crate::store::{Batch, Entry, Op, Precondition, Scan};

use crate::error::Result;
use crate::keys::{DbId, FileKind, KeyRange};
use crate::records::FileMeta;
use crate::shared::{Kv, StoredMeta};
use crate::store::KvStore;

/// Raw reads and writes of a [`Kv`]'s keys, through its read cache and write checks.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a>(&'a Kv);

/// Raw access to `kv`.
pub fn of(kv: &Kv) -> Raw<'_> {
    Raw(kv)
}

impl<'a> Raw<'a> {
    /// The stored value under `key`, as it is (sealed).
    pub fn get(self, key: &[u8]) -> Result<Option<Bytes>> {
        self.0.get(key)
    }

    /// Stored entries in `range`, in key order.
    pub fn scan(self, range: KeyRange) -> Result<Scan<'a>> {
        self.0.scan(range)
    }

    /// Applies `batch` as it is (nothing is sealed or guarded for the caller), keeping
    /// the read cache in step and the store's poisoning rules.
    pub fn apply(self, batch: Batch) -> Result<()> {
        self.0.apply(batch)
    }

    /// The backend itself.
    pub fn backend(self) -> &'a Arc<dyn KvStore> {
        self.0.backend()
    }
}

pub use crate::file_write::{put_chunk, put_meta};

/// The record of `meta` as it would be stored for file `kind` of database `id`, usable
/// as the guard of a write (a stale one, in tests of the guard).
pub fn stored_meta(id: DbId, kind: FileKind, meta: FileMeta) -> StoredMeta {
    StoredMeta {
        meta,
        raw: meta.encode(id, kind),
    }
}
