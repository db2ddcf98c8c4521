//! `FjallKv`: fjall 2.x (an LSM-tree) behind the [`KvStore`] trait, the default backend
//! because its memory stays near its configured cache (docs/BENCHMARKS.md, "Memory").
//!
//! It owns everything fjall-specific: no fjall type crosses this module's boundary. The
//! invariants it keeps for the trait's contract:
//! - a batch is one fjall batch, atomic after a crash; reads go through a snapshot of the
//!   last published batch, so a reader never sees part of one;
//! - [`KvStore::flush`] fsyncs the journal (and returns at once when nothing was committed
//!   since the last flush); a failed write or fsync poisons the keyspace for good;
//! - a writer waits for memtable room before it commits, never inside fjall's own stall
//!   loop, so a full disk is [`Error::Full`] or [`Error::Poisoned`], not a hang;
//! - damaged files are [`Error::Corrupt`], never a panic that aborts (see `preflight`);
//! - one keyspace per directory, held by an exclusive lock on [`LOCK_FILE`];
//! - a [`scan`] reads pages of at most [`SCAN_PAGE_ENTRIES`] entries and holds no fjall
//!   iterator between them;
//! - every key is stored behind [`USER_PREFIX`], and keys fjall cannot store are refused
//!   with an error;
//! - a value read is fjall's buffer, shared as [`Bytes`] without a copy.
//!
//! Why each of these holds, as read in the fjall 2.11.2 and lsm-tree 2.10.4 sources and
//! measured, is in docs/design.md ("What `FjallKv` relies on in fjall").
//!
//! [`scan`]: KvStore::scan

use std::fs::{File, TryLockError};
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode, Slice, Snapshot};
use parking_lot::Mutex;

use crate::error::{Error, Result, out_of_space, panic_message};
use crate::keys::{self, KeyRange};
use crate::store::{Batch, Entry, KvStats, KvStore, Scan, fold_ops};

/// The file in the store's directory that [`FjallKv`] locks while it is open.
const LOCK_FILE: &str = "shoal.lock";

/// How long [`FjallKv::open`] waits for a lock held elsewhere.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// The one partition every key lives in.
const PARTITION: &str = "kv";

/// First byte of every stored key (the caller's key follows it).
const USER_PREFIX: u8 = 0x00;

/// The longest key fjall stores, less the prefix byte.
const MAX_KEY_LEN: usize = u16::MAX as usize - 1;

/// fjall refuses (with a panic) a write buffer under 1 MiB.
const MIN_WRITE_BUFFER: u64 = 1 << 20;

/// fjall's journal bound (`Config::max_journaling_size`, its default, set explicitly
/// because [`FjallKv::make_room`] waits on it too).
const MAX_JOURNALING: u64 = 512 << 20;

/// fjall halts writers while level 0 has this many runs (`check_write_halt`).
const L0_HALT: usize = 32;

/// How long [`FjallKv::make_room`] sleeps between looks at the write buffer.
const HALT_POLL: Duration = Duration::from_millis(1);

/// Free space under which a poisoned keyspace is reported as a full disk.
const FULL_MARGIN: u64 = 1 << 20;

/// Bytes fjall counts for one item in its write buffer: its key and value, a sequence
/// number and a value type (`InternalValue::size` in lsm-tree).
fn item_size(stored_key: &[u8], value: &[u8]) -> u64 {
    (stored_key.len() + value.len() + 9) as u64
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
    /// Bytes of fjall's block cache (part of the process memory budget).
    pub cache_capacity: u64,
    /// Bytes all memtables may hold together before writers stall (part of the budget);
    /// at least 1 MiB (smaller values are raised to it).
    pub write_buffer: u64,
    /// Interval of fjall's background fsync of the journal; `None` (or `Some(0)`) syncs
    /// only when asked. Relaxed durability relies on it, like sled's timer.
    pub flush_every_ms: Option<u16>,
    /// lz4-compress blocks (fjall's default, kept). It costs CPU in flushes and
    /// compactions (13% of all samples in a profile of the mixed benchmark on two cores)
    /// but turning it off bought only 3 to 5% there, for about twice the disk (SQLite
    /// pages of text compress well). Fixed when the store is created.
    pub compress: bool,
}

impl FjallConfig {
    /// Defaults for `path`: a 16 MiB block cache, an 8 MiB write buffer and a 500 ms
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

/// The fjall backend.
pub struct FjallKv {
    // Field order is drop order: the keyspace (and its threads) go before the lock.
    partition: PartitionHandle,
    keyspace: Keyspace,
    /// Held across precondition check and commit so no other batch slips between them.
    write_lock: Mutex<()>,
    /// Set after every commit, cleared by the flush that covers it.
    unsynced: AtomicBool,
    /// The write buffer's cap, enforced by [`FjallKv::make_room`].
    write_buffer: u64,
    /// Why this store stopped taking writes, when fjall would not know (a memtable this
    /// module sealed that fjall could not queue for its flush).
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

fn to_bytes(v: Slice) -> Bytes {
    Bytes::from_owner(v)
}

impl FjallKv {
    /// Opens (or creates) the store described by `config`.
    ///
    /// Fails with [`Error::StoreLocked`] while the directory is open in another
    /// [`FjallKv`], in this process or another.
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
        let write_buffer = config.write_buffer.max(MIN_WRITE_BUFFER);
        let memtable = u32::try_from(write_buffer / 2).unwrap_or(u32::MAX);
        let options = PartitionCreateOptions::default()
            .max_memtable_size(memtable)
            .compression(if config.compress {
                fjall::CompressionType::Lz4
            } else {
                fjall::CompressionType::None
            });
        preflight(path)?;
        // fjall panics on some damaged files; its recovery runs here.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let keyspace = fjall::Config::new(path)
                .cache_size(config.cache_capacity)
                // Off: `make_room` enforces the cap (see the module docs).
                .max_write_buffer_size(u64::MAX)
                .max_journaling_size(MAX_JOURNALING)
                .fsync_ms(config.flush_every_ms.filter(|&ms| ms > 0))
                .open()?;
            let partition = keyspace.open_partition(PARTITION, options)?;
            // A damaged level manifest can recover a tree with no levels at all, on
            // which the write path panics ("first level should always exist"): found
            // here rather than at the first write.
            use fjall::AbstractTree;
            partition.tree.l0_run_count();
            fjall::Result::Ok((keyspace, partition))
        }));
        let (keyspace, partition) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => return Err(engine_error("open", path, e)),
            Err(panic) => return Err(panicked("open", path, &*panic)),
        };
        Ok(FjallKv {
            partition,
            keyspace,
            write_lock: Mutex::new(()),
            // A journal replayed at open may not have been synced before the crash.
            unsynced: AtomicBool::new(true),
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

    /// Fails if the keyspace is poisoned (fjall answers a buffer-only persist with
    /// `Poisoned` then, and otherwise writes nothing: every commit has flushed its
    /// buffer already) or this module found the store broken.
    fn check_alive(&self, op: &'static str) -> Result<()> {
        if let Some(cause) = self.broken.get() {
            return Err(Error::Poisoned {
                cause: cause.clone(),
                disk_full: disk_nearly_full(&self.path),
            });
        }
        self.keyspace
            .persist(PersistMode::Buffer)
            .map_err(|e| self.error(op, e))
    }

    /// Holds back a batch of `need` bytes (as fjall counts them) until fjall can take it
    /// without halting in `commit`, and fails instead of waiting once fjall can no longer
    /// make room (see the module docs). Called under the write lock, so nothing but this
    /// batch adds to the buffer meanwhile; fjall's flushes only take from it.
    fn make_room(&self, need: u64) -> Result<()> {
        use fjall::AbstractTree;
        // The bound this open gives memtables; the one stored with the partition may be
        // larger (a store created with a larger buffer), and fjall does not show it.
        let max_memtable = self.write_buffer / 2;
        loop {
            let memtable = u64::from(self.partition.tree.active_memtable_size());
            let used = self.keyspace.write_buffer_size();
            // A batch larger than the whole buffer goes in alone, once the rest is out.
            let over_buffer = used > 0 && used + need > self.write_buffer;
            if memtable > 0 && (memtable + need > max_memtable || over_buffer) {
                // Sealed here, not in `commit` (see the module docs).
                if let Err(e) = self.partition.rotate_memtable() {
                    // fjall's own callers poison the keyspace here: the memtable may be
                    // out of the tree's active slot without a flush queued for it.
                    let err = self.error("seal", e);
                    let _ = self.broken.set(err.to_string());
                    return Err(err);
                }
                continue;
            }
            if !over_buffer {
                // fjall may still seal in `commit` (the partition's stored bound can be
                // smaller than this open's) and then check its other halts: they must
                // not be due.
                return self.wait_for_flushes_and_compactions();
            }
            self.check_alive("commit")?;
            std::thread::sleep(HALT_POLL);
        }
    }

    /// Waits while fjall would halt a writer after a seal: journals over their bound,
    /// level 0 with [`L0_HALT`] runs. Both clear as background work completes. The
    /// journals' size costs a `stat`, so it is looked at only once there are 8 of them:
    /// fjall preallocates each to 32 MiB and a journal is sealed with its memtable, far
    /// below 64 MiB, so fewer stay under the bound.
    fn wait_for_flushes_and_compactions(&self) -> Result<()> {
        use fjall::AbstractTree;
        let journals_over = || {
            self.keyspace.journal_count() as u64 >= MAX_JOURNALING / (64 << 20)
                && self.keyspace.journal_disk_space() > MAX_JOURNALING
        };
        while self.partition.tree.l0_run_count() >= L0_HALT || journals_over() {
            self.check_alive("commit")?;
            std::thread::sleep(HALT_POLL);
        }
        Ok(())
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
            self.partition
                .insert(key, value)
                .map_err(|e| self.error("put_raw", e))
        })?;
        self.unsynced.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Seals the memtable and waits until it is written as a segment: for tests that need
    /// data in segments, not only in the journal and memtable. (It uses fjall's test hook
    /// `rotate_memtable`, hidden from fjall's docs. fjall's `rotate_memtable_and_wait`
    /// polls every 10 ms, which made that the cost of most `kv_ops` fuzz inputs; the flush
    /// worker takes the sealed memtable out of the tree as it adds the segment, so this
    /// polls for that, more often.)
    #[doc(hidden)]
    pub fn seal_memtable(&self) -> Result<()> {
        use fjall::AbstractTree;
        if !self
            .partition
            .rotate_memtable()
            .map_err(Error::at("seal_memtable"))?
        {
            return Ok(());
        }
        let start = std::time::Instant::now();
        while self.partition.tree.sealed_memtable_count() > 0 {
            // A failed flush poisons the keyspace and leaves the memtable sealed.
            if start.elapsed() > std::time::Duration::from_secs(10) {
                return Err(Error::backend(
                    "seal_memtable",
                    std::io::Error::other("the sealed memtable was not flushed within 10 s"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Ok(())
    }

    /// Whether fjall's background threads have nothing left to write: no sealed memtable
    /// waits for a flush, the journals of flushed ones are deleted (one journal left), and
    /// the write buffer is under a quarter of its least size, far from where the write
    /// path or the monitor thread seals a memtable (half of it). A copy of the directory
    /// taken then, between two commits, is what a crash of this process would leave: for
    /// tests that reopen such a copy instead of waiting for a close. It cannot see a
    /// compaction, which fjall starts once 4 segments are waiting in level 0: a caller
    /// relies on it only while the store has been sealed fewer than 4 times and has taken
    /// in too little to have sealed a memtable by itself.
    #[doc(hidden)]
    pub fn is_quiescent(&self) -> bool {
        use fjall::AbstractTree;
        self.partition.tree.sealed_memtable_count() == 0
            && self.keyspace.journal_count() == 1
            && self.keyspace.write_buffer_size() < MIN_WRITE_BUFFER / 4
    }

    /// A snapshot at the last batch committed in full.
    fn snapshot(&self) -> Snapshot {
        self.partition.snapshot_at(self.keyspace.instant())
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

    /// Runs a read of the latest state (under the write lock) with a panic caught.
    fn read_latest<T>(
        &self,
        op: &'static str,
        read: impl FnOnce(&PartitionHandle) -> fjall::Result<T>,
    ) -> Result<T> {
        match catch_unwind(AssertUnwindSafe(|| read(&self.partition))) {
            Ok(result) => result.map_err(|e| self.error(op, e)),
            Err(panic) => Err(panicked(op, &self.path, &*panic)),
        }
    }
}

/// Our error for fjall's `e` during `op` on the store at `path`: a full disk is
/// [`Error::Full`], a poisoned keyspace [`Error::Full`] or [`Error::Poisoned`] (see the
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
                     in {} (its error went to its log or stderr)",
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
        fjall::Error::Decode(_)
        | fjall::Error::JournalRecovery(_)
        | fjall::Error::InvalidVersion(_)
        | fjall::Error::Storage(
            LsmError::Decode(_)
            | LsmError::Decompress(_)
            | LsmError::InvalidChecksum(_)
            | LsmError::InvalidVersion(_)
            | LsmError::Unrecoverable,
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

/// Reads the partition's files the way fjall's recovery will, with lsm-tree directly and
/// under `catch_unwind` (see the module docs): damaged files that would make fjall panic
/// with its partition lock held are reported as [`Error::Corrupt`] instead. A store
/// without the partition yet (new, or created only in part: fjall removes that) is left
/// to fjall. Opening the tree does what fjall's open does next anyway.
fn preflight(path: &Path) -> Result<()> {
    use lsm_tree::coding::Decode;
    let partition = path.join("partitions").join(PARTITION);
    if !partition.join("manifest").exists() {
        return Ok(());
    }
    let read = catch_unwind(|| -> fjall::Result<()> {
        let mut config = File::open(partition.join("config"))?;
        PartitionCreateOptions::decode_from(&mut config)?;
        let segments = partition.join(lsm_tree::file::SEGMENTS_FOLDER);
        for id in listed_segments(&partition.join(lsm_tree::file::LEVELS_MANIFEST_FILE)) {
            let segment = segments.join(id.to_string());
            // A listed segment that is missing is lsm-tree's to report.
            if segment.exists() {
                check_segment_sizes(&segment)?;
            }
        }
        let tree = lsm_tree::Config::new(&partition);
        if partition.join(lsm_tree::file::BLOBS_FOLDER).exists() {
            drop(tree.open_as_blob_tree()?);
        } else {
            drop(tree.open()?);
        }
        Ok(())
    });
    match read {
        Ok(result) => result.map_err(|e| engine_error("open", path, e)),
        Err(panic) => Err(panicked("open", path, &*panic)),
    }
}

/// The ids of the segments the tree's level manifest lists (`LevelManifest::
/// load_level_manifest`: magic, a level count, then per level a count and the ids, all
/// big-endian), as far as it parses: files it does not list are unfinished segments that
/// lsm-tree deletes unread, and a manifest that does not parse is lsm-tree's to report.
fn listed_segments(manifest: &Path) -> Vec<u64> {
    let Ok(bytes) = std::fs::read(manifest) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    let magic = lsm_tree::file::MAGIC_BYTES;
    let Some(rest) = bytes.strip_prefix(&magic[..]) else {
        return ids;
    };
    let Some((&levels, mut rest)) = rest.split_first() else {
        return ids;
    };
    for _ in 0..levels {
        let Some((count, after)) = rest.split_first_chunk::<4>() else {
            return ids;
        };
        rest = after;
        for _ in 0..u32::from_be_bytes(*count) {
            let Some((id, after)) = rest.split_first_chunk::<8>() else {
                return ids;
            };
            ids.push(u64::from_be_bytes(*id));
            rest = after;
        }
    }
    ids
}

/// Checks the sizes lsm-tree reads from a segment file when it opens it and then
/// allocates without a bound: a damaged one made it ask for 144 PB for a bloom filter,
/// and a failed allocation aborts the process. Each must fit in the file.
fn check_segment_sizes(path: &Path) -> fjall::Result<()> {
    use lsm_tree::coding::Decode;
    use lsm_tree::segment::block::header::Header;
    use lsm_tree::segment::trailer::SegmentFileTrailer;
    use std::io::{Read, Seek, SeekFrom};

    let too_large = |what: &str| {
        fjall::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "segment {}: its {what} is larger than the file",
                path.display()
            ),
        ))
    };
    let len = std::fs::metadata(path)?.len();
    let trailer = SegmentFileTrailer::from_file(path)?;
    if u64::from(trailer.metadata.index_block_count) > len {
        return Err(too_large("index block count"));
    }
    let mut file = File::open(path)?;
    if *trailer.offsets.tli_ptr > 0 {
        file.seek(SeekFrom::Start(*trailer.offsets.tli_ptr))?;
        let header = Header::decode_from(&mut file).map_err(lsm_tree::Error::from)?;
        if u64::from(header.data_length) > len {
            return Err(too_large("top-level index block"));
        }
    }
    if *trailer.offsets.bloom_ptr > 0 {
        // Magic, filter type and hash type, then the filter's bit count (big-endian).
        let mut head = [0u8; lsm_tree::file::MAGIC_BYTES.len() + 2 + 8];
        file.seek(SeekFrom::Start(*trailer.offsets.bloom_ptr))?;
        file.read_exact(&mut head)?;
        let bits = head
            .get(head.len() - 8..)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(u64::MAX, u64::from_be_bytes);
        if bits / 8 > len {
            return Err(too_large("bloom filter"));
        }
    }
    Ok(())
}

/// [`Error::NoAccess`] if `err` says access to the store's files was refused.
fn no_access(path: &Path, err: &(dyn std::error::Error + 'static)) -> Option<Error> {
    crate::error::access_denied(err).map(|cause| Error::NoAccess {
        engine: "fjall",
        path: path.to_path_buf(),
        cause,
        why: "2 has no read-only mode: every open replays its journal and reopens it \
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
    /// The store's directory, for errors.
    path: PathBuf,
    /// Where the next page starts.
    next: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    page: std::vec::IntoIter<Entry>,
    done: bool,
}

impl PagedScan {
    fn fill(&mut self) -> Result<()> {
        let path = self.path.clone();
        match catch_unwind(AssertUnwindSafe(|| self.fill_page())) {
            Ok(filled) => filled,
            Err(panic) => Err(panicked("scan", &path, &*panic)),
        }
    }

    fn fill_page(&mut self) -> Result<()> {
        let mut page = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        self.done = true;
        for item in self.snapshot.range((self.next.clone(), self.end.clone())) {
            let (k, v) = item.map_err(|e| engine_error("scan", &self.path, e))?;
            bytes += k.len() + v.len();
            page.push((user_key(&k)?, to_bytes(v)));
            last = Some(k);
            if page.len() >= SCAN_PAGE_ENTRIES || bytes >= SCAN_PAGE_BYTES {
                self.done = false;
                break;
            }
        }
        if let Some(k) = last {
            self.next = Bound::Excluded(k.to_vec());
        }
        self.page = page.into_iter();
        Ok(())
    }
}

impl Iterator for PagedScan {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Some(entry) = self.page.next() {
                return Some(Ok(entry));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

impl KvStore for FjallKv {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        if key.len() > MAX_KEY_LEN {
            return Ok(None);
        }
        let got = catch_unwind(AssertUnwindSafe(|| self.snapshot().get(stored_key(key))));
        match got {
            Ok(value) => Ok(value.map_err(|e| self.error("get", e))?.map(to_bytes)),
            Err(panic) => Err(panicked("get", &self.path, &*panic)),
        }
    }

    fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        let Some((start, end)) = stored_bounds(&range) else {
            return Ok(Box::new(std::iter::empty()));
        };
        Ok(Box::new(PagedScan {
            snapshot: self.snapshot(),
            path: self.path.clone(),
            next: start,
            end,
            page: Vec::new().into_iter(),
            done: false,
        }))
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let _serial = self.write_lock.lock();
        if let Some(pre) = &batch.precondition {
            let current = if pre.key.len() > MAX_KEY_LEN {
                None
            } else {
                self.read_latest("precondition", |p| p.get(stored_key(&pre.key)))?
            };
            pre.check(current.as_deref())?;
        }
        // Ops are folded in order into one write per key; fjall has no range delete, so
        // one becomes removes of the keys that exist. Under the write lock nothing is half
        // committed, so the latest state is read directly; each iterator ends in the call.
        let writes = fold_ops(batch.ops, |range| {
            let Some(bounds) = stored_bounds(range) else {
                return Ok(Vec::new());
            };
            self.read_latest("delete_range", |p| {
                Ok(p.range(bounds)
                    .map(|item| {
                        item.map_err(|e| self.error("delete_range", e))
                            .and_then(|(key, _)| user_key(&key))
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
        let mut fjall_batch = self.keyspace.batch();
        let mut need = 0;
        for (k, v) in writes {
            let key = stored_key(&k);
            match v {
                Some(v) => {
                    need += item_size(&key, &v);
                    fjall_batch.insert(&self.partition, key, &v[..]);
                }
                None => {
                    need += item_size(&key, &[]);
                    fjall_batch.remove(&self.partition, key);
                }
            }
        }
        self.write_guarded("commit", || {
            self.make_room(need)?;
            fjall_batch.commit().map_err(|e| self.error("commit", e))
        })?;
        self.unsynced.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        // fjall fsyncs even with nothing new (about 60 µs here); sled returns at once.
        // Cleared before the sync, so a commit racing with it sets the flag again and the
        // next flush syncs once more; a commit that returned before this call is covered.
        if !self.unsynced.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.keyspace
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
            // Segments plus journals by file length: a journal fjall created (at the first
            // open, or on a rotation) counts its 32 MiB preallocation, sparse on disk.
            disk_bytes: self.keyspace.disk_space(),
            cache_capacity: self.cache_capacity,
        })
    }
}

impl Drop for FjallKv {
    fn drop(&mut self) {
        // The journal's own drop syncs too, but only once the last handle to it goes, and
        // a background thread may hold that; syncing here leaves it nothing to write.
        let _ = self.keyspace.persist(PersistMode::SyncAll);
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
        let longest = vec![b'a'; MAX_KEY_LEN];
        let too_long = vec![b'a'; MAX_KEY_LEN + 1];
        for backend in [&kv as &dyn KvStore, &model] {
            put(backend, &longest, b"1").unwrap();
            put(backend, b"b", b"2").unwrap();
            put(backend, b"", b"empty key").unwrap();
        }
        assert!(matches!(
            put(&kv, &too_long, b"x"),
            Err(Error::Backend { op: "apply", .. })
        ));
        assert!(kv.put_raw(&too_long, b"x").is_err());
        assert_eq!(kv.get(&too_long).unwrap(), None);
        assert_eq!(kv.get(&longest).unwrap().unwrap(), &b"1"[..]);
        let mut guarded = Batch::new();
        guarded
            .put(&b"c"[..], &b"3"[..])
            .guard(too_long.clone(), None);
        kv.apply(guarded).unwrap();
        model.apply(Batch::new()).unwrap();
        put(&model, b"c", b"3").unwrap();

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
            kv.delete_range(range.clone()).unwrap();
            model.delete_range(range).unwrap();
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
    /// segment and read back through the block cache.
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
        // Reopening replays the journal into a memtable; push it into a segment.
        kv.seal_memtable().unwrap();
        assert!(kv.partition.segment_count() > 0);
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
        // 4 MiB of overwrites and new keys: past the 512 KiB memtable several times.
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

    /// Readers never see part of a batch: each batch sets two keys to one number, and a
    /// reader scanning both must always find them equal.
    #[test]
    fn readers_never_see_part_of_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let kv = std::sync::Arc::new(open(dir.path()));
        let writer = {
            let kv = std::sync::Arc::clone(&kv);
            std::thread::spawn(move || {
                for n in 0..3000u32 {
                    let mut b = Batch::new();
                    for key in [&b"a"[..], b"b", b"c", b"d"] {
                        b.put(key, n.to_be_bytes().to_vec());
                    }
                    kv.apply(b).unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let seen = all(kv.as_ref(), KeyRange::prefix(&[]));
            if let Some((_, v)) = seen.first() {
                assert!(seen.iter().all(|(_, w)| w == v), "a torn batch: {seen:?}");
            }
            reads += 1;
        }
        writer.join().unwrap();
    }
}
