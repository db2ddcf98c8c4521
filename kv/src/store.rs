//! The `KvStore` trait every backend implements, and the batch it applies.
//!
//! The trait is object-safe and used as `Arc<dyn KvStore>`: the VFS is registered once
//! with SQLite and must not be generic over the backend (SQLite holds plain function
//! pointers), the backend is chosen at run time (`Backing`, tests running both `SledKv` and
//! `MemKv`), and wrappers such as `FaultyKv` stack without monomorphising the whole VFS.
//! One virtual call per kv operation is noise beside the work each operation does.
//!
//! Contract every backend keeps (the property tests hold `SledKv` to `MemKv`):
//! - `get` returns the value as a refcounted [`Bytes`] that shares the backend's buffer
//!   where the backend has one, so the caller can hand it on without copying;
//! - `apply` is atomic: after a crash either every operation of a batch is visible or
//!   none is; a failed precondition applies nothing;
//! - batches are applied in order, and readers never see part of a batch;
//! - `flush` returns only when everything applied before it is durable.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::keys::KeyRange;

/// A key and its value, as [`KvStore::scan`] yields them.
pub type Entry = (Bytes, Bytes);

/// The iterator [`KvStore::scan`] returns: entries in key order.
pub type Scan<'a> = Box<dyn Iterator<Item = Result<Entry>> + Send + 'a>;

/// One operation of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store `value` under `key`.
    Put(Bytes, Bytes),
    /// Remove `key` (absent keys are fine).
    Delete(Bytes),
    /// Remove every key in the range.
    DeleteRange(KeyRange),
}

/// A guard on one key: the batch applies only if the key's current value is `expected`
/// (`None`: the key must be absent). A future multi-host backend uses it to fence a
/// stale writer; here it catches two writers racing on one file's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Precondition {
    /// The guarded key.
    pub key: Bytes,
    /// The value it must hold.
    pub expected: Option<Bytes>,
}

impl Precondition {
    /// Holds when the guarded key's `current` value is the expected one; otherwise the
    /// [`Error::PreconditionFailed`] every backend reports.
    pub fn check(&self, current: Option<&[u8]>) -> Result<()> {
        if current == self.expected.as_deref() {
            Ok(())
        } else {
            Err(Error::PreconditionFailed {
                what: crate::keys::describe(&self.key),
            })
        }
    }
}

/// Operations applied atomically, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The operations.
    pub ops: Vec<Op>,
    /// An optional guard checked atomically with the apply.
    pub precondition: Option<Precondition>,
}

impl Batch {
    /// An empty, unguarded batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> &mut Batch {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Bytes>) -> &mut Batch {
        self.ops.push(Op::Delete(key.into()));
        self
    }

    /// Adds a range delete.
    pub fn delete_range(&mut self, range: KeyRange) -> &mut Batch {
        self.ops.push(Op::DeleteRange(range));
        self
    }

    /// Guards the batch on `key` holding `expected`.
    pub fn guard(&mut self, key: impl Into<Bytes>, expected: Option<Bytes>) -> &mut Batch {
        self.precondition = Some(Precondition {
            key: key.into(),
            expected,
        });
        self
    }

    /// Whether the batch does nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values the batch writes.
    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
                Op::DeleteRange(r) => r.start.len() + r.end.len(),
            })
            .sum()
    }
}

/// What a backend reports about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Number of keys stored.
    pub keys: u64,
    /// Bytes of keys and values stored (logical, before any compression or overhead).
    pub logical_bytes: u64,
    /// Bytes the backend occupies on disk (0 in memory).
    pub disk_bytes: u64,
    /// The backend's configured cache capacity in bytes (0 if it has none).
    pub cache_capacity: u64,
}

/// An ordered, atomic-batch key-value store shared by every database of a process.
pub trait KvStore: Send + Sync + std::fmt::Debug + 'static {
    /// The value under `key`, sharing the backend's buffer where possible.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;

    /// Entries in `range`, in key order.
    fn scan(&self, range: KeyRange) -> Result<Scan<'_>>;

    /// Applies `batch` atomically (see the module contract).
    fn apply(&self, batch: Batch) -> Result<()>;

    /// Makes everything applied so far durable.
    fn flush(&self) -> Result<()>;

    /// Counts and sizes; may walk the whole store (keys are counted).
    fn stats(&self) -> Result<KvStats>;

    /// Removes every key in `range` atomically.
    fn delete_range(&self, range: KeyRange) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete_range(range);
        self.apply(batch)
    }
}

/// The net effect of a batch: one write per key (`None` deletes).
#[cfg(any(feature = "fjall", feature = "sled"))]
pub(crate) type Writes = std::collections::BTreeMap<Bytes, Option<Bytes>>;

/// Folds `ops` in order into one write per key, for backends whose native batch keeps one
/// write per key. A range delete also removes the puts made earlier in the same batch, and
/// every stored key that `stored_keys` lists for the range (called with non-empty ranges
/// only); a put after it survives.
#[cfg(any(feature = "fjall", feature = "sled"))]
pub(crate) fn fold_ops(
    ops: Vec<Op>,
    mut stored_keys: impl FnMut(&KeyRange) -> Result<Vec<Bytes>>,
) -> Result<Writes> {
    let mut writes = Writes::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                writes.insert(k, Some(v));
            }
            Op::Delete(k) => {
                writes.insert(k, None);
            }
            Op::DeleteRange(range) => {
                if range.is_empty() {
                    continue;
                }
                for (_, w) in writes.range_mut::<[u8], _>(range.bounds()) {
                    *w = None;
                }
                for key in stored_keys(&range)? {
                    writes.insert(key, None);
                }
            }
        }
    }
    Ok(writes)
}
