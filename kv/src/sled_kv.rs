//! `SledKv`: the default backend, sled 0.34.7 behind the [`KvStore`] trait.
//!
//! No sled type crosses this module's boundary. Facts about sled this module respects:
//! - `cache_capacity` defaults to 1 GiB, so [`SledConfig`] always sets it explicitly;
//! - writes are durable only after `flush` (or sled's own timer, [`SledConfig::flush_every_ms`]);
//! - `apply_batch` is atomic and already serialises on a process-wide lock, so the extra
//!   mutex that makes preconditions atomic costs nothing in concurrency;
//! - a sled directory can be opened once at a time (a file lock), reported as
//!   [`Error::StoreLocked`];
//! - `get` returns a reference-counted `IVec`, wrapped here as [`Bytes`] without a copy;
//! - an open that finds the log grown since the last snapshot writes a new one, to
//!   `snap.<lsn>.generating` until it is complete and synced, then renames it; but sled's
//!   reader takes `.generating` files too (it skips only an older suffix, `.in___motion`)
//!   and refuses an unfinished one as corrupt, so a kill at that moment left a store that
//!   never opened again. [`SledKv::open`] removes them first (see
//!   [`remove_unfinished_snapshots`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::keys::KeyRange;
use crate::store::{Batch, KvStats, KvStore, Scan, fold_ops};

/// How long [`SledKv::open`] waits for a directory lock that sled has not yet released.
const LOCK_RETRY: Duration = Duration::from_secs(1);

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
    db: sled::Db,
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
                done => return done,
            }
        }
    }

    fn open_once(config: &SledConfig) -> Result<SledKv> {
        remove_unfinished_snapshots(&config.path)?;
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(config.flush_every_ms)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    Error::StoreLocked {
                        path: config.path.clone(),
                    }
                }
                other => Error::backend("open", other),
            })?;
        Ok(SledKv {
            db,
            write_lock: Mutex::new(()),
            path: config.path.clone(),
            cache_capacity: config.cache_capacity,
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes raw bytes under `key`, bypassing every check: for tests that corrupt data.
    #[doc(hidden)]
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db
            .insert(key, value)
            .map(drop)
            .map_err(Error::at("put_raw"))
    }

    fn range_iter(&self, range: &KeyRange) -> sled::Iter {
        self.db.range::<&[u8], _>(range.bounds())
    }
}

/// Removes the snapshot files in `dir` that sled was interrupted writing (see the module
/// notes), unless the directory is open in a sled, which locks its `db` file. Without them
/// sled reads its last complete snapshot, or none, and replays its log from there, as after
/// any crash.
fn remove_unfinished_snapshots(dir: &Path) -> Result<()> {
    let Ok(db) = std::fs::File::open(dir.join("db")) else {
        return Ok(()); // a new store, or one sled reports on itself
    };
    if db.try_lock().is_err() {
        return Ok(()); // open elsewhere: sled's own open says so
    }
    for entry in std::fs::read_dir(dir).map_err(Error::at("open"))? {
        let entry = entry.map_err(Error::at("open"))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path()).map_err(Error::at("open"))?;
        }
    }
    Ok(())
}

fn to_bytes(v: sled::IVec) -> Bytes {
    Bytes::from_owner(v)
}

impl KvStore for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.db.get(key).map_err(Error::at("get"))?.map(to_bytes))
    }

    fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        if range.is_empty() {
            return Ok(Box::new(std::iter::empty()));
        }
        let iter = self.range_iter(&range).map(|r| {
            r.map(|(k, v)| (to_bytes(k), to_bytes(v)))
                .map_err(Error::at("scan"))
        });
        Ok(Box::new(iter))
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let _serial = self.write_lock.lock();
        if let Some(pre) = &batch.precondition {
            let current = self.db.get(&pre.key).map_err(Error::at("precondition"))?;
            pre.check(current.as_deref())?;
        }
        // sled's batch keeps one write per key, so ops are folded in order first.
        let writes = fold_ops(batch.ops, |range| {
            self.range_iter(range)
                .keys()
                .map(|k| k.map(to_bytes).map_err(Error::at("delete_range")))
                .collect()
        })?;
        let mut sled_batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => sled_batch.insert(&k[..], &v[..]),
                None => sled_batch.remove(&k[..]),
            }
        }
        self.db
            .apply_batch(sled_batch)
            .map_err(Error::at("apply_batch"))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(drop).map_err(Error::at("flush"))
    }

    fn stats(&self) -> Result<KvStats> {
        let mut keys = 0u64;
        let mut logical_bytes = 0u64;
        for entry in self.db.iter() {
            let (k, v) = entry.map_err(Error::at("stats"))?;
            keys += 1;
            logical_bytes += (k.len() + v.len()) as u64;
        }
        Ok(KvStats {
            keys,
            logical_bytes,
            disk_bytes: self.db.size_on_disk().map_err(Error::at("stats"))?,
            cache_capacity: self.cache_capacity,
        })
    }
}

impl Drop for SledKv {
    fn drop(&mut self) {
        // sled flushes on its timer, not on drop; a clean close must not lose the tail.
        let _ = self.db.flush();
    }
}
