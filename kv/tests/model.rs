//! `SledKv` and `FjallKv` each held to the reference model `MemKv`: random sequences of
//! puts, deletes, guarded batches, range deletes, gets, scans, flushes, seals and reopens
//! are applied to the backend and the model, and every observable result must be identical.
//! A reopen drops the backend and opens it again from the same directory (the model just
//! stays), after which the full contents must still match. Keys come from a tiny alphabet
//! so operations collide, ranges overlap and batches touch the same key several times (the
//! empty key included, which fjall cannot store as such: `FjallKv` prefixes every key).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use shoal_kv::raw::{Batch, Entry};
use shoal_kv::{Error, FjallConfig, FjallKv, KeyRange, KvStore, MemKv, SledConfig, SledKv};
use tempfile::TempDir;

/// Key bytes, including the extremes, so ranges with unbounded or `0xff` ends are hit.
const ALPHABET: [u8; 3] = [0x00, b'a', 0xff];

/// Up to two bytes of the alphabet: 13 distinct keys, the empty key included.
fn key() -> impl Strategy<Value = Vec<u8>> {
    vec(prop::sample::select(ALPHABET.to_vec()), 0..=2)
}

/// Mostly tiny values drawn from few bytes (so guards can match by chance), sometimes
/// values long enough that the backends store them out of line (sled past 22 bytes,
/// fjall's `ByteView` past 20).
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(0u8..3, 0..3),
        1 => vec(any::<u8>(), 23..40),
    ]
}

/// A range between two keys of the alphabet; an absent end is unbounded. Inverted and
/// empty ranges come up too and must be empty on both sides.
fn range() -> impl Strategy<Value = KeyRange> {
    (key(), prop::option::of(key())).prop_map(|(start, end)| KeyRange {
        start,
        end: end.unwrap_or_default(),
    })
}

/// What a batch's precondition expects, resolved against the model when the batch runs.
#[derive(Debug, Clone)]
enum Expect {
    /// The key's current value (or absence): the guard holds.
    Current,
    /// Something other than the current value: the guard fails.
    NotCurrent,
    /// Absence: holds only if the key is absent.
    Absent,
    /// A given value: usually fails, holds if the key happens to hold it.
    Value(Vec<u8>),
}

#[derive(Debug, Clone)]
enum BatchOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(KeyRange),
}

#[derive(Debug, Clone)]
enum Step {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Batch(Vec<BatchOp>, Option<(Vec<u8>, Expect)>),
    DeleteRange(KeyRange),
    Get(Vec<u8>),
    Scan(KeyRange),
    Flush,
    /// Moves the backend's buffered writes into its on-disk structures (fjall: seals the
    /// memtable and writes it as a segment, so reads merge segments, tombstones and
    /// compaction come into play; sled: nothing).
    Seal,
    Reopen,
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    prop_oneof![
        4 => (key(), value()).prop_map(|(k, v)| BatchOp::Put(k, v)),
        2 => key().prop_map(BatchOp::Delete),
        2 => range().prop_map(BatchOp::DeleteRange),
    ]
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        3 => Just(Expect::Current),
        2 => Just(Expect::NotCurrent),
        1 => Just(Expect::Absent),
        1 => value().prop_map(Expect::Value),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => key().prop_map(Step::Delete),
        5 => (vec(batch_op(), 0..7), prop::option::of((key(), expect())))
            .prop_map(|(ops, guard)| Step::Batch(ops, guard)),
        1 => range().prop_map(Step::DeleteRange),
        4 => key().prop_map(Step::Get),
        3 => range().prop_map(Step::Scan),
        1 => Just(Step::Flush),
        2 => Just(Step::Seal),
        1 => Just(Step::Reopen),
    ]
}

fn everything() -> KeyRange {
    KeyRange::prefix(&[])
}

/// The outcome of an apply, reduced to what the two backends must agree on.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    Ok,
    PreconditionFailed,
}

fn applied(r: shoal_kv::Result<()>) -> Result<Applied, TestCaseError> {
    match r {
        Ok(()) => Ok(Applied::Ok),
        Err(Error::PreconditionFailed { .. }) => Ok(Applied::PreconditionFailed),
        Err(e) => Err(TestCaseError::fail(format!("unexpected error: {e}"))),
    }
}

fn scan_all(kv: &dyn KvStore, range: KeyRange) -> Result<Vec<Entry>, TestCaseError> {
    kv.scan(range)
        .and_then(|it| it.collect::<shoal_kv::Result<Vec<Entry>>>())
        .map_err(|e| TestCaseError::fail(format!("scan failed: {e}")))
}

/// A persistent backend as the model test drives it.
trait Persistent: KvStore + Sized {
    fn open(dir: &TempDir) -> Self;
    fn seal(&self);
}

impl Persistent for SledKv {
    fn open(dir: &TempDir) -> SledKv {
        open_sled(dir)
    }

    fn seal(&self) {}
}

impl Persistent for FjallKv {
    fn open(dir: &TempDir) -> FjallKv {
        open_fjall(dir)
    }

    fn seal(&self) {
        self.seal_memtable().unwrap();
    }
}

/// A persistent backend and the model, driven in lockstep.
struct Pair<B: Persistent> {
    dir: TempDir,
    backend: Option<B>,
    model: MemKv,
}

impl<B: Persistent> Pair<B> {
    fn new() -> Pair<B> {
        let dir = tempfile::tempdir().unwrap();
        let backend = Some(B::open(&dir));
        Pair {
            dir,
            backend,
            model: MemKv::new(),
        }
    }

    fn backend(&self) -> &B {
        self.backend.as_ref().unwrap()
    }

    fn apply(&self, batch: Batch) -> Result<Applied, TestCaseError> {
        let got = applied(self.backend().apply(batch.clone()))?;
        let want = applied(self.model.apply(batch.clone()))?;
        prop_assert_eq!(&got, &want, "apply of {:?}", batch);
        Ok(got)
    }

    fn same_contents(&self, when: &str) -> Result<(), TestCaseError> {
        let got = scan_all(self.backend(), everything())?;
        let want = scan_all(&self.model, everything())?;
        prop_assert_eq!(got, want, "full contents {}", when);
        let (got, want) = (self.backend().stats().unwrap(), self.model.stats().unwrap());
        prop_assert_eq!(got.keys, want.keys, "key count {}", when);
        prop_assert_eq!(got.logical_bytes, want.logical_bytes, "bytes {}", when);
        Ok(())
    }

    fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::Put(k, v) => {
                let mut b = Batch::new();
                b.put(k, v);
                prop_assert_eq!(self.apply(b)?, Applied::Ok);
            }
            Step::Delete(k) => {
                let mut b = Batch::new();
                b.delete(k);
                prop_assert_eq!(self.apply(b)?, Applied::Ok);
            }
            Step::Batch(ops, guard) => {
                let mut b = Batch::new();
                for op in ops {
                    match op {
                        BatchOp::Put(k, v) => b.put(k, v),
                        BatchOp::Delete(k) => b.delete(k),
                        BatchOp::DeleteRange(r) => b.delete_range(r),
                    };
                }
                let mut must_hold = None;
                if let Some((key, expect)) = guard {
                    let current = self.model.get(&key).unwrap();
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
                        Expect::Value(v) => Some(Bytes::from(v)),
                    };
                    must_hold = Some(expected == current);
                    b.guard(key, expected);
                }
                let outcome = self.apply(b)?;
                // The model agreeing with the backend is not enough: both must also honour
                // the guard (an empty value is a value, not an absence).
                if let Some(holds) = must_hold {
                    prop_assert_eq!(outcome == Applied::Ok, holds, "guard outcome");
                }
            }
            Step::DeleteRange(r) => {
                let got = applied(self.backend().delete_range(r.clone()))?;
                let want = applied(self.model.delete_range(r))?;
                prop_assert_eq!(got, want);
            }
            Step::Get(k) => {
                let got = self.backend().get(&k).unwrap();
                let want = self.model.get(&k).unwrap();
                prop_assert_eq!(got, want, "get {:?}", k);
            }
            Step::Scan(r) => {
                let got = scan_all(self.backend(), r.clone())?;
                let want = scan_all(&self.model, r.clone())?;
                prop_assert_eq!(got, want, "scan {:?}", r);
            }
            Step::Flush => {
                self.backend().flush().unwrap();
                self.model.flush().unwrap();
            }
            Step::Seal => {
                self.backend().seal();
                self.same_contents("after sealing")?;
            }
            Step::Reopen => {
                // Drop first: each backend holds a lock on its directory.
                self.backend = None;
                self.backend = Some(B::open(&self.dir));
                self.same_contents("after reopen")?;
            }
        }
        Ok(())
    }
}

fn open_sled(dir: &TempDir) -> SledKv {
    SledKv::open(&SledConfig {
        cache_capacity: 256 << 10,
        flush_every_ms: None,
        ..SledConfig::new(dir.path())
    })
    .unwrap()
}

fn open_fjall(dir: &TempDir) -> FjallKv {
    FjallKv::open(&FjallConfig {
        cache_capacity: 256 << 10,
        write_buffer: 1 << 20,
        flush_every_ms: None,
        ..FjallConfig::new(dir.path())
    })
    .unwrap()
}

fn run_steps<B: Persistent>(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut pair = Pair::<B>::new();
    for step in steps {
        pair.run(step)?;
    }
    pair.same_contents("at the end")?;
    pair.run(Step::Reopen)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sled_matches_the_model(steps in vec(step(), 1..60)) {
        run_steps::<SledKv>(steps)?;
    }

}

proptest! {
    // Fewer cases: closing a `FjallKv` waits for fjall's monitor thread to wake from its
    // 250 ms sleep, and a case closes the store about three times.
    #![proptest_config(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fjall_matches_the_model(steps in vec(step(), 1..60)) {
        run_steps::<FjallKv>(steps)?;
    }
}

fn kv_bytes(pairs: &[(&[u8], &[u8])]) -> Vec<(Bytes, Bytes)> {
    pairs
        .iter()
        .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
        .collect()
}

/// Runs `f` on a fresh sled store, a fresh fjall store and `MemKv`, in turn.
fn on_each_backend(f: impl Fn(&dyn KvStore)) {
    let dir = tempfile::tempdir().unwrap();
    let fjall_dir = tempfile::tempdir().unwrap();
    let sled = open_sled(&dir);
    let fjall = open_fjall(&fjall_dir);
    let model = MemKv::new();
    for kv in [&sled as &dyn KvStore, &fjall, &model] {
        f(kv);
    }
}

/// The in-order rule stated outright, on both backends, so a model and a backend that
/// were wrong the same way would still fail: within one batch a range delete removes puts
/// made earlier in the batch, and puts made after it survive.
#[test]
fn batch_operations_apply_in_order() {
    on_each_backend(|kv| {
        let mut setup = Batch::new();
        setup
            .put(&b"a"[..], &b"old"[..])
            .put(&b"b"[..], &b"old"[..]);
        kv.apply(setup).unwrap();

        let mut b = Batch::new();
        b.put(&b"aa"[..], &b"put before the range delete"[..])
            .delete_range(KeyRange {
                start: b"a".to_vec(),
                end: b"b".to_vec(),
            })
            .put(&b"ab"[..], &b"put after the range delete"[..])
            .put(&b"c"[..], &b"1"[..])
            .delete(&b"c"[..])
            .delete(&b"d"[..])
            .put(&b"d"[..], &b"2"[..])
            .put(&b"b"[..], &b"new"[..]);
        kv.apply(b).unwrap();

        let got = kv
            .scan(everything())
            .unwrap()
            .collect::<shoal_kv::Result<Vec<_>>>()
            .unwrap();
        let want = kv_bytes(&[
            (b"ab", b"put after the range delete"),
            (b"b", b"new"),
            (b"d", b"2"),
        ]);
        assert_eq!(got, want, "{kv:?}");
    });
}

/// A failed guard applies nothing, and a guard expecting an empty value is not satisfied
/// by an absent key (nor the reverse).
#[test]
fn guards_distinguish_empty_from_absent() {
    on_each_backend(|kv| {
        let mut b = Batch::new();
        b.put(&b"x"[..], &b"1"[..])
            .guard(&b"g"[..], Some(Bytes::new()));
        assert!(
            matches!(kv.apply(b), Err(Error::PreconditionFailed { .. })),
            "{kv:?}: an absent key matched an empty value"
        );
        assert_eq!(
            kv.get(b"x").unwrap(),
            None,
            "{kv:?}: a failed guard applied"
        );

        let mut b = Batch::new();
        b.put(&b"g"[..], Bytes::new());
        kv.apply(b).unwrap();
        let mut b = Batch::new();
        b.put(&b"x"[..], &b"1"[..]).guard(&b"g"[..], None);
        assert!(
            matches!(kv.apply(b), Err(Error::PreconditionFailed { .. })),
            "{kv:?}: an empty value matched absence"
        );
        let mut b = Batch::new();
        b.put(&b"x"[..], &b"2"[..])
            .guard(&b"g"[..], Some(Bytes::new()));
        kv.apply(b).unwrap();
        assert_eq!(kv.get(b"x").unwrap().unwrap(), &b"2"[..]);
    });
}
