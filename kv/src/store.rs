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
//! - `apply` refuses a batch past the FoundationDB-shaped limits
//!   ([`Batch::check_limits`]) before it applies anything, whatever the engine could take;
//! - batches are applied in order, and readers never see part of a batch;
//! - `flush` returns only when everything applied before it is durable.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::keys::KeyRange;

/// A key and its value, as [`KvStore::scan`] yields them.
pub type Entry = (Bytes, Bytes);

/// The iterator [`KvStore::scan`] returns: entries in key order.
pub type Scan<'a> = Box<dyn Iterator<Item = Result<Entry>> + Send + 'a>;

/// A scan read page by page: `fill` returns the next page of entries, in key order, and
/// whether more may follow. An error ends the scan.
#[cfg(any(feature = "fjall", feature = "postgres"))]
pub(crate) struct Paged<F> {
    fill: F,
    page: std::vec::IntoIter<Entry>,
    done: bool,
}

#[cfg(any(feature = "fjall", feature = "postgres"))]
impl<F: FnMut() -> Result<(Vec<Entry>, bool)>> Paged<F> {
    pub(crate) fn new(fill: F) -> Paged<F> {
        Paged {
            fill,
            page: Vec::new().into_iter(),
            done: false,
        }
    }
}

#[cfg(any(feature = "fjall", feature = "postgres"))]
impl<F: FnMut() -> Result<(Vec<Entry>, bool)>> Iterator for Paged<F> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            match (self.fill)() {
                Ok((page, more)) => {
                    self.page = page.into_iter();
                    self.done = !more;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

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
/// (`None`: the key must be absent). It fences a stale writer (a commit is guarded by the
/// writer's lease, see `lease.rs`) and catches two writers racing on one file's metadata.
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

/// The most bytes of keys and values one batch may write (FoundationDB's transaction
/// limit; every backend enforces it so that a later FDB backend changes nothing above).
pub const MAX_BATCH_BYTES: usize = 10_000_000;
/// The most operations (keys put or deleted, ranges deleted) and guards one batch may hold.
pub const MAX_BATCH_KEYS: usize = 10_000;
/// The longest value a put may store (FoundationDB's value limit).
pub const MAX_VALUE_LEN: usize = 100_000;
/// The longest key any operation may name (FoundationDB's key limit).
pub const MAX_KEY_LEN: usize = 10_000;

/// Operations applied atomically, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The operations.
    pub ops: Vec<Op>,
    /// Guards checked atomically with the apply, against the state before it: the batch
    /// applies only if every one holds.
    pub preconditions: Vec<Precondition>,
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

    /// Guards the batch on `key` holding `expected` (in addition to any guard it has).
    pub fn guard(&mut self, key: impl Into<Bytes>, expected: Option<Bytes>) -> &mut Batch {
        self.preconditions.push(Precondition {
            key: key.into(),
            expected,
        });
        self
    }

    /// Checks every guard against `current`, which reads a key's value as the batch would
    /// find it; the first that fails is the error.
    pub fn check_preconditions(
        &self,
        mut current: impl FnMut(&[u8]) -> Result<Option<Bytes>>,
    ) -> Result<()> {
        for pre in &self.preconditions {
            pre.check(current(&pre.key)?.as_deref())?;
        }
        Ok(())
    }

    /// Refuses a batch past the limits every backend keeps ([`MAX_BATCH_BYTES`],
    /// [`MAX_BATCH_KEYS`], [`MAX_VALUE_LEN`], [`MAX_KEY_LEN`]) with
    /// [`Error::LimitExceeded`]. Backends call it before they apply anything.
    pub fn check_limits(&self) -> Result<()> {
        let exceeded = |what: &'static str, size: usize, limit: usize| {
            Err(Error::LimitExceeded { what, size, limit })
        };
        let keys = self.ops.len() + self.preconditions.len();
        if keys > MAX_BATCH_KEYS {
            return exceeded("operations in one batch", keys, MAX_BATCH_KEYS);
        }
        let bytes = self.bytes();
        if bytes > MAX_BATCH_BYTES {
            return exceeded("bytes in one batch", bytes, MAX_BATCH_BYTES);
        }
        let long_key = |k: &[u8]| k.len() > MAX_KEY_LEN;
        for op in &self.ops {
            let (key, value) = match op {
                Op::Put(k, v) => (&k[..], Some(v)),
                Op::Delete(k) => (&k[..], None),
                Op::DeleteRange(r) => {
                    if long_key(&r.start) || long_key(&r.end) {
                        return exceeded(
                            "bytes in a range's bound",
                            r.start.len().max(r.end.len()),
                            MAX_KEY_LEN,
                        );
                    }
                    continue;
                }
            };
            if long_key(key) {
                return exceeded("bytes in a key", key.len(), MAX_KEY_LEN);
            }
            if let Some(v) = value
                && v.len() > MAX_VALUE_LEN
            {
                return exceeded("bytes in a value", v.len(), MAX_VALUE_LEN);
            }
        }
        if let Some(pre) = self.preconditions.iter().find(|p| long_key(&p.key)) {
            return exceeded("bytes in a guarded key", pre.key.len(), MAX_KEY_LEN);
        }
        Ok(())
    }

    /// Whether the batch does nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values the batch writes (and of the keys it guards).
    pub fn bytes(&self) -> usize {
        let ops: usize = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
                Op::DeleteRange(r) => r.start.len() + r.end.len(),
            })
            .sum();
        let guards: usize = self
            .preconditions
            .iter()
            .map(|p| p.key.len() + p.expected.as_ref().map_or(0, Bytes::len))
            .sum();
        ops + guards
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
    /// Bytes on disk of values already deleted or overwritten that the engine has not
    /// reclaimed yet (fjall: stale parts of blob files, rewritten once a quarter of a file
    /// is stale; 0 for engines that do not report it).
    pub garbage_bytes: u64,
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

    /// The store's clock, in milliseconds since the Unix epoch: the clock leases expire
    /// on. A store that several hosts share answers with one clock for all of them (the
    /// database server's); the default is this host's.
    fn now_ms(&self) -> Result<u64> {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| Error::Corrupt {
                what: "the system clock".into(),
                reason: e.to_string(),
            })?;
        Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// A mark of the writes the calling thread applied last, for
    /// [`KvStore::mark_durable`] (0 for a backend whose flush covers every earlier apply).
    fn apply_mark(&self) -> u64 {
        0
    }

    /// After a successful [`KvStore::flush`]: whether it made the writes of `mark` durable.
    /// A server backend says no ([`Error::Unavailable`]) when the server restarted between
    /// those writes and the flush, so the flush's waiter is not told a lost write is safe.
    fn mark_durable(&self, mark: u64) -> Result<()> {
        let _ = mark;
        Ok(())
    }

    /// Told on a thread whose durable commit just returned: everything it applied before
    /// is durable (a server backend stops guarding against a restart having lost it).
    fn durable_here(&self) {}

    /// Rewrites the engine's files now, so that what was deleted leaves the disk (for
    /// measuring collection; engines that reclaim space as they go do nothing).
    fn compact(&self) -> Result<()> {
        Ok(())
    }

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
