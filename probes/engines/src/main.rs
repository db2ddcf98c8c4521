//! The write pattern of `shoal bench commits` (one small insert per commit) run straight on
//! candidate engines, without SQLite or the VFS, to see what each engine costs per commit.
//!
//! Each commit is one atomic batch of two 4 KiB pages of one actor, as SQLite writes them for
//! an insert of a 100-byte row: page 1 (its header changes on every commit) and the leaf the
//! row lands on (a new leaf every 35 rows; the old ones stay). A page holds random bytes up to
//! its rows and zeros after, as a table of `zeroblob(100)` rows does not: the random part
//! keeps compression honest. Keys are shoal's shape: an 8-byte actor id and a 4-byte page
//! number, big-endian.
//!
//! `cargo run --release -- [SECONDS] [ACTORS,...] [ENGINE[@GROUP],...]` prints, per engine and actor count,
//! commits per second with the batches only written to the OS (relaxed: no fsync), and the
//! bytes written to disk per commit (`write_bytes` of /proc/self/io, the close included).
//! `ENGINE@GROUP` applies the commits of GROUP actors in one batch, as a group committer
//! that coalesced applies would.
//!
//! Engines: `fjall2*` and `fjall3*` (the LSM the project uses, in variants), `fjall3-tuned`
//! (fjall 3 relieved of its per-commit `write()`), `redb` (a copy-on-write B-tree), `sled`,
//! and `ownlog`/`ownlog-lz4` (a log of our own in front of fjall 3).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

trait Engine: Sync {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()>;
}

struct Fjall2 {
    partition: fjall2::PartitionHandle,
    keyspace: fjall2::Keyspace,
    /// Compress each page before the engine sees it (the "smaller values" lever).
    page_lz4: bool,
}

impl Engine for Fjall2 {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let mut batch = self.keyspace.batch();
        for (k, v) in pages {
            if self.page_lz4 {
                batch.insert(
                    &self.partition,
                    k.as_slice(),
                    lz4_flex::compress_prepend_size(v),
                );
            } else {
                batch.insert(&self.partition, k.as_slice(), v.as_slice());
            }
        }
        batch.commit()?;
        Ok(())
    }
}

struct Fjall3 {
    /// Set for `fjall3-tuned`: the thread that hands the journal to the OS every 5 ms.
    /// First, so that it is stopped (and its last hand-over done) before the handles go.
    _persister: Option<Persister>,
    db: fjall3::Database,
    keyspace: fjall3::Keyspace,
}

/// Calls `db.persist(PersistMode::Buffer)` every `PERSIST_EVERY` (and once more when stopped):
/// with `manual_journal_persist(true)` the journal's buffer reaches the OS only then, so a
/// process crash loses at most the commits of the last interval (the OS still has the rest).
struct Persister {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const PERSIST_EVERY: Duration = Duration::from_millis(5);

impl Persister {
    fn start(db: fjall3::Database) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                loop {
                    let last = stop.load(Ordering::Relaxed);
                    if let Err(e) = db.persist(fjall3::PersistMode::Buffer) {
                        eprintln!("fjall3-tuned: persist failed: {e}");
                        return;
                    }
                    if last {
                        return;
                    }
                    std::thread::sleep(PERSIST_EVERY);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("persister panicked");
        }
    }
}

impl Engine for Fjall3 {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let mut batch = self.db.batch();
        for (k, v) in pages {
            batch.insert(&self.keyspace, k.as_slice(), v.as_slice());
        }
        batch.commit()?;
        Ok(())
    }
}

/// redb's one table: page key to page.
const REDB_PAGES: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("pages");

/// Every commit is a non-durable write transaction (`Durability::None`: no fsync; its dirty
/// pages go to redb's write cache and the OS); every `REDB_DURABLE_EVERY`-th is
/// `Durability::Immediate` (fsync), the only kind after which redb reuses the pages the
/// non-durable commits superseded: it keeps redb's memory and file bounded. A process
/// crash loses everything since the last durable commit. redb has one writer at a time:
/// `begin_write` blocks while another write transaction is open, so the two threads take
/// turns (the engine's property, not the probe's).
struct Redb {
    db: redb::Database,
    commits: AtomicU64,
}

const REDB_DURABLE_EVERY: u64 = 2_000;

impl Engine for Redb {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write()?;
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        tx.set_durability(if n.is_multiple_of(REDB_DURABLE_EVERY) {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })?;
        {
            let mut table = tx.open_table(REDB_PAGES)?;
            for (k, v) in pages {
                table.insert(k.as_slice(), v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// sled 0.34: each commit one `Batch` through `Tree::apply_batch` (atomic); sled writes its
/// log to the OS in the background and fsyncs it every 500 ms (`flush_every_ms`), so a process
/// crash may lose the commits still in its buffers. Seen once: a run at 16 actors stopped
/// for good with every sled IO thread waiting on one lock (sled 0.34 is no longer kept).
struct Sled {
    db: sled::Db,
}

impl Engine for Sled {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in pages {
            batch.insert(k.as_slice(), v.as_slice());
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }
}

impl Drop for Sled {
    /// Flushes what sled still buffers, so that its writes are counted.
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            eprintln!("sled: flush failed: {e}");
        }
    }
}

/// "A log of our own in front of the LSM": each commit appends one record to a log file and
/// hands it to the OS (`write()`) before it returns, under one mutex; the latest value of every
/// key since the last checkpoint is kept in a map (what reads would consult first, then the
/// map of a checkpoint in flight, then fjall). When the log passes `OWNLOG_CHECKPOINT`, the
/// map is swapped for an empty one, a new log file is started, and a background thread writes
/// the old map into a kv-separated fjall 3 keyspace (as `fjall3-kvsep`) in batches, then
/// deletes the old log. Writers wait on a checkpoint only when the previous one is still
/// running (at most one in flight: memory stays bounded by two maps).
///
/// Crash safety: as fjall's default, a process crash loses nothing acknowledged (every record
/// reached the OS), a power loss everything not yet written back (nothing is fsynced).
/// Recovery would replay, in order, the log files not yet deleted (a checkpoint deletes its log
/// only after its batches reached fjall's journal); this probe does not implement recovery.
///
/// Record: item count (u32), then per item key length (u32), key, value length (u32), value,
/// then a CRC32 of all of it; little-endian.
struct OwnLog {
    state: Mutex<OwnLogState>,
    /// Compress each value with lz4 before it is appended (and kept in the map).
    lz4: bool,
    checkpointer: Option<JoinHandle<anyhow::Result<CheckpointStats>>>,
    waits: AtomicU64,
}

struct OwnLogState {
    dir: PathBuf,
    log: BufWriter<File>,
    log_path: PathBuf,
    log_bytes: u64,
    log_seq: u64,
    record: Vec<u8>,
    map: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys and values in `map`, bytes (without the map's own overhead).
    map_bytes: usize,
    peak_map_bytes: usize,
    peak_map_entries: usize,
    /// To the checkpoint thread: a rendezvous channel, so a send completes only when the
    /// thread is free (the previous checkpoint done). `None` once dropping.
    checkpoints: Option<mpsc::SyncSender<Checkpoint>>,
}

/// What a checkpoint writes into fjall, and the log file it then deletes.
type Checkpoint = (HashMap<Vec<u8>, Vec<u8>>, PathBuf);

#[derive(Default)]
struct CheckpointStats {
    count: u64,
    entries: u64,
    busy: Duration,
}

const OWNLOG_CHECKPOINT: u64 = 32 << 20;
/// Items per fjall batch of a checkpoint.
const OWNLOG_BATCH: usize = 512;

fn ownlog_file(dir: &Path, seq: u64) -> anyhow::Result<(BufWriter<File>, PathBuf)> {
    let path = dir.join(format!("log-{seq:06}"));
    Ok((
        BufWriter::with_capacity(64 << 10, File::create(&path)?),
        path,
    ))
}

impl OwnLog {
    fn open(dir: &Path, lz4: bool) -> anyhow::Result<Self> {
        let db = fjall3::Database::builder(dir.join("lsm"))
            .cache_size(CACHE)
            .open()?;
        let keyspace = db.keyspace("pages", || {
            fjall3::KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE)
                .with_kv_separation(Some(fjall3::KvSeparationOptions::default()))
        })?;
        let (tx, rx) = mpsc::sync_channel::<Checkpoint>(0);
        let checkpointer = std::thread::spawn(move || -> anyhow::Result<CheckpointStats> {
            let mut stats = CheckpointStats::default();
            for (map, old_log) in rx {
                let t0 = Instant::now();
                let mut batch = db.batch();
                for (k, v) in map {
                    batch.insert(&keyspace, k, v);
                    stats.entries += 1;
                    if batch.len() >= OWNLOG_BATCH {
                        std::mem::replace(&mut batch, db.batch()).commit()?;
                    }
                }
                batch.commit()?;
                db.persist(fjall3::PersistMode::Buffer)?;
                std::fs::remove_file(&old_log)?;
                stats.count += 1;
                stats.busy += t0.elapsed();
            }
            Ok(stats)
        });
        let (log, log_path) = ownlog_file(dir, 0)?;
        Ok(Self {
            state: Mutex::new(OwnLogState {
                dir: dir.to_owned(),
                log,
                log_path,
                log_bytes: 0,
                log_seq: 0,
                record: Vec::new(),
                map: HashMap::new(),
                map_bytes: 0,
                peak_map_bytes: 0,
                peak_map_entries: 0,
                checkpoints: Some(tx),
            }),
            lz4,
            checkpointer: Some(checkpointer),
            waits: AtomicU64::new(0),
        })
    }
}

impl Engine for OwnLog {
    fn commit(&self, pages: &[(Vec<u8>, Vec<u8>)]) -> anyhow::Result<()> {
        let values: Vec<Vec<u8>> = pages
            .iter()
            .map(|(_, v)| {
                if self.lz4 {
                    lz4_flex::compress_prepend_size(v)
                } else {
                    v.clone()
                }
            })
            .collect();
        let mut guard = self.state.lock().expect("ownlog lock poisoned");
        let st = &mut *guard;
        st.record.clear();
        st.record
            .extend_from_slice(&(pages.len() as u32).to_le_bytes());
        for ((k, _), v) in pages.iter().zip(&values) {
            st.record.extend_from_slice(&(k.len() as u32).to_le_bytes());
            st.record.extend_from_slice(k);
            st.record.extend_from_slice(&(v.len() as u32).to_le_bytes());
            st.record.extend_from_slice(v);
        }
        let crc = crc32fast::hash(&st.record);
        st.record.extend_from_slice(&crc.to_le_bytes());
        st.log.write_all(&st.record)?;
        st.log.flush()?;
        st.log_bytes += st.record.len() as u64;
        for ((k, _), v) in pages.iter().zip(values) {
            match st.map.get_mut(k) {
                Some(old) => {
                    st.map_bytes = st.map_bytes - old.len() + v.len();
                    *old = v;
                }
                None => {
                    st.map_bytes += k.len() + v.len();
                    st.map.insert(k.clone(), v);
                }
            }
        }
        st.peak_map_bytes = st.peak_map_bytes.max(st.map_bytes);
        st.peak_map_entries = st.peak_map_entries.max(st.map.len());
        if st.log_bytes >= OWNLOG_CHECKPOINT {
            st.log_seq += 1;
            let (log, path) = ownlog_file(&st.dir, st.log_seq)?;
            let old_path = std::mem::replace(&mut st.log_path, path);
            std::mem::replace(&mut st.log, log).flush()?;
            st.log_bytes = 0;
            st.map_bytes = 0;
            let job = (std::mem::take(&mut st.map), old_path);
            let sender = st.checkpoints.as_ref().expect("ownlog open");
            // Still under the lock, so checkpoints reach fjall in order; it blocks only when
            // the previous checkpoint is still running.
            if let Err(mpsc::TrySendError::Full(job)) = sender.try_send(job) {
                self.waits.fetch_add(1, Ordering::Relaxed);
                sender
                    .send(job)
                    .map_err(|_| anyhow::anyhow!("checkpointer gone"))?;
            }
        }
        Ok(())
    }
}

impl Drop for OwnLog {
    /// Joins the checkpoint thread (so its writes are counted) and reports what the log cost
    /// in memory. The map since the last checkpoint stays in the last log, not checkpointed.
    fn drop(&mut self) {
        let (peak_bytes, peak_entries) = {
            let mut st = self.state.lock().expect("ownlog lock poisoned");
            if let Err(e) = st.log.flush() {
                eprintln!("ownlog: flush failed: {e}");
            }
            st.checkpoints = None;
            (st.peak_map_bytes, st.peak_map_entries)
        };
        let stats = match self.checkpointer.take().map(JoinHandle::join) {
            Some(Ok(Ok(stats))) => stats,
            Some(Ok(Err(e))) => {
                eprintln!("ownlog: checkpoint failed: {e:#}");
                CheckpointStats::default()
            }
            Some(Err(_)) => panic!("checkpointer panicked"),
            None => CheckpointStats::default(),
        };
        eprintln!(
            "{}: {} checkpoints ({} entries, {:.2} s busy), writers waited on {}; \
             peak map {} bytes of keys and values ({} entries)",
            if self.lz4 { "ownlog-lz4" } else { "ownlog" },
            stats.count,
            stats.entries,
            stats.busy.as_secs_f64(),
            self.waits.load(Ordering::Relaxed),
            peak_bytes,
            peak_entries,
        );
    }
}

const CACHE: u64 = 64 << 20;
const MEMTABLE: u64 = 4 << 20;

fn open(name: &str, dir: &Path) -> anyhow::Result<Box<dyn Engine>> {
    Ok(match name {
        "fjall2" | "fjall2-kvsep" | "fjall2-nolz4" | "fjall2-pagelz4" => {
            let keyspace = fjall2::Config::new(dir).cache_size(CACHE).open()?;
            let mut options =
                fjall2::PartitionCreateOptions::default().max_memtable_size(MEMTABLE as u32);
            if name == "fjall2-kvsep" {
                options = options.with_kv_separation(fjall2::KvSeparationOptions::default());
            }
            if name == "fjall2-nolz4" {
                options = options.compression(fjall2::CompressionType::None);
            }
            let partition = keyspace.open_partition("pages", options)?;
            Box::new(Fjall2 {
                partition,
                keyspace,
                page_lz4: name == "fjall2-pagelz4",
            })
        }
        "fjall3" | "fjall3-kvsep" | "fjall3-nolz4" => {
            let db = fjall3::Database::builder(dir).cache_size(CACHE).open()?;
            let kvsep = name == "fjall3-kvsep";
            let nolz4 = name == "fjall3-nolz4";
            let keyspace = db.keyspace("pages", || {
                let mut o = fjall3::KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE);
                if kvsep {
                    o = o.with_kv_separation(Some(fjall3::KvSeparationOptions::default()));
                }
                if nolz4 {
                    o = o.data_block_compression_policy(fjall3::config::CompressionPolicy::all(
                        fjall3::CompressionType::None,
                    ));
                }
                o
            })?;
            Box::new(Fjall3 {
                _persister: None,
                db,
                keyspace,
            })
        }
        // fjall 3 with key-value separation, a 16 MiB memtable, and the journal handed to the
        // OS by a thread every 5 ms (`manual_journal_persist(true)` on the Database builder,
        // then `db.persist(PersistMode::Buffer)`) instead of by a `write()` per commit (the
        // journal still writes whenever its 8 KiB buffer fills). Crash safety: a process crash
        // loses up to ~5 ms of acknowledged commits (at most what is still in that buffer), a
        // power loss as the others (nothing is fsynced).
        "fjall3-tuned" => {
            let db = fjall3::Database::builder(dir)
                .cache_size(CACHE)
                .manual_journal_persist(true)
                .open()?;
            let keyspace = db.keyspace("pages", || {
                fjall3::KeyspaceCreateOptions::default()
                    .max_memtable_size(16 << 20)
                    .with_kv_separation(Some(fjall3::KvSeparationOptions::default()))
            })?;
            Box::new(Fjall3 {
                _persister: Some(Persister::start(db.clone())),
                db,
                keyspace,
            })
        }
        "redb" => {
            let db = redb::Builder::new()
                .set_cache_size(CACHE as usize)
                .create(dir.join("pages.redb"))?;
            let tx = db.begin_write()?;
            tx.open_table(REDB_PAGES)?;
            tx.commit()?;
            Box::new(Redb {
                db,
                commits: AtomicU64::new(0),
            })
        }
        "sled" => {
            let db = sled::Config::new()
                .path(dir)
                .cache_capacity(CACHE)
                .flush_every_ms(Some(500))
                .open()?;
            Box::new(Sled { db })
        }
        "ownlog" | "ownlog-lz4" => Box::new(OwnLog::open(dir, name == "ownlog-lz4")?),
        other => anyhow::bail!("unknown engine {other}"),
    })
}

fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const THREADS: usize = 2;
const ROWS_PER_PAGE: u64 = 35;

fn page(rows: u64, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut page = vec![0u8; 4096];
    let used = (rows.min(ROWS_PER_PAGE) * 110) as usize;
    rng.fill(&mut page[..used.min(4096)]);
    page
}

fn key(actor: u64, pgno: u32) -> Vec<u8> {
    let mut k = actor.to_be_bytes().to_vec();
    k.extend_from_slice(&pgno.to_be_bytes());
    k
}

/// Runs the workload for `seconds`; each call of `commit` carries the commits of `group`
/// actors (1: one commit per batch, as shoal applies them today).
fn run(engine: &dyn Engine, actors: usize, group: usize, seconds: f64) -> anyhow::Result<f64> {
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let t0 = Instant::now();
    let result: anyhow::Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (stop, commits) = (&stop, &commits);
                s.spawn(move || -> anyhow::Result<()> {
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    let mine: Vec<u64> = (t..actors).step_by(THREADS).map(|a| a as u64).collect();
                    let mut rows = vec![0u64; mine.len()];
                    let mut batch = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        for (i, &actor) in mine.iter().enumerate() {
                            rows[i] += 1;
                            let leaf = 2 + (rows[i] / ROWS_PER_PAGE) as u32;
                            batch.push((key(actor, 1), page(1, &mut rng)));
                            batch.push((
                                key(actor, leaf),
                                page(rows[i] % ROWS_PER_PAGE + 1, &mut rng),
                            ));
                            if batch.len() >= 2 * group {
                                engine.commit(&batch)?;
                                commits.fetch_add((batch.len() / 2) as u64, Ordering::Relaxed);
                                batch.clear();
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("worker panicked"))
    });
    result?;
    Ok(commits.into_inner() as f64 / t0.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(Ok(4.0), |s| s.parse())?;
    let actors: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "16,256,1000".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let engines: Vec<String> = args.next().map_or_else(
        || {
            [
                "fjall2",
                "fjall2-nolz4",
                "fjall2-kvsep",
                "fjall3",
                "fjall3-nolz4",
                "fjall3-kvsep",
            ]
            .map(String::from)
            .to_vec()
        },
        |e| e.split(',').map(String::from).collect(),
    );
    println!(
        "{:>16} {:>7} {:>12} {:>14}",
        "engine", "actors", "commits/s", "bytes/commit"
    );
    for &n in &actors {
        for name in &engines {
            let dir = tempfile_dir(name, n)?;
            let before = write_bytes();
            let (base, group) = match name.split_once('@') {
                Some((base, group)) => (base, group.parse()?),
                None => (name.as_str(), 1),
            };
            let engine = open(base, &dir)?;
            let rate = run(engine.as_ref(), n, group, seconds)?;
            let commits = rate * seconds;
            drop(engine);
            let bytes = write_bytes() - before;
            println!(
                "{name:>16} {n:>7} {rate:>12.0} {:>14.0}",
                bytes as f64 / commits
            );
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

fn tempfile_dir(name: &str, n: usize) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::current_dir()?
        .join("target")
        .join(format!("probe-{name}-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
