//! Body of the `kv_ops` fuzz target. The cargo-fuzz target in `fuzz/` calls [`kv_ops`],
//! and `kv/tests/fuzz_corpus.rs` runs it on stable over the checked-in seed corpus, so CI
//! exercises it without nightly. It reaches the store only through shoal-kv's public API.
//!
//! One input is a sequence of operations decoded with `arbitrary`, applied to a fresh
//! [`FjallKv`] (the default backend) and to [`MemKv`], the reference model, in lockstep;
//! every observable result must be identical, and a panic is the finding. Two layers are
//! driven on the same pair of stores:
//! - the raw [`KvStore`], in the language of [`crate::kv_raw`]: puts, deletes, guarded batches, range deletes, gets, scans,
//!   flushes, seals (fjall writes its memtable as a segment) and a reopen, over 13 keys
//!   of at most two bytes drawn from `{0x00, 'a', 0xff}` (the empty key included), so
//!   operations collide and ranges overlap;
//! - the [`Kv`] layer over each store: catalog create, lookup, drop and list, guarded
//!   file writes (chunks plus metadata in one batch, the guard right or wrong), chunk and
//!   metadata reads, durable commits. Besides the two stores agreeing, the layer is held
//!   to a plain model of names, ids, file records and chunks, for as long as no raw range
//!   delete has removed one of the layer's keys under it.
//!
//! Inputs share one store while they can: an input starts on an empty [`FjallKv`] and
//! empties it at the end, and the next input reuses it as long as a crash copy of it is
//! still exact (see `Run::crash_copy_mark`); otherwise the store is closed and the
//! next input opens a fresh one. Every check is of what the store holds, so a finding
//! replays from its input alone on a fresh store, unless it needs what earlier inputs
//! left in the store (tombstones, tables): such a finding may not replay alone. A store
//! that is given up is closed on a background thread ([`wait_for_closes`] waits for them),
//! and a reopen opens a copy of the directory as a crash would leave it (see `Run::reopen`).
//! Stores live in `/dev/shm` where there is one (see [`crate::scratch::base_dir`]).

// A fuzz body's panics are its findings.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use parking_lot::Mutex;

use shoal_kv::raw::{self, Batch, keys};
use shoal_kv::{
    CatalogEntry, ChunkNo, DbId, EntryKind, Error, FileKind, FileMeta, FjallConfig, FjallKv,
    KeyRange, Kv, KvStore, MemKv,
};

use crate::kv_raw::{Leftover, Lockstep, RawOp, Value, scan_all};
use crate::scratch::{copy_dir, fresh_dir};

/// Operations one input may run.
const MAX_OPS: usize = 256;

/// At most this many reopens run in one input.
const MAX_REOPENS: usize = 1;

/// Which guard a file write carries on the file's metadata.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum MetaGuard {
    /// The record as it is now: the write applies.
    Current,
    /// A record of another generation (or one when there is none): the write fails.
    Stale,
    /// "No record yet": applies only to a file without metadata.
    Absent,
}

/// A database name: three valid ones and two the catalog must refuse.
#[derive(Debug, Clone, Copy, Arbitrary)]
struct Name(u8);

impl Name {
    fn name(self) -> &'static str {
        ["a", "b", "c", "", "nul\0"][usize::from(self.0 % 5)]
    }
}

/// Which database a file operation addresses: a name's current id, or (when the name is
/// absent) the id of a dropped database, as a stale writer would.
#[derive(Debug, Clone, Copy, Arbitrary)]
struct Target(u8);

#[derive(Debug, Clone, Copy, Arbitrary)]
struct Kind(u8);

impl Kind {
    fn kind(self) -> FileKind {
        FileKind::ALL[usize::from(self.0 % 3)]
    }
}

/// One step of an input.
#[derive(Debug, Clone, Arbitrary)]
enum Op {
    Raw(RawOp),
    Create {
        name: Name,
        super_journal: bool,
    },
    Lookup(Name),
    DropEntry(Name),
    List,
    /// One batch: chunks of a file, and optionally its metadata, guarded.
    WriteFile {
        target: Target,
        kind: Kind,
        chunks: Vec<(u8, Value)>,
        meta: Option<(u16, MetaGuard)>,
    },
    ReadChunk {
        target: Target,
        kind: Kind,
        no: u8,
    },
    ReadMeta {
        target: Target,
        kind: Kind,
    },
    /// A durable commit through the group committer.
    Durable,
}

/// A layer result reduced to something comparable across stores.
fn outcome<T>(r: shoal_kv::Result<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// Whether `key` is one the [`Kv`] layer writes (raw keys of at most two bytes from the
/// alphabet never are, but raw range deletes can remove them).
fn is_layer_key(key: &[u8]) -> bool {
    keys::catalog_range().contains(key)
        || keys::data_range().contains(key)
        || key == keys::store_version_key()
        || key == keys::next_db_id_key()
}

fn layer_keys(model: &MemKv) -> Vec<Bytes> {
    model
        .snapshot()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| is_layer_key(k))
        .collect()
}

/// The plain model of the [`Kv`] layer.
#[derive(Debug, Default)]
struct LayerModel {
    catalog: BTreeMap<&'static str, CatalogEntry>,
    /// The last id allocated (ids start at 1).
    last_id: u64,
    files: BTreeMap<(DbId, FileKind), FileMeta>,
    chunks: BTreeMap<(DbId, FileKind, ChunkNo), Vec<u8>>,
    dropped: Vec<DbId>,
}

impl LayerModel {
    fn create(&mut self, name: &'static str, kind: EntryKind) -> Result<CatalogEntry, String> {
        keys::validate_name(name).map_err(|e| e.to_string())?;
        if self.catalog.contains_key(name) {
            return Err(Error::AlreadyExists(name.to_owned()).to_string());
        }
        self.last_id += 1;
        let entry = CatalogEntry {
            id: DbId(self.last_id),
            kind,
        };
        self.catalog.insert(name, entry);
        self.files
            .insert((entry.id, kind.primary_file()), FileMeta::EMPTY);
        Ok(entry)
    }

    fn drop_entry(&mut self, name: &'static str) -> Result<CatalogEntry, String> {
        keys::validate_name(name).map_err(|e| e.to_string())?;
        let entry = self
            .catalog
            .remove(name)
            .ok_or_else(|| Error::NotFound(name.to_owned()).to_string())?;
        self.files.retain(|(id, _), _| *id != entry.id);
        self.chunks.retain(|(id, _, _), _| *id != entry.id);
        self.dropped.push(entry.id);
        Ok(entry)
    }
}

/// The [`Kv`] layer over each store, with its model.
struct Layer {
    real: Kv,
    model_kv: Kv,
    model: LayerModel,
    /// False once a raw operation removed a key of the layer: the stores still must
    /// agree, but the plain model no longer describes them.
    model_valid: bool,
}

/// The store under test: a [`FjallKv`] that also keeps a bound on the bytes its
/// memtables have taken in since the store was created (shared by every reopen of it).
#[derive(Debug)]
struct Counted {
    fjall: FjallKv,
    written: Arc<AtomicU64>,
}

impl KvStore for Counted {
    fn get(&self, key: &[u8]) -> shoal_kv::Result<Option<Bytes>> {
        self.fjall.get(key)
    }

    fn scan(&self, range: KeyRange) -> shoal_kv::Result<raw::Scan<'_>> {
        self.fjall.scan(range)
    }

    fn apply(&self, batch: Batch) -> shoal_kv::Result<()> {
        // Generous per-entry overhead; a range delete writes a tombstone per stored key.
        let mut bound = 0;
        for op in &batch.ops {
            bound += match op {
                raw::Op::Put(k, v) => k.len() + v.len() + 128,
                raw::Op::Delete(k) => k.len() + 128,
                raw::Op::DeleteRange(r) => 256 * self.fjall.scan(r.clone())?.count(),
            };
        }
        self.written.fetch_add(bound as u64, Ordering::Relaxed);
        self.fjall.apply(batch)
    }

    fn flush(&self) -> shoal_kv::Result<()> {
        self.fjall.flush()
    }

    fn stats(&self) -> shoal_kv::Result<shoal_kv::KvStats> {
        self.fjall.stats()
    }
}

/// Everything one input runs against.
struct Run {
    dir: PathBuf,
    real: Option<Arc<Counted>>,
    model: Arc<MemKv>,
    layer: Option<Layer>,
    /// Bytes written to the store (a bound), and seals of it, since it was created.
    written: Arc<AtomicU64>,
    seals: usize,
}

fn open_fjall(dir: &Path, written: &Arc<AtomicU64>) -> Arc<Counted> {
    let fjall = FjallKv::open(&FjallConfig {
        cache_capacity: 256 << 10,
        write_buffer: 1 << 20,
        flush_every_ms: None,
        ..FjallConfig::new(dir)
    })
    .expect("open fjall");
    Arc::new(Counted {
        fjall,
        written: Arc::clone(written),
    })
}

impl Run {
    fn counted(&self) -> &Counted {
        self.real.as_deref().expect("the store is open")
    }

    fn real(&self) -> &FjallKv {
        &self.counted().fjall
    }

    /// fjall's mark (see [`FjallKv::quiescence`]) when a copy of the store's directory
    /// taken now can be what a crash would leave: fjall has nothing left to write, and
    /// has taken in too little to seal a memtable by itself (at 256 KiB, a quarter of
    /// this store's write buffer; the bound counts 128 bytes of overhead per entry, more
    /// than fjall's). Under 4 seals, so level 0 never reaches fjall's threshold for a
    /// compaction that rewrites tables (the ones left are moves of whole tables).
    fn crash_copy_mark(&self) -> Option<usize> {
        if self.seals >= 4 || self.written.load(Ordering::Relaxed) >= 192 << 10 {
            return None;
        }
        self.real().quiescence()
    }

    /// Opens the layer over both stores; both must succeed or fail alike.
    fn open_layer(&mut self, model: LayerModel, model_valid: bool) {
        let real = Kv::open(self.real.clone().expect("the store is open"));
        let model_kv = Kv::open(self.model.clone());
        match (real, model_kv) {
            (Ok(real), Ok(model_kv)) => {
                self.layer = Some(Layer {
                    real,
                    model_kv,
                    model,
                    model_valid,
                });
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "Kv::open"),
            (a, b) => panic!("Kv::open: {:?} vs {:?}", a.map(|_| ()), b.map(|_| ())),
        }
    }

    fn lockstep(&self) -> Lockstep<'_> {
        Lockstep {
            store: self.counted(),
            model: &self.model,
        }
    }

    /// A raw operation, checked for whether it removed a key of the layer.
    fn run_raw(&mut self, op: RawOp) {
        let before = op.writes().then(|| layer_keys(&self.model));
        match self.lockstep().run(op) {
            None => {}
            Some(Leftover::Seal) => {
                self.seals += 1;
                self.real().seal_memtable().expect("seal");
                self.same_contents("after sealing");
            }
            Some(Leftover::Reopen) => self.reopen(),
        }
        if let Some(before) = before
            && layer_keys(&self.model) != before
            && let Some(layer) = &mut self.layer
        {
            layer.model_valid = false;
        }
    }

    fn same_contents(&self, when: &str) {
        self.lockstep().same_contents(when);
    }

    /// Reopens the store as a crash of the process would leave it (the model just
    /// stays): every commit is in the OS before `apply` returns, so a copy of the store's
    /// directory taken between two operations, while fjall has nothing left to write in
    /// the background, is what a crash leaves; the copy is opened and the original closes
    /// on a background thread. When the copy would not be exact (after 4 seals, or
    /// 192 KiB of writes) the step does nothing: a real close and open cost fsyncs and
    /// waits for fjall's workers, which would make such inputs the bulk of a fuzzing run;
    /// `kv/tests/model.rs` closes and reopens stores in every state.
    fn reopen(&mut self) {
        let Some(mark) = self.crash_copy_mark() else {
            return;
        };
        // The layer's group committer holds the store too: drop it first.
        let layer = self.layer.take();
        let (model, valid) =
            layer.map_or((LayerModel::default(), false), |l| (l.model, l.model_valid));
        let store = self.real.take().expect("the store is open");
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "someone still holds the store"
        );
        // A compaction fjall queued before the mark may run during the copy (and remove
        // a file the copy lists): copy again until the mark holds across one.
        let copy = fresh_dir();
        let mut mark = Some(mark);
        for attempt in 0.. {
            if let Some(before) = mark
                && copy_dir(&self.dir, &copy).is_ok()
                && store.fjall.quiescence() == Some(before)
            {
                break;
            }
            assert!(attempt < 10_000, "fjall's background work did not settle");
            let _ = std::fs::remove_dir_all(&copy);
            std::thread::sleep(std::time::Duration::from_millis(1));
            mark = store.fjall.quiescence();
        }
        close_later(store, std::mem::replace(&mut self.dir, copy));
        self.real = Some(open_fjall(&self.dir, &self.written));
        self.same_contents("after a crash");
        self.open_layer(model, valid);
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Raw(op) => self.run_raw(op),
            op => {
                if let Some(layer) = &mut self.layer {
                    layer.run(op);
                }
            }
        }
    }
}

impl Layer {
    /// The id `target` addresses, as the model store's catalog has it.
    fn resolve(&self, target: Target) -> DbId {
        let name = ["a", "b", "c"][usize::from(target.0 % 3)];
        match self.model_kv.lookup(name) {
            Ok(Some(entry)) => entry.id,
            _ => {
                let dropped = &self.model.dropped;
                match dropped.get(usize::from(target.0 / 3) % dropped.len().max(1)) {
                    Some(id) => *id,
                    None => DbId(1000),
                }
            }
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Create {
                name,
                super_journal,
            } => {
                let name = name.name();
                let kind = if super_journal {
                    EntryKind::SuperJournal
                } else {
                    EntryKind::Database
                };
                let got = outcome(self.real.create(name, kind));
                let want = outcome(self.model_kv.create(name, kind));
                assert_eq!(got, want, "create {name:?}");
                let modelled = self.model.create(name, kind);
                if self.model_valid {
                    assert_eq!(got, modelled, "create {name:?} against the layer model");
                }
            }
            Op::Lookup(name) => {
                let name = name.name();
                let got = outcome(self.real.lookup(name));
                assert_eq!(got, outcome(self.model_kv.lookup(name)), "lookup {name:?}");
                if self.model_valid {
                    let modelled = keys::validate_name(name)
                        .map_err(|e| e.to_string())
                        .map(|()| self.model.catalog.get(name).copied());
                    assert_eq!(got, modelled, "lookup {name:?} against the layer model");
                }
            }
            Op::DropEntry(name) => {
                let name = name.name();
                let got = outcome(self.real.drop_entry(name));
                assert_eq!(
                    got,
                    outcome(self.model_kv.drop_entry(name)),
                    "drop {name:?}"
                );
                let modelled = self.model.drop_entry(name);
                if self.model_valid {
                    assert_eq!(got, modelled, "drop {name:?} against the layer model");
                }
            }
            Op::List => {
                let got = outcome(self.real.list());
                assert_eq!(got, outcome(self.model_kv.list()), "list");
                if self.model_valid {
                    let modelled: Vec<(String, CatalogEntry)> = self
                        .model
                        .catalog
                        .iter()
                        .map(|(n, e)| ((*n).to_owned(), *e))
                        .collect();
                    assert_eq!(got, Ok(modelled), "list against the layer model");
                }
            }
            Op::WriteFile {
                target,
                kind,
                chunks,
                meta,
            } => self.write_file(target, kind.kind(), chunks, meta),
            Op::ReadChunk { target, kind, no } => {
                let (id, kind, no) = (
                    self.resolve(target),
                    kind.kind(),
                    ChunkNo(u32::from(no % 8)),
                );
                let got = outcome(self.real.read_chunk(id, kind, no));
                assert_eq!(
                    got,
                    outcome(self.model_kv.read_chunk(id, kind, no)),
                    "read chunk"
                );
                if self.model_valid {
                    let modelled = self
                        .model
                        .chunks
                        .get(&(id, kind, no))
                        .map(|c| Bytes::from(c.clone()));
                    assert_eq!(
                        got,
                        Ok(modelled),
                        "read {id} {kind} chunk {} against the layer model",
                        no.0
                    );
                }
            }
            Op::ReadMeta { target, kind } => {
                let (id, kind) = (self.resolve(target), kind.kind());
                let got = outcome(self.real.read_meta(id, kind));
                assert_eq!(got, outcome(self.model_kv.read_meta(id, kind)), "read meta");
                if self.model_valid {
                    let got = got.map(|m| m.map(|m| m.meta));
                    assert_eq!(
                        got,
                        Ok(self.model.files.get(&(id, kind)).copied()),
                        "read {id} {kind} meta against the layer model"
                    );
                }
            }
            Op::Durable => {
                let got = outcome(self.real.commit_durable());
                assert_eq!(
                    got,
                    outcome(self.model_kv.commit_durable()),
                    "durable commit"
                );
                assert_eq!(got, Ok(()), "durable commit");
            }
            _ => unreachable!("raw operations are run by `Run`"),
        }
    }

    fn write_file(
        &mut self,
        target: Target,
        kind: FileKind,
        chunks: Vec<(u8, Value)>,
        meta: Option<(u16, MetaGuard)>,
    ) {
        let id = self.resolve(target);
        let chunks: Vec<(ChunkNo, Vec<u8>)> = chunks
            .into_iter()
            .take(8)
            .map(|(no, v)| (ChunkNo(u32::from(no % 8)), v.bytes()))
            .collect();
        // Each store's batch is guarded on what that store holds.
        let build = |kv: &Kv| -> Result<(Batch, Option<FileMeta>), String> {
            let mut batch = Batch::new();
            for (no, data) in &chunks {
                raw::put_chunk(&mut batch, id, kind, *no, data.clone());
            }
            let mut written = None;
            if let Some((size, guard)) = meta {
                let current = outcome(kv.read_meta(id, kind))?;
                let generation = current.as_ref().map_or(0, |c| c.meta.generation);
                let new = FileMeta {
                    chunk_size: 512,
                    size: u64::from(size),
                    generation: generation + 1,
                };
                let previous = match guard {
                    MetaGuard::Current => current,
                    MetaGuard::Stale => {
                        let stale = FileMeta {
                            generation: generation + 7,
                            ..FileMeta::EMPTY
                        };
                        Some(raw::stored_meta(id, kind, stale))
                    }
                    MetaGuard::Absent => None,
                };
                raw::put_meta(&mut batch, id, kind, &new, previous.as_ref());
                written = Some(new);
            }
            Ok((batch, written))
        };
        let (real, model_kv) = (build(&self.real), build(&self.model_kv));
        assert_eq!(
            real.as_ref().map(|(b, _)| b),
            model_kv.as_ref().map(|(b, _)| b),
            "file write batches"
        );
        let Ok((batch, written)) = real else { return };
        let got = outcome(raw::of(&self.real).apply(batch.clone()));
        assert_eq!(
            got,
            outcome(raw::of(&self.model_kv).apply(batch)),
            "file write"
        );
        let applies = match (meta, self.model.files.get(&(id, kind))) {
            (None, _)
            | (Some((_, MetaGuard::Current)), _)
            | (Some((_, MetaGuard::Absent)), None) => true,
            (Some((_, MetaGuard::Stale)), _) | (Some((_, MetaGuard::Absent)), Some(_)) => false,
        };
        if self.model_valid {
            assert_eq!(
                got.is_ok(),
                applies,
                "file write against the layer model: {got:?}"
            );
        }
        if got.is_ok() {
            for (no, data) in chunks {
                self.model.chunks.insert((id, kind, no), data);
            }
            if let Some(new) = written {
                self.model.files.insert((id, kind), new);
            }
        }
    }

    /// Every file record and chunk in the model store is one the model has, and holds
    /// what the model says.
    fn check_model(&self) {
        if !self.model_valid {
            return;
        }
        let everything = keys::data_range();
        let mut keys = 0;
        for (key, _) in scan_all(raw::of(&self.model_kv).backend().as_ref(), everything) {
            keys += 1;
            match keys::Key::decode(&key).expect("a data key") {
                keys::Key::Meta(id, kind) => {
                    let meta = self
                        .real
                        .read_meta(id, kind)
                        .expect("read meta")
                        .map(|m| m.meta);
                    assert_eq!(
                        meta.as_ref(),
                        self.model.files.get(&(id, kind)),
                        "{id} {kind} meta at the end"
                    );
                }
                keys::Key::Chunk(id, kind, no) => {
                    let chunk = self.real.read_chunk(id, kind, no).expect("read chunk");
                    let want = self.model.chunks.get(&(id, kind, no)).map(|c| &c[..]);
                    assert_eq!(
                        chunk.as_deref(),
                        want,
                        "{id} {kind} chunk {} at the end",
                        no.0
                    );
                }
                other => panic!("{other:?} under the data tag"),
            }
        }
        assert_eq!(
            keys,
            self.model.files.len() + self.model.chunks.len(),
            "data keys at the end"
        );
    }
}

/// The store inputs share: left empty by the input before, and still one whose crash copy
/// is exact (see [`Run::crash_copy_mark`]), with what it has taken in since it was
/// created. Opening a fjall store costs more than most inputs (it fsyncs the files and
/// directories it creates), so inputs reuse one until it is no longer exact; a reopen
/// step then still has a store it can copy.
struct Pooled {
    dir: PathBuf,
    store: Arc<Counted>,
    written: Arc<AtomicU64>,
    seals: usize,
}

/// The store the next input starts on, if the last one left it reusable.
static POOL: Mutex<Option<Pooled>> = Mutex::new(None);

/// `kv_ops`: a sequence of raw and layer operations on an empty [`FjallKv`] and on a
/// fresh [`MemKv`], which must agree on every result (see the module notes).
pub fn kv_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut run = match POOL.lock().take() {
        Some(pooled) => Run {
            dir: pooled.dir,
            real: Some(pooled.store),
            model: Arc::new(MemKv::new()),
            layer: None,
            written: pooled.written,
            seals: pooled.seals,
        },
        None => {
            let mut run = Run {
                dir: fresh_dir(),
                real: None,
                model: Arc::new(MemKv::new()),
                layer: None,
                written: Arc::default(),
                seals: 0,
            };
            run.real = Some(open_fjall(&run.dir, &run.written));
            run
        }
    };
    run.same_contents("at the start");
    run.open_layer(LayerModel::default(), true);
    assert!(run.layer.is_some(), "the layer opens on an empty store");

    // Plain `arbitrary` goes on producing zeroed values once the input runs out, so the
    // loop stops on an empty input, not on an error.
    let mut ops = 0;
    let mut reopens = 0;
    while !u.is_empty() && ops < MAX_OPS {
        let Ok(op) = u.arbitrary::<Op>() else { break };
        // A reopen copies the store's directory and opens fjall with its worker threads,
        // the most expensive step by far (nearly half of a run when inputs had many):
        // past the first, one is a flush.
        let op = match op {
            Op::Raw(RawOp::Reopen) if reopens >= MAX_REOPENS => Op::Raw(RawOp::Flush),
            Op::Raw(RawOp::Reopen) => {
                reopens += 1;
                Op::Raw(RawOp::Reopen)
            }
            op => op,
        };
        run.run(op);
        ops += 1;
    }
    run.same_contents("at the end");
    if let Some(layer) = &run.layer {
        layer.check_model();
    }
    drop(run.layer.take());
    // Empty the store for the next input, or close it if a crash copy of it would no
    // longer be exact.
    let mut clear = Batch::new();
    clear.delete_range(KeyRange::prefix(&[]));
    run.counted().apply(clear).expect("clearing the store");
    let reusable = run.crash_copy_mark().is_some();
    let store = run.real.take().expect("the store is open");
    if reusable {
        *POOL.lock() = Some(Pooled {
            dir: run.dir,
            store,
            written: run.written,
            seals: run.seals,
        });
    } else {
        close_later(store, run.dir);
    }
}

/// Stores being closed on background threads.
static CLOSING: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// At most this many stores close at once; past it an input waits for the oldest.
const MAX_CLOSING: usize = 256;

/// Closes `store` and removes `dir` on a background thread, so the next input need not
/// wait (a close waits for fjall's workers to finish what they are doing): each input's
/// store has its own directory.
fn close_later(store: Arc<Counted>, dir: PathBuf) {
    let mut closing = CLOSING.lock();
    closing.retain(|h| !h.is_finished());
    while closing.len() >= MAX_CLOSING {
        let oldest = closing.remove(0);
        let _ = oldest.join();
    }
    closing.push(std::thread::spawn(move || {
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }));
}

/// Closes the store [`kv_ops`] keeps for the next input, and waits until every store it
/// left closing is closed and its directory removed.
pub fn wait_for_closes() {
    if let Some(pooled) = POOL.lock().take() {
        close_later(pooled.store, pooled.dir);
    }
    let handles = std::mem::take(&mut *CLOSING.lock());
    for h in handles {
        let _ = h.join();
    }
}
