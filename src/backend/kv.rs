//! The kv backing: actors as pages in one shared key-value store, through the shoal VFS.
//!
//! It owns opening the engine (creating its directory all at once, so that a crash while a
//! store is created leaves none or a whole one), the VFS registered over it, and the
//! hidden catalog entries an import fills before one atomic rename makes them an actor.
//! While a VFS serves the store it is the store's one writer.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};

use super::Backend;
use crate::config::{Config, Durability, StoreLayout};
use crate::error::{Error, Result};
use crate::names::validate_actor_name;
use crate::store::CheckReport;
use crate::transfer::{Staged, sync_dir};

/// Prefix of the catalog entry an import into the kv backing fills before it renames it
/// to the actor's name; [`validate_actor_name`] refuses it (a leading '.').
const STAGING_PREFIX: &str = ".import-";

static NEXT_STAGING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A number for this process's import entries, unlikely to be any other process's.
static PROCESS_NONCE: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // RandomState is seeded at random per process.
    std::collections::hash_map::RandomState::new().hash_one((now, std::process::id()))
});

/// Whether import entry `name` is leased to a live host (an import under way elsewhere).
fn import_under_way(kv: &shoal_kv::Kv, name: &str) -> Result<bool> {
    let Some(entry) = kv.lookup(name)? else {
        return Ok(false);
    };
    Ok(kv.lease_is_live(entry.id)?)
}

/// The kv stores this process opened, by directory: a connection that outlives its
/// `Store` keeps the backing open, and reopening the directory must say so rather than
/// blame another process.
static OPENED: std::sync::Mutex<Vec<(PathBuf, shoal_vfs::StoreUsage)>> =
    std::sync::Mutex::new(Vec::new());

/// Pages in the shared key-value store, through a registered shoal VFS.
#[derive(Debug)]
pub(crate) struct KvBacking {
    /// Collects expired history in the background (stopped before the VFS goes).
    _collector: Option<Collector>,
    vfs: shoal_vfs::Vfs,
    /// What the store's caches may hold (the kv share of the budget).
    cache_capacity: u64,
    /// The private copy of the engine's files a read-only open of unwritable storage
    /// reads (removed after the VFS, declared before it, has let go of them).
    _snapshot: Option<tempfile::TempDir>,
}

impl KvBacking {
    /// Opens the engine `config` names under `dir` (or `backend`, in tests), registers a
    /// VFS over it and, unless `read_only`, removes what an interrupted import left.
    pub(crate) fn open(
        dir: &Path,
        config: &Config,
        backend: Option<Arc<dyn shoal_kv::KvStore>>,
        read_only: bool,
    ) -> Result<KvBacking> {
        let (vfs, snapshot) = open_kv(dir, config, backend, read_only)?;
        if !read_only {
            let kv = vfs.kv();
            for name in vfs.list_prefix(STAGING_PREFIX)? {
                // On a store hosts share, another host's import under way holds its
                // entry's lease: left to it (or to an open after that lease ran out).
                if kv.leases_enabled() && import_under_way(kv, &name)? {
                    continue;
                }
                vfs.delete_database(&name)?;
            }
        }
        let collector = (!read_only).then(|| Collector::start(Arc::clone(vfs.kv())));
        Ok(KvBacking {
            _collector: collector,
            vfs,
            cache_capacity: config.kv_cache_bytes(),
            _snapshot: snapshot,
        })
    }
}

/// How often the collector sweeps every actor's history.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A thread that, every [`COLLECT_EVERY`], collects the history past its retention of
/// every actor, one bounded pass at a time ([`shoal_kv::Kv::collect_history`]): no
/// writer waits on it, since a pass only deletes keys no commit writes.
#[derive(Debug)]
struct Collector {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    fn start(kv: Arc<shoal_kv::Kv>) -> Collector {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("shoal-history".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(COLLECT_EVERY)
                {
                    sweep(&kv, &stopped);
                }
            })
            .ok();
        Collector {
            stop: Some(stop),
            thread,
        }
    }
}

/// One sweep over every database; a failure on one (a poisoned store, a database
/// dropped meanwhile) skips it until the next sweep.
fn sweep(kv: &shoal_kv::Kv, stopped: &std::sync::mpsc::Receiver<()>) {
    let Ok(entries) = kv.list() else { return };
    for (name, entry) in entries {
        if entry.kind != shoal_kv::EntryKind::Database {
            continue;
        }
        loop {
            if !matches!(
                stopped.try_recv(),
                Err(std::sync::mpsc::TryRecvError::Empty)
            ) {
                return;
            }
            match kv.collect_history(&name) {
                Ok(pass) if pass.more => {}
                _ => break,
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Backend for KvBacking {
    /// Opens with `journal_mode = MEMORY`: no transaction writes the database before
    /// its commit, so a stored journal would protect nothing and cost two batches per
    /// commit (docs/design.md, "Commits").
    fn open(&self, name: &str, flags: OpenFlags) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags_and_vfs(name, flags, self.vfs.name())?;
        conn.query_row("PRAGMA journal_mode = MEMORY", [], |_| Ok(()))?;
        Ok(conn)
    }

    fn actor_file(&self, _name: &str) -> Option<PathBuf> {
        None
    }

    /// The durability is the VFS's default, set when the store registered it (`open_kv`).
    fn synchronous(&self, _durability: Durability) -> Option<&'static str> {
        None
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.vfs.exists(name)?)
    }

    fn list(&self) -> Result<Vec<String>> {
        // Staging entries of an import under way are not actors (yet).
        Ok(self
            .vfs
            .list()?
            .into_iter()
            .filter(|n| validate_actor_name(n).is_ok())
            .collect())
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.vfs.delete_database(name).map_err(|e| match e {
            shoal_vfs::Error::InUse(_) => Error::ActorInUse(name.to_owned()),
            other => other.into(),
        })
    }

    fn stats(&self, name: &str) -> Result<(u64, Option<shoal_vfs::DbStats>)> {
        Ok((
            self.vfs.file_size(name)?.unwrap_or(0),
            self.vfs.stats(name)?,
        ))
    }

    /// Copies `staged` into a hidden catalog entry, then renames it to `name`.
    fn import(&self, staged: &Staged, name: &str) -> Result<()> {
        let vfs = &self.vfs;
        use std::sync::atomic::Ordering;
        // Unique among the hosts that share a store: this process's nonce, then a count.
        let staging = format!(
            "{STAGING_PREFIX}{:016x}-{}",
            *PROCESS_NONCE,
            NEXT_STAGING.fetch_add(1, Ordering::Relaxed)
        );
        let copied = (|| -> Result<()> {
            let source = staged.open()?;
            let mut target = Connection::open_with_flags_and_vfs(
                &staging,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                vfs.name(),
            )?;
            let backup = rusqlite::backup::Backup::new(&source, &mut target)?;
            backup.run_to_completion(1024, std::time::Duration::ZERO, None)?;
            drop(backup);
            // The lease stays this host's from the copy to the rename, so another host's
            // clean-up never takes the entry between the two.
            let _held = match vfs.kv().lookup(&staging)? {
                Some(entry) => vfs.kv().hold_lease(entry.id)?,
                None => None,
            };
            target.close().map_err(|(_, e)| e)?;
            vfs.rename_database(&staging, name).map_err(|e| match e {
                shoal_vfs::Error::Kv(shoal_kv::Error::AlreadyExists(_)) => {
                    Error::ActorExists(name.to_owned())
                }
                other => other.into(),
            })
        })();
        if copied.is_err() && vfs.exists(&staging).unwrap_or(false) {
            let _ = vfs.delete_database(&staging);
        }
        copied
    }

    fn check(&self, report: &mut CheckReport) -> Result<()> {
        report.audit = self.vfs.audit(&report.name)?;
        Ok(())
    }

    fn cache_capacity(&self) -> u64 {
        self.cache_capacity
    }

    fn needs_reopen(&self, name: &str) -> bool {
        self.vfs.needs_reopen(name)
    }

    fn forget_failure(&self) {
        let _stale = shoal_vfs::take_last_failure();
    }

    fn explain(&self, e: rusqlite::Error) -> Error {
        let e = with_vfs_reason(e);
        if is_storage_error(&e)
            && let Err(poison @ shoal_kv::Error::Poisoned { .. }) = self.vfs.kv().check_writable()
        {
            if poison.is_disk_full() {
                return poison.into();
            }
            return Error::Sqlite(with_poison(e, &poison));
        }
        Error::Sqlite(e)
    }

    fn vfs(&self) -> Option<&shoal_vfs::Vfs> {
        Some(&self.vfs)
    }
}

fn open_kv(
    dir: &Path,
    config: &Config,
    backend: Option<Arc<dyn shoal_kv::KvStore>>,
    read_only: bool,
) -> Result<(shoal_vfs::Vfs, Option<tempfile::TempDir>)> {
    use crate::config::KvEngine;
    use std::sync::PoisonError;

    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    {
        let mut opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
        opened.retain(|(_, usage)| usage.in_use());
        if let Some((_, usage)) = opened.iter().find(|(d, _)| *d == key) {
            return Err(Error::StoreInUse {
                path: dir.to_path_buf(),
                databases: usage.open_databases(),
            });
        }
    }
    let locked = |e: shoal_kv::Error| match e {
        shoal_kv::Error::StoreLocked { .. } => Error::StoreLocked {
            path: dir.to_path_buf(),
        },
        other => other.into(),
    };
    // Each engine keeps its own directory: their files are not interchangeable. A
    // read-only open creates none (its layout was checked to be there).
    let engine_dir = dir.join(StoreLayout::Kv(config.kv_engine).dir_name());
    let mut snapshot = None;
    let create = |path: &Path, open: &dyn Fn(&Path) -> Result<Arc<dyn shoal_kv::KvStore>>| {
        if read_only {
            Ok(false)
        } else {
            create_if_missing(path, open)
        }
    };
    let backend: Arc<dyn shoal_kv::KvStore> = match (backend, config.kv_engine) {
        (Some(backend), _) => backend,
        (None, KvEngine::Fjall) => {
            let mut fjall = shoal_kv::FjallConfig::new(engine_dir);
            fjall.cache_capacity = config.kv_cache_bytes() / 2;
            fjall.write_buffer = config.kv_write_buffer_bytes();
            let created = create(&fjall.path, &|path| {
                // No background fsync: the creation flushes itself, and closing waits
                // for that thread to wake.
                let creating = shoal_kv::FjallConfig {
                    path: path.to_path_buf(),
                    flush_every_ms: None,
                    ..fjall.clone()
                };
                Ok(Arc::new(shoal_kv::FjallKv::open(&creating)?))
            })?;
            let open_at = |path: &Path| -> shoal_kv::Result<Arc<dyn shoal_kv::KvStore>> {
                let at = shoal_kv::FjallConfig {
                    path: path.to_path_buf(),
                    ..fjall.clone()
                };
                Ok(Arc::new(shoal_kv::FjallKv::open(&at)?))
            };
            let opened = open_created(created, || open_at(&fjall.path));
            open_or_snapshot(
                opened,
                read_only,
                &fjall.path,
                &mut snapshot,
                &open_at,
                &locked,
            )?
        }
        #[cfg(not(feature = "postgres"))]
        (None, KvEngine::Postgres) => {
            return Err(Error::NotBuilt {
                feature: "postgres",
                what: "the PostgreSQL engine",
            });
        }
        #[cfg(feature = "postgres")]
        (None, KvEngine::Postgres) => {
            let url = config.postgres_url.clone().ok_or(Error::NoPostgresUrl)?;
            // The directory only says which layout this store has; the pages are on the
            // server.
            if !read_only {
                super::create_private_dir(&engine_dir)?;
            }
            let pg = shoal_kv::PgConfig::new(url);
            Arc::new(shoal_kv::PgKv::open(&pg)?)
        }
        #[cfg(not(feature = "sled"))]
        (None, KvEngine::Sled) => {
            return Err(Error::NotBuilt {
                feature: "sled",
                what: "the sled engine",
            });
        }
        #[cfg(feature = "sled")]
        (None, KvEngine::Sled) => {
            let mut sled = shoal_kv::SledConfig::new(engine_dir);
            sled.cache_capacity = config.kv_cache_bytes() / 2;
            // `SledKv::open` waits for a held lock itself (see `open_created`).
            create(&sled.path, &|path| {
                let creating = shoal_kv::SledConfig {
                    path: path.to_path_buf(),
                    ..sled.clone()
                };
                Ok(Arc::new(shoal_kv::SledKv::open(&creating)?))
            })?;
            let open_at = |path: &Path| -> shoal_kv::Result<Arc<dyn shoal_kv::KvStore>> {
                let at = shoal_kv::SledConfig {
                    path: path.to_path_buf(),
                    ..sled.clone()
                };
                Ok(Arc::new(shoal_kv::SledKv::open(&at)?))
            };
            open_or_snapshot(
                open_at(&sled.path),
                read_only,
                &sled.path,
                &mut snapshot,
                &open_at,
                &locked,
            )?
        }
    };
    // Half the kv share is the backend's own cache, half the verified-chunk cache above it.
    let read_cache = usize::try_from(config.kv_cache_bytes() / 2).unwrap_or(usize::MAX);
    let kv = Arc::new(if read_only {
        shoal_kv::Kv::open_read_only(backend, read_cache)?
    } else {
        shoal_kv::Kv::open_with_cache(backend, read_cache)?
    });
    kv.set_retention(match config.history_keep {
        Some(keep) => shoal_kv::Retention::keep(keep, config.history_max_bytes),
        None => shoal_kv::Retention::OFF,
    });
    if config.kv_engine == KvEngine::Postgres || config.host_id.is_some() {
        // A store other hosts may share: each actor is written by the one host holding
        // its lease (docs/design.md, "Leases and fencing").
        let host = config
            .host_id
            .clone()
            .unwrap_or_else(shoal_kv::LeaseConfig::unique_host);
        kv.enable_leases(shoal_kv::LeaseConfig::new(host, config.lease_duration))?;
    }
    let durability = config.durability;
    // A VFS name stays registered with SQLite for the process; taking the first free
    // `shoal-N` reuses the names of stores already closed instead of adding new ones.
    let mut n = 0u64;
    loop {
        let options = shoal_vfs::VfsOptions {
            name: format!("shoal-{n}"),
            durability,
            temp_limit: config.temp_limit(),
            overlay_limit: config.overlay_limit(),
        };
        match shoal_vfs::register(Arc::clone(&kv), options) {
            Err(shoal_vfs::Error::AlreadyRegistered(_)) => n += 1,
            Err(e) => return Err(e.into()),
            Ok(vfs) => {
                let mut opened = OPENED.lock().unwrap_or_else(PoisonError::into_inner);
                opened.push((key, vfs.usage()));
                return Ok((vfs, snapshot));
            }
        }
    }
}

/// `err` with the reason the VFS gave for it on this thread, if it gave one for this code.
fn with_vfs_reason(err: rusqlite::Error) -> rusqlite::Error {
    match err {
        rusqlite::Error::SqliteFailure(e, message) => {
            let message = match shoal_vfs::take_last_failure() {
                Some((code, reason)) if code & 0xff == e.extended_code & 0xff => {
                    Some(message.map_or_else(|| reason.clone(), |m| format!("{m}: {reason}")))
                }
                _ => message,
            };
            rusqlite::Error::SqliteFailure(e, message)
        }
        other => other,
    }
}

/// Whether SQLite's `e` is about storage (I/O, a full disk, damaged data), as opposed to
/// the SQL or the caller.
fn is_storage_error(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::CannotOpen
                | ErrorCode::NotADatabase
        )
    )
}

/// `err` with a note that the store is poisoned, and by what, unless its message says
/// so already (the VFS's reason for a refused write does).
fn with_poison(err: rusqlite::Error, poison: &shoal_kv::Error) -> rusqlite::Error {
    let shoal_kv::Error::Poisoned { cause, .. } = poison else {
        return err;
    };
    match err {
        rusqlite::Error::SqliteFailure(e, message) => {
            let text = poison.to_string();
            let message = match message {
                Some(m) if m.contains(&text) => m,
                Some(m) if m.contains(cause.as_str()) => {
                    format!("{m}; the store refuses writes until it is reopened")
                }
                Some(m) => format!("{m}: {text}"),
                None => text,
            };
            rusqlite::Error::SqliteFailure(e, Some(message))
        }
        other => other,
    }
}

/// Suffix of the name an engine directory is built under before it takes its own.
const CREATING_SUFFIX: &str = ".creating";

/// Creates the engine directory `path` all at once if it does not exist (and says whether
/// it did), so that a crash while a store is created leaves either no engine directory
/// (the next open creates it again) or a complete one. An engine writes its first files
/// one after another (fjall's `version` file is created empty and then written, sled's
/// `conf` is written before its checksum), and a kill between them left a directory that
/// no later open accepted.
///
/// The directory is built under `path` + [`CREATING_SUFFIX`] with `open` (the engine as
/// the store will use it, since fjall keeps some options from its creation): the format
/// version record is written, flushed, and the engine closed; then every file and
/// directory of it is fsynced, it is renamed to `path` (atomic) and the store directory
/// fsynced. A leftover of an interrupted creation is removed first: it never held
/// acknowledged data, and no other process is creating it, because the caller holds the
/// store's `LOCK`. An existing engine directory is left as it is.
fn create_if_missing(
    path: &Path,
    open: &dyn Fn(&Path) -> Result<std::sync::Arc<dyn shoal_kv::KvStore>>,
) -> Result<bool> {
    if path
        .try_exists()
        .map_err(Error::io("cannot look for", path))?
    {
        return Ok(false);
    }
    let mut creating = path.as_os_str().to_owned();
    creating.push(CREATING_SUFFIX);
    let creating = PathBuf::from(creating);
    match std::fs::remove_dir_all(&creating) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("cannot remove", &creating)(e));
        }
        _ => {}
    }
    {
        let kv = shoal_kv::Kv::open_with_cache(open(&creating)?, 0)?;
        kv.commit_durable()?;
    } // Closed: the engine's threads have stopped and its lock is released.
    sync_tree(&creating)?;
    std::fs::rename(&creating, path).map_err(Error::io("cannot rename", &creating))?;
    if let Some(store_dir) = path.parent() {
        sync_dir(store_dir)?;
    }
    Ok(true)
}

/// How long [`open_created`] waits for the lock of an engine directory just created.
const CREATED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `open`, and if the engine directory was `created` just now, runs it again while
/// it reports the directory locked, for up to [`CREATED_LOCK_WAIT`]. Nothing else can hold
/// that lock (the caller holds the store's `LOCK`), but closing the engine that built the
/// directory releases its lock only once no process holds a copy of the lock file's
/// descriptor, and a child this process is spawning holds copies until it execs. Without
/// the wait, 2 of 244 stores created while another thread spawned processes (the checks of
/// `killed_creation` in tests/crash.rs) were refused as locked.
fn open_created<T>(created: bool, open: impl Fn() -> shoal_kv::Result<T>) -> shoal_kv::Result<T> {
    let deadline = std::time::Instant::now() + CREATED_LOCK_WAIT;
    loop {
        match open() {
            Err(shoal_kv::Error::StoreLocked { .. })
                if created && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            done => return done,
        }
    }
}

/// `opened`, the engine opened at `path`; or, for a read-only open of storage the engine
/// cannot open (it writes beside its files even to read), the engine opened by `open_at`
/// over a private copy of the files, kept alive in `snapshot`.
fn open_or_snapshot(
    opened: shoal_kv::Result<Arc<dyn shoal_kv::KvStore>>,
    read_only: bool,
    path: &Path,
    snapshot: &mut Option<tempfile::TempDir>,
    open_at: &dyn Fn(&Path) -> shoal_kv::Result<Arc<dyn shoal_kv::KvStore>>,
    locked: &dyn Fn(shoal_kv::Error) -> Error,
) -> Result<Arc<dyn shoal_kv::KvStore>> {
    match opened {
        Err(shoal_kv::Error::NoAccess { .. }) if read_only => {
            let copy = snapshot_engine(path)?;
            let kv = open_at(copy.path())?;
            *snapshot = Some(copy);
            Ok(kv)
        }
        other => other.map_err(locked),
    }
}

/// A private copy of an engine directory the engine cannot open in place (read-only
/// storage), in a temporary directory removed when the returned guard drops. The store's
/// lock is held shared meanwhile, so no writer changes the files while they are copied.
fn snapshot_engine(engine_dir: &Path) -> Result<tempfile::TempDir> {
    let copy = tempfile::Builder::new()
        .prefix("shoal-read-only-")
        .tempdir()
        .map_err(Error::io(
            "cannot create a temporary directory for",
            engine_dir,
        ))?;
    copy_tree(engine_dir, copy.path())?;
    Ok(copy)
}

/// Copies the regular files and directories under `from` into `to` (which exists).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(Error::io("cannot list", from))? {
        let entry = entry.map_err(Error::io("cannot list", from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(Error::io("cannot stat", &src))?;
        if kind.is_dir() {
            std::fs::create_dir(&dst).map_err(Error::io("cannot create", &dst))?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(Error::io("cannot copy", &src))?;
        }
    }
    Ok(())
}

/// fsyncs every file and directory under `dir`, and `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(Error::io("cannot list", dir))? {
        let entry = entry.map_err(Error::io("cannot list", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(Error::io("cannot stat", &path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(Error::io("cannot sync", &path))?;
        }
    }
    sync_dir(dir)
}
