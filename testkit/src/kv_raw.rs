//! The language of raw [`KvStore`] operations, shared by the `kv_ops` fuzz target
//! ([`crate::kv_ops`]) and the stable model test (`kv/tests/model.rs`, which feeds
//! proptest's bytes to the same `arbitrary` decoder): puts, deletes, guarded batches,
//! range deletes, gets, scans, flushes, seals and reopens, over 13 keys of at most two
//! bytes drawn from `{0x00, 'a', 0xff}` (the empty key included, which fjall cannot store
//! as such: `FjallKv` prefixes every key), so operations collide and ranges overlap.
//!
//! [`Lockstep`] applies an operation to a store under test and to [`MemKv`], the
//! reference model, and panics unless every observable result is identical. Seals and
//! reopens depend on the backend, so it hands them back to the caller.

// The alphabet is indexed by a remainder of its length.
#![allow(clippy::indexing_slicing)]

use arbitrary::Arbitrary;
use bytes::Bytes;

use shoal_kv::raw::{Batch, Entry};
use shoal_kv::{Error, KeyRange, KvStore, MemKv};

/// Key bytes, including the extremes, so ranges with unbounded or `0xff` ends are hit.
const ALPHABET: [u8; 3] = [0x00, b'a', 0xff];

/// Operations one batch may hold; the rest of a decoded batch is ignored.
const MAX_BATCH_OPS: usize = 8;

/// One of 13 keys: the empty key, 3 of one byte, 9 of two.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Key(u8);

impl Key {
    pub fn bytes(self) -> Vec<u8> {
        let pick = |i: u8| ALPHABET[usize::from(i % 3)];
        match self.0 % 13 {
            0 => Vec::new(),
            n @ 1..=3 => vec![pick(n - 1)],
            n => vec![pick((n - 4) / 3), pick(n - 4)],
        }
    }
}

/// Mostly tiny values drawn from few bytes (so guards can match by chance), sometimes
/// values long enough that the backends store them out of line (sled past 22 bytes,
/// fjall's inline limit is 20 bytes), rarely one past fjall's 4 KiB block size.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Value {
    len: u8,
    byte: u8,
}

impl Value {
    pub fn bytes(self) -> Vec<u8> {
        match self.len % 8 {
            0..=4 => vec![self.byte % 3; usize::from(self.len % 3)],
            5 | 6 => vec![self.byte; 21 + usize::from(self.len % 19)],
            _ => vec![self.byte; 5000 + usize::from(self.len)],
        }
    }
}

/// A range between two keys; an absent end is unbounded. Inverted and empty ranges come
/// up too and must be empty on both sides.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Range {
    start: Key,
    end: Option<Key>,
}

impl Range {
    pub fn range(self) -> KeyRange {
        KeyRange {
            start: self.start.bytes(),
            end: self.end.map(Key::bytes).unwrap_or_default(),
        }
    }
}

/// What a batch's precondition expects, resolved against the model when the batch runs.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Expect {
    /// The key's current value (or absence): the guard holds.
    Current,
    /// Something other than the current value: the guard fails.
    NotCurrent,
    /// Absence: holds only if the key is absent.
    Absent,
    /// A given value: usually fails, holds if the key happens to hold it.
    Value(Value),
}

/// One operation inside a batch.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum BatchOp {
    Put(Key, Value),
    Delete(Key),
    DeleteRange(Range),
}

/// One raw operation.
#[derive(Debug, Clone, Arbitrary)]
pub enum RawOp {
    Put(Key, Value),
    Delete(Key),
    Batch {
        ops: Vec<BatchOp>,
        guard: Option<(Key, Expect)>,
    },
    DeleteRange(Range),
    Get(Key),
    Scan(Range),
    Flush,
    /// Moves the backend's buffered writes into its on-disk structures (fjall: seals the
    /// memtable and writes it as a segment, so reads merge segments, tombstones and
    /// compaction come into play; sled: nothing).
    Seal,
    /// Close the store and open it again from its directory (the model just stays).
    Reopen,
}

impl RawOp {
    /// Whether the operation may change what the store holds.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            RawOp::Put(..) | RawOp::Delete(_) | RawOp::Batch { .. } | RawOp::DeleteRange(_)
        )
    }
}

/// What [`Lockstep::run`] leaves to its caller, which knows the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leftover {
    /// Seal the backend's memtable, then check [`Lockstep::same_contents`].
    Seal,
    /// Reopen the backend, then check [`Lockstep::same_contents`].
    Reopen,
}

/// The outcome of an apply, reduced to what the two stores must agree on.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Ok,
    PreconditionFailed,
}

fn applied(r: shoal_kv::Result<()>, what: &str) -> Applied {
    match r {
        Ok(()) => Applied::Ok,
        Err(Error::PreconditionFailed { .. }) => Applied::PreconditionFailed,
        Err(e) => panic!("{what}: unexpected error: {e}"),
    }
}

/// Every entry of `range`, in order.
pub fn scan_all(kv: &dyn KvStore, range: KeyRange) -> Vec<Entry> {
    kv.scan(range)
        .and_then(|it| it.collect::<shoal_kv::Result<Vec<Entry>>>())
        .expect("scan")
}

/// A store under test and the reference model, driven by the same operations.
#[derive(Debug, Clone, Copy)]
pub struct Lockstep<'a> {
    pub store: &'a dyn KvStore,
    pub model: &'a MemKv,
}

impl Lockstep<'_> {
    /// Applies `batch` to both; they must agree on the outcome.
    pub fn apply(&self, batch: Batch) -> Applied {
        let got = applied(self.store.apply(batch.clone()), "store apply");
        let want = applied(self.model.apply(batch.clone()), "model apply");
        assert_eq!(got, want, "apply of {batch:?}");
        got
    }

    /// Both hold the same entries, key count and logical bytes.
    pub fn same_contents(&self, when: &str) {
        let everything = KeyRange::prefix(&[]);
        let got = scan_all(self.store, everything.clone());
        let want = scan_all(self.model, everything);
        assert_eq!(got, want, "full contents {when}");
        let (got, want) = (
            self.store.stats().expect("stats"),
            self.model.stats().expect("stats"),
        );
        assert_eq!(got.keys, want.keys, "key count {when}");
        assert_eq!(got.logical_bytes, want.logical_bytes, "bytes {when}");
    }

    /// Runs `op` on both and checks every result; a seal or reopen is left to the caller.
    pub fn run(&self, op: RawOp) -> Option<Leftover> {
        match op {
            RawOp::Put(k, v) => {
                let mut b = Batch::new();
                b.put(k.bytes(), v.bytes());
                assert_eq!(self.apply(b), Applied::Ok);
            }
            RawOp::Delete(k) => {
                let mut b = Batch::new();
                b.delete(k.bytes());
                assert_eq!(self.apply(b), Applied::Ok);
            }
            RawOp::Batch { ops, guard } => self.guarded_batch(&ops, guard),
            RawOp::DeleteRange(r) => {
                let mut b = Batch::new();
                b.delete_range(r.range());
                assert_eq!(self.apply(b), Applied::Ok);
            }
            RawOp::Get(k) => {
                let k = k.bytes();
                let got = self.store.get(&k).expect("store get");
                let want = self.model.get(&k).expect("model get");
                assert_eq!(got, want, "get {k:?}");
            }
            RawOp::Scan(r) => {
                let r = r.range();
                assert_eq!(
                    scan_all(self.store, r.clone()),
                    scan_all(self.model, r.clone()),
                    "scan {r:?}"
                );
            }
            RawOp::Flush => {
                self.store.flush().expect("store flush");
                self.model.flush().expect("model flush");
            }
            RawOp::Seal => return Some(Leftover::Seal),
            RawOp::Reopen => return Some(Leftover::Reopen),
        }
        None
    }

    fn guarded_batch(&self, ops: &[BatchOp], guard: Option<(Key, Expect)>) {
        let mut b = Batch::new();
        for op in ops.iter().take(MAX_BATCH_OPS) {
            match *op {
                BatchOp::Put(k, v) => b.put(k.bytes(), v.bytes()),
                BatchOp::Delete(k) => b.delete(k.bytes()),
                BatchOp::DeleteRange(r) => b.delete_range(r.range()),
            };
        }
        let mut must_hold = None;
        if let Some((key, expect)) = guard {
            let key = key.bytes();
            let current = self.model.get(&key).expect("model get");
            let expected = match expect {
                Expect::Current => current.clone(),
                Expect::NotCurrent => Some(match &current {
                    Some(v) => {
                        let mut other = v.to_vec();
                        other.push(0x55);
                        Bytes::from(other)
                    }
                    None => Bytes::new(),
                }),
                Expect::Absent => None,
                Expect::Value(v) => Some(Bytes::from(v.bytes())),
            };
            must_hold = Some(expected == current);
            b.guard(key, expected);
        }
        let outcome = self.apply(b);
        // Agreeing is not enough: both must honour the guard (an empty value is a value,
        // not an absence).
        if let Some(holds) = must_hold {
            assert_eq!(outcome == Applied::Ok, holds, "guard outcome");
        }
    }
}
