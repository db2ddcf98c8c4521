//! `FjallKv`: fjall 3.x (an LSM-tree) behind the [`KvStore`] trait, the default backend
//! because its memory stays near its configured cache (docs/BENCHMARKS.md, "Memory").
//!
//! It owns everything fjall-specific: no fjall type crosses this module's boundary. The
//! invariants it keeps for the trait's contract:
//! - a batch is one fjall batch, atomic after a crash; reads go through a snapshot of the
//!   last published batch, so a reader never sees part of one;
//! - [`KvStore::flush`] fsyncs the journal (and returns at once when nothing was committed
//!   since the last flush); a failed write or fsync poisons the database for good;
//! - a writer waits for memtable room before it commits, never inside fjall's own stall
//!   loops (which sleep without looking at the poison flag), so a full disk is
//!   [`Error::Full`] or [`Error::Poisoned`], not a hang;
//! - damaged files are [`Error::Corrupt`], never a panic or an abort (see
//!   `fjall_preflight` for what fjall itself does not check);
//! - one database per directory, held by an exclusive lock on [`LOCK_FILE`];
//! - a [`scan`] reads pages of at most [`SCAN_PAGE_ENTRIES`] entries and holds no fjall
//!   iterator between them;
//! - every key is stored behind [`USER_PREFIX`], and keys fjall cannot store are refused
//!   with an error;
//! - page-sized values live in blob files (key-value separation), out of the tables that
//!   compaction rewrites level by level;
//! - a page read is fjall's buffer, shared as [`Bytes`] without a copy (smaller values
//!   are copied: see `to_bytes`).
//!
//! Why each of these holds, as read in the fjall 3.1.13 and lsm-tree 3.1.10 sources and
//! measured, is in docs/design.md ("What `FjallKv` relies on in fjall").
//!
//! [`scan`]: KvStore::scan

use std::fs::{File, TryLockError};
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use bytes::Bytes;
use fjall::config::CompressionPolicy;
use fjall::{
    AbstractTree, CompressionType, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions,
    OwnedWriteBatch, PersistMode, Readable, Slice, Snapshot,
};
use parking_lot::Mutex;

use crate::error::{Error, Result, out_of_space, panic_message};
use crate::keys::{self, KeyRange};
use crate::store::{Batch, Entry, KvStats, KvStore, Paged, Scan, fold_ops};

/// The file in the store's directory that [`FjallKv`] locks while it is open.
const LOCK_FILE: &str = "shoal.lock";

/// How long [`FjallKv::open`] waits for a lock held elsewhere.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// The one keyspace every key lives in.
const KEYSPACE: &str = "kv";

/// First byte of every stored key (the caller's key follows it).
const USER_PREFIX: u8 = 0x00;

/// The longest key fjall stores, less the prefix byte.
const MAX_KEY_LEN: usize = u16::MAX as usize - 1;

/// The least write buffer this module works with: memtables of 256 KiB.
const MIN_WRITE_BUFFER: u64 = 1 << 20;

/// A memtable is sealed at this fraction of the write buffer: the buffer then holds the
/// active one, one or two being flushed and the one an older version of the tree still
/// refers to (see [`FjallKv::make_room`]).
const MEMTABLES: u64 = 4;

/// fjall's journal bound (`max_journaling_size`, its default, set explicitly so that it
/// stays what docs/design.md says).
const MAX_JOURNALING: u64 = 512 << 20;

/// fjall sleeps a writer, after its batch, while a keyspace has this many sealed
/// memtables waiting for a flush (`Keyspace::local_backpressure`)...
const SEALED_HALT: usize = 4;

/// ...and spins, then sleeps, while level 0 has this many runs or more.
const L0_STALL: usize = 20;

/// Values of at least this many bytes go to blob files (fjall's default threshold, set
/// explicitly: SQLite pages of 1 KiB and more are separated, records and metadata not).
const SEPARATION_THRESHOLD: u32 = 1024;

/// How long [`FjallKv::make_room`] sleeps between looks at the write buffer.
const HALT_POLL: Duration = Duration::from_millis(1);

/// Free space under which a poisoned database is reported as a full disk.
const FULL_MARGIN: u64 = 1 << 20;

/// Bytes fjall counts for one item in its write buffer: its key and value and the
/// in-memory item around them (`Memtable::insert` in lsm-tree).
fn item_size(stored_key: &[u8], value: &[u8]) -> u64 {
    (stored_key.len() + value.len() + std::mem::size_of::<lsm_tree::InternalValue>()) as u64
}

/// How many entries one page of a scan holds at most...
const SCAN_PAGE_ENTRIES: usize = 256;

/// ...and how many bytes of keys and values, so a page of 4 KiB chunks stays near 1 MiB.
const SCAN_PAGE_BYTES: usize = 1 << 20;

/// How to open a [`FjallKv`].
#[derive(Debug, Clone)]
pub struct FjallConfig {
    /// Directory of the store (created if missing).
    pub path: PathBuf,
    /// Bytes of fjall's block and blob cache (part of the process memory budget).
    pub cache_capacity: u64,
    /// Bytes all memtables may hold together before writers wait (part of the budget);
    /// at least 1 MiB (smaller values are raised to it).
    pub write_buffer: u64,
    /// Interval of the background fsync of the journal; `None` (or `Some(0)`) syncs only
    /// when asked. Relaxed durability relies on it, like sled's timer.
    pub flush_every_ms: Option<u16>,
    /// lz4-compress the journal's large values, table blocks and blob files (fjall's
    /// default, kept: SQLite pages of text compress well, and the journal is what every
    /// commit writes). Table and blob compression are fixed when the store is created.
    pub compress: bool,
}

impl FjallConfig {
    /// Defaults for `path`: a 16 MiB cache, an 8 MiB write buffer and a 500 ms
    /// background fsync.
    pub fn new(path: impl Into<PathBuf>) -> FjallConfig {
        FjallConfig {
            path: path.into(),
            cache_capacity: 16 << 20,
            write_buffer: 8 << 20,
            flush_every_ms: Some(500),
            compress: true,
        }
    }
}

/// The thread that fsyncs the journal every `flush_every_ms` when something was
/// committed since the last sync (fjall 3 has no timer of its own). Dropping it stops
/// the thread and waits for it.
struct SyncTimer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SyncTimer {
    fn start(db: Database, unsynced: Arc<AtomicBool>, every: Duration) -> Result<SyncTimer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("shoal:fjall-sync".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    // A failed sync poisons the database; the next commit or flush
                    // reports it.
                    if unsynced.swap(false, Ordering::SeqCst)
                        && db.persist(PersistMode::SyncAll).is_err()
                    {
                        unsynced.store(true, Ordering::SeqCst);
                    }
                }
            })
            .map_err(|e| Error::backend("open", e))?;
        Ok(SyncTimer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for SyncTimer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The fjall backend.
pub struct FjallKv {
    // Field order is drop order: the timer (which holds the database) stops first, then
    // the keyspace and the database (and its threads) go, then the lock.
    timer: Option<SyncTimer>,
    keyspace: Keyspace,
    db: Database,
    /// Held across precondition check and commit so no other batch slips between them.
    write_lock: Mutex<()>,
    /// While a batch goes into fjall: 1 + the sequence number counter before it (the
    /// batch takes that number or a later one); 0 otherwise. See [`FjallKv::snapshot`].
    in_flight: AtomicU64,
    /// Set after every commit, cleared by the flush (or timer sync) that covers it.
    unsynced: Arc<AtomicBool>,
    /// The write buffer's cap, enforced by [`FjallKv::make_room`].
    write_buffer: u64,
    /// Why this store stopped taking writes, when fjall would not know (a panic inside
    /// a write, which may have left part of a batch in the memtable).
    broken: OnceLock<String>,
    path: PathBuf,
    cache_capacity: u64,
    /// The locked [`LOCK_FILE`]; closing it releases the lock.
    _lock: File,
}

impl std::fmt::Debug for FjallKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallKv")
            .field("path", &self.path)
            .field("cache_capacity", &self.cache_capacity)
            .finish_non_exhaustive()
    }
}

/// The stored form of `key`: the prefix byte, then the key.
fn stored_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(USER_PREFIX);
    k.extend_from_slice(key);
    k
}

/// The caller's key from a stored one; a key without the prefix is not one of ours.
fn user_key(stored: &[u8]) -> Result<Bytes> {
    match stored.split_first() {
        Some((&USER_PREFIX, key)) => Ok(Bytes::copy_from_slice(key)),
        _ => Err(Error::Corrupt {
            what: format!("fjall key of {} bytes", stored.len()),
            reason: "it lacks the user-key prefix".into(),
        }),
    }
}

/// The error for a key fjall cannot store (named by its first bytes: it is long).
fn too_long(op: &'static str, key: &[u8]) -> Error {
    let head = keys::hex(key.get(..16).unwrap_or(key));
    Error::backend(
        op,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the key {head}... is {} bytes long; fjall stores keys of at most \
                 {MAX_KEY_LEN} bytes",
                key.len()
            ),
        ),
    )
}

/// Start and end bounds of a range of stored keys.
type StoredBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The stored-key bounds of `range`, or `None` if it is empty. A bound longer than any
/// storable key is cut to the longest storable prefix, which selects the same keys:
/// a stored key `k` (at most `MAX_KEY_LEN` bytes) is `>= start` exactly when it is
/// `> start[..MAX_KEY_LEN]`, and `< end` exactly when it is `<= end[..MAX_KEY_LEN]`.
fn stored_bounds(range: &KeyRange) -> Option<StoredBounds> {
    if range.is_empty() {
        return None;
    }
    let start = match range.start.get(..MAX_KEY_LEN) {
        Some(cut) if cut.len() < range.start.len() => Bound::Excluded(stored_key(cut)),
        _ => Bound::Included(stored_key(&range.start)),
    };
    let end = if range.end.is_empty() {
        // Past every user key, short of any other prefix.
        Bound::Excluded(vec![USER_PREFIX + 1])
    } else {
        match range.end.get(..MAX_KEY_LEN) {
            Some(cut) if cut.len() < range.end.len() => Bound::Included(stored_key(cut)),
            _ => Bound::Excluded(stored_key(&range.end)),
        }
    };
    Some((start, end))
}

/// A value read from fjall as [`Bytes`]: a page-sized one shares fjall's buffer, a
/// smaller one is copied. lsm-tree hands out a value kept in a table (one under
/// [`SEPARATION_THRESHOLD`]: a catalog entry, a record) as a slice of the whole
/// decompressed block it sits in, so a 100-byte record held by a cache above this one
/// would keep its 4 KiB block alive after fjall's cache let it go, memory no budget
/// counts. Pages live in blob files, each value in a buffer of its own.
fn to_bytes(v: Slice) -> Bytes {
    if v.len() < SEPARATION_THRESHOLD as usize {
        Bytes::copy_from_slice(&v)
    } else {
        Bytes::from_owner(v)
    }
}

/// lz4, or no compression.
fn compression(compress: bool) -> CompressionType {
    if compress {
        CompressionType::Lz4
    } else {
        CompressionType::None
    }
}

/// The options of the keyspace when this open creates it (an existing one keeps those it
/// was created with).
fn keyspace_options(memtable: u64, compress: bool) -> KeyspaceCreateOptions {
    let policy = if compress {
        CompressionPolicy::all(CompressionType::Lz4)
    } else {
        CompressionPolicy::disabled()
    };
    KeyspaceCreateOptions::default()
        .max_memtable_size(memtable)
        .data_block_compression_policy(policy)
        .with_kv_separation(Some(
            KvSeparationOptions::default()
                .compression(compression(compress))
                .separation_threshold(SEPARATION_THRESHOLD),
        ))
}

impl FjallKv {
    /// Opens (or creates) the store described by `config`.
    ///
    /// Fails with [`Error::StoreLocked`] while the directory is open in another
    /// [`FjallKv`], in this process or another, and with [`Error::UnsupportedFormat`] on
    /// a store of fjall 2's format (made by shoal before it moved to fjall 3).
    pub fn open(config: &FjallConfig) -> Result<FjallKv> {
        let path = &config.path;
        let io_error =
            |e: std::io::Error| no_access(path, &e).unwrap_or_else(|| Error::backend("open", e));
        std::fs::create_dir_all(path).map_err(io_error)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(io_error)?;
        // A lock held elsewhere is waited for briefly: a child process that another
        // thread is starting holds a copy of every open file, and so of the lock of a
        // store closed meanwhile, until it execs.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::StoreLocked { path: path.clone() });
                }
                Err(TryLockError::Error(e)) => return Err(Error::backend("lock", e)),
            }
        }
        refuse_fjall2(path)?;
        crate::fjall_preflight::preflight(path).map_err(|damage| Error::Corrupt {
            what: format!("the fjall file {}", damage.file.display()),
            reason: damage.reason,
        })?;
        let write_buffer = config.write_buffer.max(MIN_WRITE_BUFFER);
        // fjall panics on some damaged files; its recovery runs here.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let db = Database::builder(path)
                .cache_size(config.cache_capacity)
                .max_journaling_size(MAX_JOURNALING)
                .journal_compression(compression(config.compress))
                .open()?;
            let keyspace = db.keyspace(KEYSPACE, || {
                keyspace_options(write_buffer / MEMTABLES, config.compress)
            })?;
            fjall::Result::Ok((db, keyspace))
        }));
        let (db, keyspace) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return Err(engine_error("open", path, e)),
            Err(panic) => return Err(panicked("open", path, &*panic)),
        };
        // A journal replayed at open may not have been synced before the crash.
        let unsynced = Arc::new(AtomicBool::new(true));
        let timer = match config.flush_every_ms.filter(|&ms| ms > 0) {
            Some(ms) => Some(SyncTimer::start(
                db.clone(),
                Arc::clone(&unsynced),
                Duration::from_millis(u64::from(ms)),
            )?),
            None => None,
        };
        Ok(FjallKv {
            timer,
            keyspace,
            db,
            write_lock: Mutex::new(()),
            in_flight: AtomicU64::new(0),
            unsynced,
            write_buffer,
            broken: OnceLock::new(),
            path: path.clone(),
            cache_capacity: config.cache_capacity,
            _lock: lock,
        })
    }

    /// Our error for fjall's `e` during `op` (see the module docs).
    fn error(&self, op: &'static str, e: impl Into<fjall::Error>) -> Error {
        engine_error(op, &self.path, e)
    }

    /// Fails if the database is poisoned (fjall answers a buffer-only persist with
    /// `Poisoned` then, and otherwise writes nothing: every commit has flushed its
    /// buffer already) or this module found the store broken.
    fn check_alive(&self, op: &'static str) -> Result<()> {
        if let Some(cause) = self.broken.get() {
            return Err(Error::Poisoned {
                cause: cause.clone(),
                disk_full: disk_nearly_full(&self.path),
            });
        }
        self.db
            .persist(PersistMode::Buffer)
            .map_err(|e| self.error(op, e))
    }

    /// Holds back a batch of `need` bytes (as fjall counts them) until fjall can take it
    /// without stalling after `commit`, and fails instead of waiting once fjall can no
    /// longer make room (see the module docs). Called under the write lock, so nothing
    /// but this batch adds to the buffer meanwhile; fjall's flushes only take from it.
    ///
    /// fjall 3 enforces no bound on its write buffer (its `max_write_buffer_size` is
    /// stored, never read): this is the bound. It counts every memtable the tree still
    /// holds, not only fjall's write buffer counter: a flushed memtable leaves that
    /// counter at once but stays in memory while an older version of the tree refers to
    /// it, until the next flush or seal collects the versions no snapshot needs (in the
    /// soak benchmark the memtables held were up to 2.3 times the counter). A memtable is
    /// sealed here before the batch would take it past its size, so fjall's own rotation
    /// after the commit (which a worker thread does, later) is not needed. A writer waits
    /// for room only while a flush is under way: without one, nothing would collect the
    /// versions that hold the rest, and the next seal will.
    fn make_room(&self, need: u64) -> Result<()> {
        // The bound this open gives memtables; the one stored with the keyspace may differ
        // (a store created with another buffer), and fjall does not show it. A smaller
        // one makes fjall ask a worker to seal after the commit, which `would_stall`
        // accounts for.
        let max_memtable = self.write_buffer / MEMTABLES;
        loop {
            let memtable = self.keyspace.tree.active_memtable().size();
            let held = self.keyspace.tree.version_memtable_size_sum();
            // A batch larger than the whole buffer goes in alone, once the rest is out.
            let over_buffer = held > 0 && held + need > self.write_buffer;
            if memtable > 0 && (memtable + need > max_memtable || over_buffer) {
                // Queued for the flush workers (not while poisoned: their queue is bounded,
                // and no worker may be left to drain it).
                self.check_alive("seal")?;
                self.keyspace
                    .rotate_memtable()
                    .map_err(|e| self.error("seal", e))?;
                continue;
            }
            let flushing = self.keyspace.tree.sealed_memtable_count() > 0;
            let wait = (over_buffer && flushing) || self.would_stall();
            if !wait {
                return Ok(());
            }
            self.check_alive("commit")?;
            std::thread::sleep(HALT_POLL);
        }
    }

    /// Whether fjall would stall or halt a writer after its next batch: with
    /// [`SEALED_HALT`] sealed memtables waiting (one more may be sealed by a worker
    /// meanwhile), or level 0 near [`L0_STALL`] runs (each sealed memtable becomes one).
    /// Both clear as background work completes, and neither does once that work fails.
    fn would_stall(&self) -> bool {
        let sealed = self.keyspace.tree.sealed_memtable_count();
        sealed + 1 >= SEALED_HALT || self.keyspace.tree.l0_run_count() + sealed + 1 >= L0_STALL
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes raw bytes under `key`, bypassing every check: for tests that corrupt data.
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.len() > MAX_KEY_LEN {
            return Err(too_long("put_raw", key));
        }
        let _serial = self.write_lock.lock();
        let key = stored_key(key);
        self.write_guarded("put_raw", || {
            self.make_room(item_size(&key, value))?;
            let mut batch = self.db.batch();
            batch.insert(&self.keyspace, key, value);
            self.commit("put_raw", batch)
        })?;
        self.unsynced.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Seals the memtable and waits until it is written as a table: for tests that need
    /// data in tables and blob files, not only in the journal and memtable. (It uses
    /// fjall's test hook `rotate_memtable`, hidden from fjall's docs; the flush worker
    /// takes the sealed memtable out of the tree as it adds the table, so this polls
    /// for that.)
    #[doc(hidden)]
    pub fn seal_memtable(&self) -> Result<()> {
        if !self
            .keyspace
            .rotate_memtable()
            .map_err(Error::at("seal_memtable"))?
        {
            return Ok(());
        }
        let start = std::time::Instant::now();
        while self.keyspace.tree.sealed_memtable_count() > 0 {
            // A failed flush poisons the database and leaves the memtable sealed.
            if start.elapsed() > Duration::from_secs(10) {
                return Err(Error::backend(
                    "seal_memtable",
                    std::io::Error::other("the sealed memtable was not flushed within 10 s"),
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// A mark of fjall's background work when its threads have nothing left to write:
    /// no sealed memtable waits for a flush, no flush is queued, no compaction runs, one
    /// journal is left, and the write buffer is under a quarter of its least size, far
    /// from where the write path seals a memtable (half of it). `None` otherwise.
    ///
    /// A copy of the directory taken between two commits, with the same mark before and
    /// after it, is what a crash of this process would leave: for tests that reopen such
    /// a copy instead of waiting for a close. The mark (the compactions fjall has run)
    /// is needed because a compaction may be queued but not yet started when the copy
    /// begins: fjall queues one after each flush, and lsm-tree's leveled strategy then
    /// moves a lone level-0 table down a level, which writes a new version file and
    /// `current` during the copy (a copy once held a `current` naming a version file it
    /// did not have). A caller must also keep the store from sealing a memtable by
    /// itself, by writing too little for that.
    #[doc(hidden)]
    pub fn quiescence(&self) -> Option<usize> {
        let completed = self.db.compactions_completed();
        let idle = self.keyspace.tree.sealed_memtable_count() == 0
            && self.db.outstanding_flushes() == 0
            && self.db.active_compactions() == 0
            && self.db.journal_count() == 1
            && self.db.write_buffer_size() < MIN_WRITE_BUFFER / 4;
        // A compaction that ran between the first read and the checks moved the mark.
        (idle && self.db.compactions_completed() == completed).then_some(completed)
    }

    /// A snapshot at the last batch committed in full.
    ///
    /// fjall's snapshot alone is not that. Its visible sequence number is raised past a
    /// batch that is still going into the memtable whenever a flush or compaction
    /// installs a new version of the tree meanwhile (`upgrade_version_with_seqno` in
    /// lsm-tree takes the next number of the same counter and makes everything below it
    /// visible); a reader then saw three keys of a four-key batch. So a snapshot that may
    /// hold the batch in flight waits for it to be in: that batch's number is at least
    /// the counter before it ([`FjallKv::in_flight`]), and a snapshot below that cannot
    /// see it. A batch started after the snapshot was taken has a number at or above the
    /// snapshot's (the counter is never below the visible number) and is not waited for.
    /// The wait is a commit into the memtable, microseconds: `make_room` keeps fjall's
    /// stalls out of it.
    fn snapshot(&self) -> Snapshot {
        let snapshot = self.db.snapshot();
        let seen = snapshot.seqno();
        let mut spins = 0u32;
        loop {
            let floor = self.in_flight.load(Ordering::SeqCst);
            if floor == 0 || floor > seen {
                return snapshot;
            }
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            spins += 1;
        }
    }

    /// Commits `batch`, marked in flight for [`FjallKv::snapshot`] while it goes in
    /// (cleared even if fjall panics). Called under the write lock.
    fn commit(&self, op: &'static str, batch: OwnedWriteBatch) -> Result<()> {
        struct Landed<'a>(&'a AtomicU64);
        impl Drop for Landed<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::SeqCst);
            }
        }
        self.in_flight
            .store(self.db.seqno().saturating_add(1), Ordering::SeqCst);
        let _landed = Landed(&self.in_flight);
        batch.commit().map_err(|e| self.error(op, e))
    }

    /// Runs a write into fjall, unless this store is broken, with a panic caught: fjall's
    /// write path panics on some damaged state, and a batch may then be half in the
    /// memtable, so a panic breaks the store for writes (reported as [`Error::Corrupt`],
    /// later writes as [`Error::Poisoned`]).
    fn write_guarded(&self, op: &'static str, write: impl FnOnce() -> Result<()>) -> Result<()> {
        if let Some(cause) = self.broken.get() {
            return Err(Error::Poisoned {
                cause: cause.clone(),
                disk_full: disk_nearly_full(&self.path),
            });
        }
        match catch_unwind(AssertUnwindSafe(write)) {
            Ok(result) => result,
            Err(panic) => {
                let err = panicked(op, &self.path, &*panic);
                let _ = self.broken.set(err.to_string());
                Err(err)
            }
        }
    }

    /// Runs a read of the latest state (under the write lock, so no batch is half
    /// applied) with a panic caught.
    fn read_latest<T>(
        &self,
        op: &'static str,
        read: impl FnOnce(&Keyspace) -> fjall::Result<T>,
    ) -> Result<T> {
        match catch_unwind(AssertUnwindSafe(|| read(&self.keyspace))) {
            Ok(result) => result.map_err(|e| self.error(op, e)),
            Err(panic) => Err(panicked(op, &self.path, &*panic)),
        }
    }
}

/// Refuses a store in fjall 2's format (shoal before 0.2 kept its stores in it), with a
/// clear error instead of fjall's bare `InvalidVersion`. fjall 2 wrote `FJL` and the
/// version 2 into the `version` file, and kept its trees under `partitions/`.
fn refuse_fjall2(path: &Path) -> Result<()> {
    let header = std::fs::read(path.join("version")).unwrap_or_default();
    let v2 = header.get(..4) == Some(&b"FJL\x02"[..])
        || (header.is_empty() && path.join("partitions").is_dir());
    if v2 {
        return Err(Error::UnsupportedFormat {
            what: format!(
                "the fjall files in {} (made by shoal 0.1 on fjall 2; export each actor \
                 with that release's `shoal export` and import it here)",
                path.display()
            ),
            found: 2,
            supported: 3,
        });
    }
    Ok(())
}

/// Our error for fjall's `e` during `op` on the store at `path`: a full disk is
/// [`Error::Full`], a poisoned database [`Error::Full`] or [`Error::Poisoned`] (see the
/// module docs), data fjall cannot decode [`Error::Corrupt`].
fn engine_error(op: &'static str, path: &Path, e: impl Into<fjall::Error>) -> Error {
    use fjall::LsmError;
    let e = e.into();
    if op == "open"
        && let Some(err) = no_access(path, &e)
    {
        return err;
    }
    if let fjall::Error::Poisoned = e {
        return if disk_nearly_full(path) {
            Error::Full {
                op,
                path: path.to_path_buf(),
                cause: "fjall stopped taking writes after one failed for lack of space".into(),
            }
        } else {
            Error::Poisoned {
                cause: format!(
                    "fjall stopped taking writes after a failed write or background flush \
                     in {} (its error went to its log)",
                    path.display()
                ),
                disk_full: false,
            }
        };
    }
    if let Some(cause) = out_of_space(&e) {
        return Error::Full {
            op,
            path: path.to_path_buf(),
            cause,
        };
    }
    let damaged = match &e {
        fjall::Error::JournalRecovery(_)
        | fjall::Error::InvalidVersion(_)
        | fjall::Error::Decompress(_)
        | fjall::Error::InvalidTrailer
        | fjall::Error::InvalidTag(_)
        | fjall::Error::Unrecoverable
        | fjall::Error::Storage(
            LsmError::Decompress(_)
            | LsmError::InvalidVersion(_)
            | LsmError::Unrecoverable
            | LsmError::ChecksumMismatch { .. }
            | LsmError::InvalidTag(_)
            | LsmError::InvalidTrailer
            | LsmError::InvalidHeader(_)
            | LsmError::Utf8(_),
        ) => true,
        // A file shorter than its index says, or bytes that do not parse.
        other => crate::error::io_errors(other).any(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            )
        }),
    };
    if damaged {
        return Error::Corrupt {
            what: format!("the fjall files in {}", path.display()),
            reason: format!("{op}: {e}"),
        };
    }
    Error::backend(op, e)
}

/// [`Error::NoAccess`] if `err` says access to the store's files was refused.
fn no_access(path: &Path, err: &(dyn std::error::Error + 'static)) -> Option<Error> {
    crate::error::access_denied(err).map(|cause| Error::NoAccess {
        engine: "fjall",
        path: path.to_path_buf(),
        cause,
        why: "3 has no read-only mode: every open replays its journal and reopens it \
              for appending, and takes a write lock",
    })
}

/// The error for a panic inside fjall during `op`: it panics on some damaged data.
fn panicked(op: &'static str, path: &Path, panic: &(dyn std::any::Any + Send)) -> Error {
    Error::Corrupt {
        what: format!("the fjall files in {}", path.display()),
        reason: format!("fjall panicked during {op}: {}", panic_message(panic)),
    }
}

/// Whether the file system holding `path` has less than [`FULL_MARGIN`] bytes left for
/// unprivileged writers (`false` if that cannot be told).
#[cfg(unix)]
fn disk_nearly_full(path: &Path) -> bool {
    rustix::fs::statvfs(path).is_ok_and(|st| st.f_bavail.saturating_mul(st.f_frsize) < FULL_MARGIN)
}

#[cfg(not(unix))]
fn disk_nearly_full(_path: &Path) -> bool {
    false
}

/// A scan read page by page from one snapshot, holding no fjall iterator (and so none of
/// its locks) between pages.
struct PagedScan {
    snapshot: Snapshot,
    keyspace: Keyspace,
    /// The store's directory, for errors.
    path: PathBuf,
    /// Where the next page starts.
    next: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
}

impl PagedScan {
    /// The next page, and whether more may follow.
    fn fill(&mut self) -> Result<(Vec<Entry>, bool)> {
        let path = self.path.clone();
        match catch_unwind(AssertUnwindSafe(|| self.fill_page())) {
            Ok(filled) => filled,
            Err(panic) => Err(panicked("scan", &path, &*panic)),
        }
    }

    fn fill_page(&mut self) -> Result<(Vec<Entry>, bool)> {
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        let mut more = false;
        let range = (self.next.clone(), self.end.clone());
        for item in self.snapshot.range::<Vec<u8>, _>(&self.keyspace, range) {
            let (k, v) = item
                .into_inner()
                .map_err(|e| engine_error("scan", &self.path, e))?;
            bytes += k.len() + v.len();
            page.push((user_key(&k)?, to_bytes(v)));
            last = Some(k);
            if page.len() >= SCAN_PAGE_ENTRIES || bytes >= SCAN_PAGE_BYTES {
                more = true;
                break;
            }
        }
        if let Some(k) = last {
            self.next = Bound::Excluded(k.to_vec());
        }
        Ok((page, more))
    }
}

impl KvStore for FjallKv {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        if key.len() > MAX_KEY_LEN {
            return Ok(None);
        }
        let got = catch_unwind(AssertUnwindSafe(|| {
            self.snapshot().get(&self.keyspace, stored_key(key))
        }));
        match got {
            Ok(value) => Ok(value.map_err(|e| self.error("get", e))?.map(to_bytes)),
            Err(panic) => Err(panicked("get", &self.path, &*panic)),
        }
    }

    fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        let Some((start, end)) = stored_bounds(&range) else {
            return Ok(Box::new(std::iter::empty()));
        };
        let mut scan = PagedScan {
            snapshot: self.snapshot(),
            keyspace: self.keyspace.clone(),
            path: self.path.clone(),
            next: start,
            end,
        };
        Ok(Box::new(Paged::new(move || scan.fill())))
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let _serial = self.write_lock.lock();
        batch.check_limits()?;
        batch.check_preconditions(|key| {
            if key.len() > MAX_KEY_LEN {
                return Ok(None);
            }
            let current = self.read_latest("precondition", |ks| ks.get(stored_key(key)))?;
            Ok(current.map(|v| Bytes::copy_from_slice(&v)))
        })?;
        // Ops are folded in order into one write per key; fjall has no range delete, so
        // one becomes removes of the keys that exist. Under the write lock nothing is half
        // committed, so the latest state is read directly (keys only: no blob is read);
        // each iterator ends in the call.
        let writes = fold_ops(batch.ops, |range| {
            let Some(bounds) = stored_bounds(range) else {
                return Ok(Vec::new());
            };
            self.read_latest("delete_range", |ks| {
                Ok(ks
                    .range::<Vec<u8>, _>(bounds)
                    .map(|item| {
                        item.key()
                            .map_err(|e| self.error("delete_range", e))
                            .and_then(|key| user_key(&key))
                    })
                    .collect())
            })?
        })?;
        // Checked before any item is built: fjall panics on these.
        for (k, v) in &writes {
            if k.len() > MAX_KEY_LEN {
                return Err(too_long("apply", k));
            }
            if v.as_ref().is_some_and(|v| u32::try_from(v.len()).is_err()) {
                return Err(Error::backend(
                    "apply",
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the value of {} exceeds 4 GiB", keys::describe(k)),
                    ),
                ));
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        let mut fjall_batch = self.db.batch();
        let mut need = 0;
        for (k, v) in writes {
            let key = stored_key(&k);
            match v {
                Some(v) => {
                    need += item_size(&key, &v);
                    fjall_batch.insert(&self.keyspace, key, &v[..]);
                }
                None => {
                    need += item_size(&key, &[]);
                    fjall_batch.remove(&self.keyspace, key);
                }
            }
        }
        self.write_guarded("commit", || {
            self.make_room(need)?;
            self.commit("commit", fjall_batch)
        })?;
        self.unsynced.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn compact(&self) -> Result<()> {
        self.keyspace
            .rotate_memtable_and_wait()
            .and_then(|()| self.keyspace.major_compact())
            .map_err(|e| self.error("compact", e))
    }

    fn flush(&self) -> Result<()> {
        // fjall fsyncs even with nothing new; sled returns at once. Cleared before the
        // sync, so a commit racing with it sets the flag again and the next flush syncs
        // once more; a commit that returned before this call is covered.
        if !self.unsynced.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.db
            .persist(PersistMode::SyncAll)
            .inspect_err(|_| self.unsynced.store(true, Ordering::SeqCst))
            .map_err(|e| self.error("flush", e))
    }

    fn stats(&self) -> Result<KvStats> {
        let mut keys = 0u64;
        let mut logical_bytes = 0u64;
        for entry in self.scan(KeyRange::prefix(&[]))? {
            let (k, v) = entry?;
            keys += 1;
            logical_bytes += (k.len() + v.len()) as u64;
        }
        Ok(KvStats {
            keys,
            logical_bytes,
            // Tables, blob files and journals by file length.
            disk_bytes: self.db.disk_space().map_err(|e| self.error("stats", e))?,
            cache_capacity: self.cache_capacity,
            garbage_bytes: self.keyspace.fragmented_blob_bytes(),
        })
    }
}

impl Drop for FjallKv {
    fn drop(&mut self) {
        // Stop the timer first, so nothing syncs behind this last one.
        drop(self.timer.take());
        let _ = self.db.persist(PersistMode::SyncAll);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::mem::MemKv;

    fn open(dir: &Path) -> FjallKv {
        FjallKv::open(&FjallConfig {
            cache_capacity: 1 << 20,
            write_buffer: 1 << 20,
            flush_every_ms: None,
            ..FjallConfig::new(dir)
        })
        .unwrap()
    }

    fn put(kv: &dyn KvStore, key: &[u8], value: &[u8]) -> Result<()> {
        let mut b = Batch::new();
        b.put(key.to_vec(), value.to_vec());
        kv.apply(b)
    }

    fn all(kv: &dyn KvStore, range: KeyRange) -> Vec<Entry> {
        kv.scan(range).unwrap().collect::<Result<_>>().unwrap()
    }

    /// Keys fjall cannot hold give errors (or nothing) instead of its panics, and scan
    /// bounds longer than any storable key select what they select in the model.
    #[test]
    fn over_long_keys_are_refused_and_long_bounds_cut() {
        let dir = tempfile::tempdir().unwrap();
        let kv = open(dir.path());
        let model = MemKv::new();
        // The longest key any backend stores (FoundationDB's limit, below fjall's).
        let longest = vec![b'a'; crate::store::MAX_KEY_LEN];
        let too_long = vec![b'a'; MAX_KEY_LEN + 1];
        for backend in [&kv as &dyn KvStore, &model] {
            put(backend, &longest, b"1").unwrap();
            put(backend, b"b", b"2").unwrap();
            put(backend, b"", b"empty key").unwrap();
        }
        // Past every backend's key limit first (FoundationDB's 10 KB).
        assert!(matches!(
            put(&kv, &too_long, b"x"),
            Err(Error::LimitExceeded { .. })
        ));
        assert!(kv.put_raw(&too_long, b"x").is_err());
        assert_eq!(kv.get(&too_long).unwrap(), None);
        assert_eq!(kv.get(&longest).unwrap().unwrap(), &b"1"[..]);
        let mut guarded = Batch::new();
        guarded
            .put(&b"c"[..], &b"3"[..])
            .guard(too_long.clone(), None);
        assert!(matches!(
            kv.apply(guarded),
            Err(Error::LimitExceeded { .. })
        ));
        for backend in [&kv as &dyn KvStore, &model] {
            put(backend, b"c", b"3").unwrap();
        }

        let ranges = [
            (too_long.clone(), Vec::new()),
            (Vec::new(), too_long.clone()),
            (longest.clone(), too_long.clone()),
            (too_long.clone(), b"b".to_vec()),
            (too_long.clone(), b"c".to_vec()),
            (vec![b'a'; MAX_KEY_LEN + 5], vec![b'a'; MAX_KEY_LEN + 9]),
        ];
        for (start, end) in ranges {
            let range = KeyRange { start, end };
            assert_eq!(
                all(&kv, range.clone()),
                all(&model, range.clone()),
                "{} .. {} bytes",
                range.start.len(),
                range.end.len()
            );
            // A range delete's bounds are keys: past the limit both refuse it alike.
            let long = range.start.len().max(range.end.len()) > crate::store::MAX_KEY_LEN;
            for backend in [&kv as &dyn KvStore, &model] {
                match backend.delete_range(range.clone()) {
                    Err(Error::LimitExceeded { .. }) if long => {}
                    other => other.unwrap(),
                }
            }
            assert_eq!(
                all(&kv, KeyRange::prefix(&[])),
                all(&model, KeyRange::prefix(&[]))
            );
            for (k, v) in model.snapshot() {
                put(&kv, &k, &v).unwrap();
            }
        }
    }

    /// Two gets of one value hand out the same buffer: fjall's, shared, not a copy per
    /// read. Checked while the value is in the memtable and after it was flushed to a
    /// table (the value in a blob file) and read back through the cache.
    #[test]
    fn gets_share_the_backend_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let kv = open(dir.path());
        let page = vec![7u8; 4096];
        put(&kv, b"page", &page).unwrap();
        let (a, b) = (
            kv.get(b"page").unwrap().unwrap(),
            kv.get(b"page").unwrap().unwrap(),
        );
        assert_eq!(a, page);
        assert_eq!(a.as_ptr(), b.as_ptr(), "memtable read copied");
        drop(kv);

        let kv = open(dir.path());
        // Reopening replays the journal into a memtable; push it into a table.
        kv.seal_memtable().unwrap();
        assert!(kv.keyspace.table_count() > 0);
        let (a, b) = (
            kv.get(b"page").unwrap().unwrap(),
            kv.get(b"page").unwrap().unwrap(),
        );
        assert_eq!(a, page);
        assert_eq!(a.as_ptr(), b.as_ptr(), "block-cache read copied");
    }

    /// A scan left open while the same thread writes enough to rotate memtables keeps
    /// showing the store as it was when the scan began, across its pages.
    #[test]
    fn an_open_scan_does_not_see_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let kv = open(dir.path());
        let value = vec![1u8; 4096];
        let count = 3 * SCAN_PAGE_ENTRIES as u32;
        for first in (0..count).step_by(64) {
            let mut b = Batch::new();
            for i in first..first + 64 {
                b.put(i.to_be_bytes().to_vec(), value.clone());
            }
            kv.apply(b).unwrap();
        }
        let mut scan = kv.scan(KeyRange::prefix(&[])).unwrap();
        let first = scan.next().unwrap().unwrap();
        // 4 MiB of overwrites and new keys: past the 256 KiB memtable many times.
        let newer = vec![2u8; 4096];
        for i in 0..512u32 {
            let mut b = Batch::new();
            b.put(i.to_be_bytes().to_vec(), newer.clone());
            b.put((count + i).to_be_bytes().to_vec(), newer.clone());
            kv.apply(b).unwrap();
        }
        let rest: Vec<Entry> = scan.collect::<Result<_>>().unwrap();
        assert_eq!(first.0, &0u32.to_be_bytes()[..]);
        assert_eq!(rest.len() + 1, count as usize);
        assert!(
            rest.iter().all(|(_, v)| v == &value),
            "the scan saw later writes"
        );
        assert_eq!(kv.stats().unwrap().keys, u64::from(count) + 512);
    }

    /// Readers never see part of a batch: each batch sets four keys to one number, and a
    /// reader scanning them must always find them equal, while memtables are sealed and
    /// flushed all along (each flush installs a new version of the tree, which made
    /// fjall's own snapshots show part of a batch in flight: see `FjallKv::snapshot`).
    #[test]
    fn readers_never_see_part_of_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let kv = std::sync::Arc::new(open(dir.path()));
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let writer = {
            let kv = std::sync::Arc::clone(&kv);
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                for n in 0..3000u32 {
                    let mut b = Batch::new();
                    // Pages: each batch takes longer to go in (the journal compresses
                    // them), and memtables fill and flush.
                    for key in [&b"a"[..], b"b", b"c", b"d"] {
                        b.put(key, n.to_be_bytes().repeat(1024));
                    }
                    kv.apply(b).unwrap();
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let sealer = {
            let kv = std::sync::Arc::clone(&kv);
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    kv.seal_memtable().unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let seen = all(kv.as_ref(), KeyRange::prefix(&[]));
            if let Some((_, v)) = seen.first() {
                let numbers: Vec<_> = seen
                    .iter()
                    .map(|(k, w)| (k.clone(), w.slice(..4)))
                    .collect();
                assert!(
                    seen.iter().all(|(_, w)| w == v),
                    "a torn batch: {numbers:?}"
                );
            }
            reads += 1;
        }
        writer.join().unwrap();
        sealer.join().unwrap();
    }
}
