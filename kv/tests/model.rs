//! `SledKv`, `FjallKv` and `PgKv` each held to the reference model `MemKv`: random sequences of
//! puts, deletes, guarded batches, range deletes, gets, scans, flushes, seals and reopens
//! are applied to the backend and the model, and every observable result must be identical.
//! A reopen drops the backend and opens it again from the same directory (the model just
//! stays), after which the full contents must still match. The operations are those of the
//! `kv_ops` fuzz target (`shoal_testkit::kv_raw`): proptest draws bytes and the same
//! `arbitrary` decoder turns them into operations, so keys come from the same tiny
//! alphabet, operations collide, ranges overlap and batches touch the same key several
//! times (the empty key included, which fjall cannot store as such: `FjallKv` prefixes
//! every key). A disagreement panics, and proptest shrinks the bytes.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use arbitrary::Unstructured;
use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use shoal_kv::raw::Batch;
use shoal_kv::{
    Error, FjallConfig, FjallKv, KeyRange, KvStore, MemKv, PgConfig, PgKv, SledConfig, SledKv,
};
use shoal_testkit::kv_raw::{Leftover, Lockstep, RawOp};
use shoal_testkit::pg::PgSchema;
use tempfile::TempDir;

/// Operations one case runs at most.
const MAX_STEPS: usize = 60;

fn everything() -> KeyRange {
    KeyRange::prefix(&[])
}

/// A persistent backend as the model test drives it.
trait Persistent: KvStore + Sized {
    /// Where a store lives (a directory, a PostgreSQL schema).
    type Place;
    /// A fresh place, or `None` when this backend's tests are skipped.
    fn place() -> Option<Self::Place>;
    fn open(place: &Self::Place) -> Self;
    fn seal(&self);
}

impl Persistent for SledKv {
    type Place = TempDir;
    fn place() -> Option<TempDir> {
        Some(tempfile::tempdir().unwrap())
    }
    fn open(dir: &TempDir) -> SledKv {
        open_sled(dir)
    }

    fn seal(&self) {}
}

impl Persistent for FjallKv {
    type Place = TempDir;
    fn place() -> Option<TempDir> {
        Some(tempfile::tempdir().unwrap())
    }
    fn open(dir: &TempDir) -> FjallKv {
        open_fjall(dir)
    }

    fn seal(&self) {
        self.seal_memtable().unwrap();
    }
}

impl Persistent for PgKv {
    type Place = PgSchema;
    fn place() -> Option<PgSchema> {
        PgSchema::new("pg_matches_the_model")
    }
    fn open(schema: &PgSchema) -> PgKv {
        PgKv::open(&PgConfig::new(&schema.url)).unwrap()
    }

    // Nothing to seal: a flush is what makes PostgreSQL's commits durable.
    fn seal(&self) {
        self.flush().unwrap();
    }
}

/// A persistent backend and the model, driven in lockstep.
struct Pair<B: Persistent> {
    dir: B::Place,
    backend: Option<B>,
    model: MemKv,
}

impl<B: Persistent> Pair<B> {
    fn new() -> Option<Pair<B>> {
        let dir = B::place()?;
        let backend = Some(B::open(&dir));
        Some(Pair {
            dir,
            backend,
            model: MemKv::new(),
        })
    }

    fn backend(&self) -> &B {
        self.backend.as_ref().unwrap()
    }

    fn lockstep(&self) -> Lockstep<'_> {
        Lockstep {
            store: self.backend(),
            model: &self.model,
        }
    }

    fn run(&mut self, op: RawOp) {
        match self.lockstep().run(op) {
            None => {}
            Some(Leftover::Seal) => {
                self.backend().seal();
                self.lockstep().same_contents("after sealing");
            }
            Some(Leftover::Reopen) => self.reopen(),
        }
    }

    fn reopen(&mut self) {
        // Drop first: each backend holds a lock on its directory.
        self.backend = None;
        self.backend = Some(B::open(&self.dir));
        self.lockstep().same_contents("after reopen");
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

fn run_steps<B: Persistent>(bytes: &[u8]) {
    let mut u = Unstructured::new(bytes);
    let Some(mut pair) = Pair::<B>::new() else {
        return;
    };
    let mut steps = 0;
    while !u.is_empty() && steps < MAX_STEPS {
        let Ok(op) = u.arbitrary::<RawOp>() else {
            break;
        };
        pair.run(op);
        steps += 1;
    }
    pair.lockstep().same_contents("at the end");
    pair.reopen();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sled_matches_the_model(bytes in vec(any::<u8>(), 1..400)) {
        run_steps::<SledKv>(&bytes);
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
    fn fjall_matches_the_model(bytes in vec(any::<u8>(), 1..400)) {
        run_steps::<FjallKv>(&bytes);
    }
}

proptest! {
    // Each case creates and drops a schema on the test server.
    #![proptest_config(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pg_matches_the_model(bytes in vec(any::<u8>(), 1..400)) {
        run_steps::<PgKv>(&bytes);
    }
}

fn kv_bytes(pairs: &[(&[u8], &[u8])]) -> Vec<(Bytes, Bytes)> {
    pairs
        .iter()
        .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
        .collect()
}

/// Runs `f` on a fresh sled store, a fresh fjall store, a fresh PostgreSQL store (when
/// the tests have a server) and `MemKv`, in turn.
fn on_each_backend(f: impl Fn(&dyn KvStore)) {
    let dir = tempfile::tempdir().unwrap();
    let fjall_dir = tempfile::tempdir().unwrap();
    let sled = open_sled(&dir);
    let fjall = open_fjall(&fjall_dir);
    let model = MemKv::new();
    for kv in [&sled as &dyn KvStore, &fjall, &model] {
        f(kv);
    }
    if let Some(schema) = PgSchema::new("on_each_backend") {
        f(&<PgKv as Persistent>::open(&schema));
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

/// Every backend refuses a batch past FoundationDB's limits before applying any of it,
/// with an error that says which limit.
#[test]
fn every_backend_refuses_a_batch_past_the_limits() {
    use shoal_kv::{MAX_BATCH_BYTES, MAX_BATCH_KEYS, MAX_KEY_LEN, MAX_VALUE_LEN};
    on_each_backend(|kv| {
        let mut many = Batch::new();
        for i in 0..=MAX_BATCH_KEYS {
            many.put(format!("k{i:06}").into_bytes(), &b"v"[..]);
        }
        let mut heavy = Batch::new();
        for i in 0..(MAX_BATCH_BYTES / MAX_VALUE_LEN + 1) {
            heavy.put(format!("h{i:06}").into_bytes(), vec![7u8; MAX_VALUE_LEN]);
        }
        let mut long_value = Batch::new();
        long_value.put(&b"a"[..], vec![0u8; MAX_VALUE_LEN + 1]);
        let mut long_key = Batch::new();
        long_key.put(vec![b'k'; MAX_KEY_LEN + 1], &b"v"[..]);
        let mut long_guard = Batch::new();
        long_guard
            .put(&b"a"[..], &b"v"[..])
            .guard(vec![b'g'; MAX_KEY_LEN + 1], None);
        for (what, batch) in [
            ("operations in one batch", many),
            ("bytes in one batch", heavy),
            ("bytes in a value", long_value),
            ("bytes in a key", long_key),
            ("bytes in a guarded key", long_guard),
        ] {
            match kv.apply(batch) {
                Err(e @ Error::LimitExceeded { .. }) => {
                    assert!(e.to_string().contains(what), "{e}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
        assert!(all(kv).is_empty(), "a refused batch applied something");
        // At the limits exactly, a batch applies.
        let mut most = Batch::new();
        most.put(vec![b'k'; MAX_KEY_LEN], vec![1u8; MAX_VALUE_LEN]);
        kv.apply(most).unwrap();
        assert_eq!(all(kv).len(), 1);
    });
}

fn all(kv: &dyn KvStore) -> Vec<(Bytes, Bytes)> {
    kv.scan(everything())
        .unwrap()
        .collect::<shoal_kv::Result<_>>()
        .unwrap()
}

/// Hostile input on the wire path: keys and values that look like SQL travel as
/// parameters; a table altered behind shoal's back is refused at open, naming what it
/// found; a table dropped under an open store gives the server's error, not a panic.
#[test]
fn pg_takes_hostile_bytes_and_refuses_an_altered_table() {
    let Some(schema) = PgSchema::new("pg_hostile") else {
        return;
    };
    let kv = <PgKv as Persistent>::open(&schema);
    let nasty: &[&[u8]] = &[b"'); DROP TABLE shoal_kv; --", b"\x00\xff\\x00'\"$1$$", b""];
    for (i, key) in nasty.iter().enumerate() {
        let mut b = Batch::new();
        b.put(key.to_vec(), nasty[(i + 1) % nasty.len()].to_vec());
        kv.apply(b).unwrap();
    }
    for (i, key) in nasty.iter().enumerate() {
        assert_eq!(
            kv.get(key).unwrap().as_deref(),
            Some(nasty[(i + 1) % nasty.len()])
        );
    }
    drop(kv);

    let mut client = schema.client();
    client
        .batch_execute(
            "ALTER TABLE shoal_kv ALTER COLUMN value TYPE text USING encode(value, 'hex')",
        )
        .unwrap();
    let err = PgKv::open(&PgConfig::new(&schema.url)).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::Corrupt { .. })
            && text.contains("value text")
            && text.contains("altered"),
        "{text}"
    );

    client.batch_execute("DROP TABLE shoal_kv").unwrap();
    let kv = <PgKv as Persistent>::open(&schema);
    client.batch_execute("DROP TABLE shoal_kv").unwrap();
    let err = kv.get(b"a").unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// Hosts creating the same names at once on one PostgreSQL store, each through its own
/// `Kv` and connections: every name gets one database, and ids are never shared.
#[test]
fn pg_hosts_creating_at_once_get_one_database_per_name() {
    use shoal_kv::{EntryKind, Kv};
    let Some(schema) = PgSchema::new("pg_hosts_creating") else {
        return;
    };
    let hosts: Vec<Kv> = (0..4)
        .map(|_| Kv::open(std::sync::Arc::new(<PgKv as Persistent>::open(&schema))).unwrap())
        .collect();
    let created: Vec<Vec<(String, u64, bool)>> = std::thread::scope(|s| {
        let runs: Vec<_> = hosts
            .iter()
            .map(|kv| {
                s.spawn(move || {
                    (0..25)
                        .map(|i| {
                            let name = format!("n{i}");
                            let (e, created) =
                                kv.lookup_or_create(&name, EntryKind::Database).unwrap();
                            (name, e.id.0, created)
                        })
                        .collect()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for i in 0..25 {
        let name = format!("n{i}");
        let seen: Vec<&(String, u64, bool)> = created
            .iter()
            .flatten()
            .filter(|(n, ..)| *n == name)
            .collect();
        assert_eq!(seen.iter().filter(|(.., c)| *c).count(), 1, "{seen:?}");
        assert!(seen.iter().all(|(_, id, _)| *id == seen[0].1), "{seen:?}");
    }
    let listed = hosts[0].list().unwrap();
    assert_eq!(listed.len(), 25);
    let mut ids: Vec<u64> = listed.iter().map(|(_, e)| e.id.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 25, "two names share an id");
}
