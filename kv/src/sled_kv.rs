//! `SledKv`: sled 0.34.7 behind the [`KvStore`] trait, selectable beside the default fjall.
//!
//! It owns everything sled-specific: no sled type crosses this module's boundary. The
//! invariants it keeps for the trait's contract:
//! - [`SledConfig`] always sets `cache_capacity` (sled's default is 1 GiB);
//! - a batch is one `apply_batch`, atomic after a crash, and durable after
//!   [`KvStore::flush`]; preconditions are checked under one mutex with the apply;
//! - one store per directory (sled's file lock), reported as [`Error::StoreLocked`];
//! - every call into sled runs under `catch_unwind`: a panic on damaged files is
//!   [`Error::Corrupt`], never an abort;
//! - unfinished snapshots (`snap.*.generating`) are removed before sled opens
//!   ([`remove_unfinished_snapshots`]);
//! - a full disk is [`Error::Full`]; after a failed write no sled write or flush starts
//!   again ([`Error::Poisoned`]), the `sled::Db` closes in a thread of its own bounded by
//!   [`CLOSE_LIMIT`], and a running flush is nudged by [`FlushWatch`] so a stored log
//!   error wakes its waiters;
//! - a value read is sled's refcounted `IVec`, shared as [`Bytes`] without a copy.
//!
//! Why each of these holds, as read in the sled 0.34.7 sources and seen in tests, is in
//! docs/design.md ("What `SledKv` relies on in sled").

use std::collections::BTreeSet;
use std::fs::{File, TryLockError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::error::{Error, Result, access_denied, out_of_space, panic_message};
use crate::keys::KeyRange;
use crate::store::{Batch, KvStats, KvStore, Scan, fold_ops};

/// How long [`SledKv::open`] waits for a directory lock that sled has not yet released.
const LOCK_RETRY: Duration = Duration::from_secs(1);

/// How often a running flush is nudged (see the module docs)...
const NUDGE: Duration = Duration::from_millis(250);

/// ...by at most this many nudging flushes at a time.
const MAX_NUDGES: usize = 8;

/// How long closing a store whose write failed waits for sled to let go of it.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Directories of stores whose close did not finish within [`CLOSE_LIMIT`]: sled still
/// holds their lock.
static STUCK: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// How to open a [`SledKv`].
#[derive(Debug, Clone)]
pub struct SledConfig {
    /// Directory of the store.
    pub path: PathBuf,
    /// Bytes of sled's page cache (part of the process memory budget).
    pub cache_capacity: u64,
    /// sled's background flush interval; `None` flushes only when asked.
    pub flush_every_ms: Option<u64>,
}

impl SledConfig {
    /// Defaults for `path`: a 64 MiB cache and sled's 500 ms background flush.
    pub fn new(path: impl Into<PathBuf>) -> SledConfig {
        SledConfig {
            path: path.into(),
            cache_capacity: 64 << 20,
            flush_every_ms: Some(500),
        }
    }
}

/// The sled backend.
#[derive(Debug)]
pub struct SledKv {
    /// `None` only while dropping.
    db: Option<sled::Db>,
    watch: FlushWatch,
    /// The first failed write, if any (see the module docs), and whether it was a full
    /// disk.
    failed: OnceLock<(String, bool)>,
    /// Held across precondition check and apply so no other batch slips between them.
    write_lock: Mutex<()>,
    path: PathBuf,
    cache_capacity: u64,
}

impl SledKv {
    /// Opens (or creates) the store described by `config`.
    ///
    /// A held directory lock is retried for up to a second: sled releases its
    /// directory lock from background I/O threads that can outlive `Db::drop` (sled issues
    /// #1234 and #1289), so a store closed a moment ago here can briefly look held. A store
    /// really open elsewhere stays held and is reported as [`Error::StoreLocked`].
    pub fn open(config: &SledConfig) -> Result<SledKv> {
        let deadline = Instant::now() + LOCK_RETRY;
        let mut pause = Duration::from_millis(1);
        loop {
            match SledKv::open_once(config) {
                Err(Error::StoreLocked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(Error::StoreLocked { path }) if STUCK.lock().contains(&path) => {
                    return Err(Error::backend(
                        "open",
                        std::io::Error::other(format!(
                            "the sled store at {} could not finish closing after a write \
                             failed (sled 0.34 waits for that write forever) and still \
                             holds its lock; restart the process to open it again",
                            path.display()
                        )),
                    ));
                }
                done => return done,
            }
        }
    }

    fn open_once(config: &SledConfig) -> Result<SledKv> {
        let path = &config.path;
        remove_unfinished_snapshots(path)?;
        let opened = catch_unwind(|| {
            sled::Config::new()
                .path(path)
                .cache_capacity(config.cache_capacity)
                .flush_every_ms(config.flush_every_ms)
                .open()
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(sled::Error::Io(io))) if io.to_string().contains("could not acquire lock") => {
                return Err(Error::StoreLocked { path: path.clone() });
            }
            Ok(Err(e)) => return Err(engine_error("open", path, e)),
            Err(panic) => return Err(panicked("open", path, &*panic)),
        };
        Ok(SledKv {
            watch: FlushWatch::start(db.clone())?,
            db: Some(db),
            failed: OnceLock::new(),
            write_lock: Mutex::new(()),
            path: path.clone(),
            cache_capacity: config.cache_capacity,
        })
    }

    /// Runs `f` against sled, turning its errors into ours and a panic into
    /// [`Error::Corrupt`] (sled panics on some damaged data).
    fn call<T>(&self, op: &'static str, f: impl FnOnce(&sled::Db) -> sled::Result<T>) -> Result<T> {
        let db = self.db.as_ref().ok_or(Error::Closed)?;
        match catch_unwind(AssertUnwindSafe(|| f(db))) {
            Ok(result) => result.map_err(|e| engine_error(op, &self.path, e)),
            Err(panic) => Err(panicked(op, &self.path, &*panic)),
        }
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes raw bytes under `key`, bypassing every check: for tests that corrupt data.
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write("put_raw", |db| db.insert(key, value).map(drop))
    }

    /// [`SledKv::call`] for a call that writes or flushes: refused once one has failed,
    /// and remembered as failed if it fails (see the module docs).
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&sled::Db) -> sled::Result<T>,
    ) -> Result<T> {
        if let Some((cause, disk_full)) = self.failed.get() {
            return Err(Error::Poisoned {
                cause: cause.clone(),
                disk_full: *disk_full,
            });
        }
        self.call(op, f).inspect_err(|e| {
            let _ = self.failed.set((e.to_string(), e.is_disk_full()));
        })
    }

    /// The entries of `range`, each step of sled's iterator guarded as [`SledKv::call`]
    /// guards a call.
    fn range_iter<'a>(&'a self, op: &'static str, range: &KeyRange) -> Result<SledScan<'a>> {
        let iter = self.call(op, |db| Ok(db.range::<&[u8], _>(range.bounds())))?;
        Ok(SledScan {
            kv: self,
            op,
            iter,
            done: false,
        })
    }
}

/// A sled range iterator whose steps cannot panic through.
struct SledScan<'a> {
    kv: &'a SledKv,
    op: &'static str,
    iter: sled::Iter,
    done: bool,
}

impl Iterator for SledScan<'_> {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = catch_unwind(AssertUnwindSafe(|| self.iter.next()));
        let item = match step {
            Ok(None) => None,
            Ok(Some(Ok((k, v)))) => Some(Ok((to_bytes(k), to_bytes(v)))),
            Ok(Some(Err(e))) => Some(Err(engine_error(self.op, &self.kv.path, e))),
            Err(panic) => Some(Err(panicked(self.op, &self.kv.path, &*panic))),
        };
        // After an error the iterator's state is not to be trusted.
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

fn to_bytes(v: sled::IVec) -> Bytes {
    Bytes::from_owner(v)
}

/// Our error for sled's: a full disk is [`Error::Full`], detected corruption is
/// [`Error::Corrupt`], the rest is a backend error.
fn engine_error(op: &'static str, path: &Path, e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) if op == "open" && access_denied(&io).is_some() => no_access(path, &io),
        sled::Error::Io(io) if out_of_space(&io).is_some() => Error::Full {
            op,
            path: path.to_path_buf(),
            // sled hands a stored error out as a copy whose text is the original's
            // `Debug` form; the kind reads better then.
            cause: if io.raw_os_error().is_some() {
                io.to_string()
            } else {
                io.kind().to_string()
            },
        },
        sled::Error::Corruption { at, .. } => Error::Corrupt {
            what: format!("the sled files in {}", path.display()),
            reason: match at {
                Some(at) => format!("sled read corrupted data ({op}, at {at:?})"),
                None => format!("sled read corrupted data ({op})"),
            },
        },
        other => Error::backend(op, other),
    }
}

/// The error for a store whose files could not be opened for lack of access.
fn no_access(path: &Path, err: &std::io::Error) -> Error {
    Error::NoAccess {
        engine: "sled",
        path: path.to_path_buf(),
        cause: err.to_string(),
        why: "0.34 has no read-only mode: every open locks its data file for writing and \
              writes a snapshot",
    }
}

/// The error for a panic inside sled during `op`: sled panics on data it cannot decode.
fn panicked(op: &'static str, path: &Path, panic: &(dyn std::any::Any + Send)) -> Error {
    Error::Corrupt {
        what: format!("the sled files in {}", path.display()),
        reason: format!("sled panicked during {op}: {}", panic_message(panic)),
    }
}

/// Removes the snapshot files in `dir` that sled was interrupted writing (see the module
/// notes), under an exclusive lock on sled's `db` file, the lock sled itself takes (an
/// `flock`, via fs2) before it writes a snapshot; if the directory is open in a sled, the
/// open that follows reports it. Without them sled reads its last complete snapshot, or
/// none, and replays its log from there, as after any crash.
fn remove_unfinished_snapshots(dir: &Path) -> Result<()> {
    let db_file = match File::open(dir.join("db")) {
        Ok(f) => f,
        // A new store, or one sled will refuse with its own error.
        Err(_) => return Ok(()),
    };
    match db_file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(()),
        Err(TryLockError::Error(e)) => return Err(Error::backend("lock", e)),
    }
    let entries = std::fs::read_dir(dir).map_err(Error::at("open"))?;
    for entry in entries {
        let entry = entry.map_err(Error::at("open"))?;
        let name = entry.file_name();
        let unfinished = name
            .to_str()
            .is_some_and(|n| n.starts_with("snap.") && n.ends_with(".generating"));
        if unfinished {
            std::fs::remove_file(entry.path()).map_err(|e| {
                if access_denied(&e).is_some() {
                    return no_access(dir, &e);
                }
                Error::backend(
                    "open",
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot remove sled's unfinished snapshot {}: {e}",
                            entry.path().display()
                        ),
                    ),
                )
            })?;
        }
    }
    Ok(())
}

impl KvStore for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.call("get", |db| db.get(key))?.map(to_bytes))
    }

    fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        if range.is_empty() {
            return Ok(Box::new(std::iter::empty()));
        }
        Ok(Box::new(self.range_iter("scan", &range)?))
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let _serial = self.write_lock.lock();
        batch.check_limits()?;
        batch.check_preconditions(|key| {
            let current = self.call("precondition", |db| db.get(key))?;
            Ok(current.map(|v| Bytes::copy_from_slice(&v)))
        })?;
        // sled's batch keeps one write per key, so ops are folded in order first.
        let writes = fold_ops(batch.ops, |range| {
            self.range_iter("delete_range", range)?
                .map(|entry| entry.map(|(k, _)| k))
                .collect()
        })?;
        let mut sled_batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => sled_batch.insert(&k[..], &v[..]),
                None => sled_batch.remove(&k[..]),
            }
        }
        self.write("apply_batch", |db| db.apply_batch(sled_batch))
    }

    fn flush(&self) -> Result<()> {
        let _watched = self.watch.flushing();
        self.write("flush", |db| db.flush().map(drop))
    }

    fn stats(&self) -> Result<KvStats> {
        let mut keys = 0u64;
        let mut logical_bytes = 0u64;
        for entry in self.range_iter("stats", &KeyRange::prefix(&[]))? {
            let (k, v) = entry?;
            keys += 1;
            logical_bytes += (k.len() + v.len()) as u64;
        }
        Ok(KvStats {
            keys,
            logical_bytes,
            disk_bytes: self.call("stats", |db| db.size_on_disk())?,
            cache_capacity: self.cache_capacity,
            garbage_bytes: 0,
        })
    }
}

impl Drop for SledKv {
    fn drop(&mut self) {
        // sled flushes on its timer, not on drop; a clean close must not lose the tail.
        let _ = self.flush();
        self.watch.stop();
        let Some(db) = self.db.take() else {
            return;
        };
        if self.failed.get().is_none() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
            return;
        }
        // sled's own last flush may wait forever (see the module docs).
        let path = self.path.clone();
        STUCK.lock().insert(path.clone());
        let (closed, wait) = crossbeam_channel::bounded::<()>(1);
        let closing = std::thread::Builder::new()
            .name("shoal-sled-close".into())
            .spawn(move || {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
                STUCK.lock().remove(&path);
                let _ = closed.send(());
            });
        // (Without a thread the store was closed, or hangs, in the failed spawn.)
        if closing.is_ok() {
            let _ = wait.recv_timeout(CLOSE_LIMIT);
        }
    }
}

/// The thread that nudges a flush sled may have forgotten to wake (see the module docs).
/// It sleeps on a channel while no flush runs.
#[derive(Debug)]
struct FlushWatch {
    /// +1 when a flush starts, -1 when it ends.
    tx: Option<Sender<i8>>,
    thread: Option<JoinHandle<()>>,
}

/// Marks a flush as running while it lives.
struct Flushing<'a>(&'a FlushWatch);

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        if let Some(tx) = &self.0.tx {
            let _ = tx.send(-1);
        }
    }
}

impl FlushWatch {
    fn start(db: sled::Db) -> Result<FlushWatch> {
        let (tx, rx) = crossbeam_channel::unbounded::<i8>();
        let thread = std::thread::Builder::new()
            .name("shoal-sled-watch".into())
            .spawn(move || {
                let nudging = Arc::new(AtomicUsize::new(0));
                let mut running = 0i64;
                loop {
                    let next = if running > 0 {
                        rx.recv_timeout(NUDGE)
                    } else {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    };
                    match next {
                        Ok(change) => running += i64::from(change),
                        Err(RecvTimeoutError::Timeout) => nudge(&db, &nudging),
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| Error::backend("start sled watch thread", e))?;
        Ok(FlushWatch {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn flushing(&self) -> Flushing<'_> {
        if let Some(tx) = &self.tx {
            let _ = tx.send(1);
        }
        Flushing(self)
    }

    /// Ends the thread (and drops its handle on the store).
    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a flush of `db` in a thread of its own: it returns at once with sled's stored
/// error, waking every flush waiting in vain, or else waits with them for the write.
/// `nudging` counts the nudges still running; none is started past [`MAX_NUDGES`].
fn nudge(db: &sled::Db, nudging: &Arc<AtomicUsize>) {
    if nudging.fetch_add(1, Ordering::SeqCst) >= MAX_NUDGES {
        nudging.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let db = db.clone();
    let count = Arc::clone(nudging);
    let started = std::thread::Builder::new()
        .name("shoal-sled-nudge".into())
        .spawn(move || {
            let _ = catch_unwind(AssertUnwindSafe(move || {
                let _ = db.flush();
                drop(db);
            }));
            count.fetch_sub(1, Ordering::SeqCst);
        });
    if started.is_err() {
        nudging.fetch_sub(1, Ordering::SeqCst);
    }
}
