//! `Store`: one directory, one backing, one memory budget, many actors.
//!
//! The store owns what every backing shares: the directory's lock, the layout check, the
//! awake set, connection tuning and reset, the staging directory. Where the actors live is
//! its [`Backend`] (`crate::backend`), chosen once when it opens.
//!
//! Only an explicit create ([`Store::actor`], [`Store::with_actor`],
//! [`Store::open_actor`], [`Store::import_actor`]) creates an actor: every other
//! operation opens its database without `SQLITE_OPEN_CREATE`, so racing a delete it
//! fails with [`Error::NoSuchActor`] instead of bringing the actor back empty. An import
//! is all or nothing: it copies into a hidden staging entry (kv) or file (files) and
//! makes it the actor with one atomic rename; leftovers of an interrupted import are
//! removed when the store opens.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rusqlite::{Connection, OpenFlags};

#[cfg(feature = "kv-vfs")]
use crate::backend::KvBacking;
use crate::backend::{Backend, FilesBacking, create_private_dir};
use crate::config::{Backing, Config, StoreLayout};
use crate::error::{Error, Result};
use crate::memory::{self, MemoryReport};
use crate::names::validate_actor_name;
use crate::pool::Pool;
use crate::reset::{self, ActorConn, Defaults};
use crate::transfer;

/// The lock file that keeps a store open in one process at a time.
const LOCK_FILE: &str = "LOCK";

/// Where imports stage their copies; emptied when the store opens.
const STAGING_DIR: &str = "staging";

/// Many actor databases behind one memory budget.
///
/// # Errors on commit
///
/// A commit that returns an I/O error (`SQLITE_IOERR_*`, typically a failed flush of the
/// store) has an **unknown outcome**, as with a database server whose connection drops
/// during COMMIT: the transaction may or may not be in the store when it is reopened (a
/// failed flush refuses further writes until then). To tell, write an idempotency key in
/// the transaction itself (a row with a unique id of the operation) and look for it
/// after reopening; docs/reliability.md ("Errors on commit") has the pattern.
///
/// ```no_run
/// # fn main() -> Result<(), shoal::Error> {
/// let store = shoal::Store::open("./shoal-data", shoal::Config::default())?;
/// store.with_actor("task-42", |conn| -> shoal::Result<_> {
///     conn.execute_batch("CREATE TABLE IF NOT EXISTS notes(body TEXT)")?;
///     conn.execute("INSERT INTO notes VALUES (?1)", ["hello"])?;
///     Ok(())
/// })?;
/// let actor = store.actor("task-42")?; // a guard that derefs to rusqlite::Connection
/// let n: i64 = actor.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?;
/// # let _ = n; Ok(()) }
/// ```
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Absolute, so SQLite never reads a staged file's name as a URI.
    staging: PathBuf,
    config: Config,
    backend: Box<dyn Backend>,
    pool: Pool<ActorConn>,
    /// What every checkout starts from, read from the first tuned connection.
    defaults: OnceLock<Defaults>,
    /// Opened with [`Store::open_read_only`].
    read_only: bool,
    _lock: StoreLock,
}

/// What an open may do to the store directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    /// Create the store if missing.
    Create,
    /// As `Create`, beside other layouts in the same directory.
    Alongside,
    /// Open a store that exists.
    Existing,
    /// Open a store that exists, for reading only.
    ReadOnly,
}

/// What [`Store::actor_stats`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActorStats {
    /// The actor.
    pub name: String,
    /// Size of its database in bytes.
    pub size: u64,
    /// How its commits and reads travelled (kv backing only).
    pub io: Option<crate::DbStats>,
}

/// What [`Store::check_actor`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckReport {
    /// The actor.
    pub name: String,
    /// `PRAGMA integrity_check`'s lines (`["ok"]` when sound).
    pub integrity: Vec<String>,
    /// The checksum audit of every stored record (kv backing only).
    #[cfg(feature = "kv-vfs")]
    pub audit: Option<crate::Audit>,
}

impl CheckReport {
    /// Whether both checks passed.
    pub fn is_ok(&self) -> bool {
        #[cfg(feature = "kv-vfs")]
        if self.audit.as_ref().is_some_and(|a| !a.problems.is_empty()) {
            return false;
        }
        self.integrity == ["ok"]
    }
}

/// An actor's connection checked out of the store: derefs to [`rusqlite::Connection`] and
/// goes back to the awake set when dropped (an unfinished transaction is rolled back).
#[derive(Debug)]
pub struct Actor<'s> {
    store: &'s Store,
    name: String,
    conn: Option<ActorConn>,
}

impl std::ops::Deref for Actor<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Present from construction until drop.
        &self
            .conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("an Actor always holds its connection"))
            .conn
    }
}

impl Actor<'_> {
    /// The actor's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Actor<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.store.checkin(std::mem::take(&mut self.name), conn);
        }
    }
}

impl Store {
    /// Opens the store in `dir` (created owner-only if missing): takes the directory's
    /// lock, opens the backing sized from the budget, and sets SQLite's soft heap limit.
    /// A store that keeps its actors in another backing or kv engine than `config` asks
    /// for is refused ([`Error::WrongLayout`]).
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        Store::open_on(dir.as_ref(), config, None, OpenMode::Create)
    }

    /// As [`Store::open`], in a directory that may hold actors of other backings or kv
    /// engines too (each keeps its own subdirectory), opening or creating this one's
    /// beside them: for comparing backings over one directory, as `shoal wake` does.
    pub fn open_alongside(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        Store::open_on(dir.as_ref(), config, None, OpenMode::Alongside)
    }

    /// Opens an existing store for reading: nothing in it is created or changed. The
    /// lock file is opened for writing and locked exclusively where that is allowed, else
    /// opened read-only and locked shared (a store on read-only storage, or without write
    /// permission). Actor connections are read-only (`SQLITE_OPEN_READONLY`: a write is
    /// SQLite's "attempt to write a readonly database"), unknown actors are
    /// [`Error::NoSuchActor`] instead of being created, [`Store::delete_actor`] and
    /// [`Store::import_actor`] fail with [`Error::ReadOnly`], and the leftovers of an
    /// interrupted import are left for the next writable open to remove.
    ///
    /// With the kv backing the engine needs write access to its files: neither fjall 3 nor
    /// sled 0.34 has a read-only mode (fjall replays its journal and reopens it for
    /// appending at every open, sled locks its data file for writing and writes a
    /// snapshot). Where the engine can open its files, nothing is written through it;
    /// where it cannot (read-only storage, no write permission), the engine's files are
    /// copied into a private temporary directory, opened there, and the copy is removed
    /// when the store is dropped. The copy is consistent (this open holds the store's
    /// lock shared, so no writer runs) but costs time and temporary disk in proportion to
    /// the store's size.
    pub fn open_read_only(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        Store::open_on(dir.as_ref(), config, None, OpenMode::ReadOnly)
    }

    /// [`Store::open`] in `mode`, on `backend` instead of the engine `config` names
    /// (tests).
    fn open_on(
        dir: &Path,
        config: Config,
        #[cfg(feature = "kv-vfs")] backend: Option<std::sync::Arc<dyn shoal_kv::KvStore>>,
        #[cfg(not(feature = "kv-vfs"))] _backend: Option<()>,
        mode: OpenMode,
    ) -> Result<Store> {
        let dir = dir.to_path_buf();
        #[cfg(feature = "kv-vfs")]
        let on_server =
            config.backing.is_kv() && config.kv_engine == crate::config::KvEngine::Postgres;
        #[cfg(feature = "kv-vfs")]
        let mode = match mode {
            // The store is the server; the directory is only this host's, made on demand
            // (for a read-only open too: it holds the lock, not the actors).
            OpenMode::Existing if on_server => OpenMode::Create,
            OpenMode::ReadOnly if on_server => {
                create_private_dir(&dir.join(StoreLayout::of(&config).dir_name()))?;
                let lock = dir.join(LOCK_FILE);
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&lock)
                    .map_err(Error::io("cannot create", &lock))?;
                mode
            }
            mode => mode,
        };
        if matches!(mode, OpenMode::Create | OpenMode::Alongside) {
            refuse_non_directory(&dir)?;
            create_private_dir(&dir)?;
        } else {
            check_existing(&dir)?;
        }
        let lock = lock_store(&dir, mode)?;
        if mode != OpenMode::Alongside {
            check_layout(&dir, &config, mode)?;
        }
        let read_only = mode == OpenMode::ReadOnly;
        let staging = dir.join(STAGING_DIR);
        let staging =
            std::path::absolute(&staging).map_err(Error::io("cannot resolve", &staging))?;
        // Nothing else has the store open: what is staged is left from an interrupted
        // import.
        if !read_only {
            match std::fs::remove_dir_all(&staging) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("cannot clean", &staging)(e));
                }
                _ => create_private_dir(&staging)?,
            }
        }
        let backend: Box<dyn Backend> = match config.backing {
            #[cfg(feature = "kv-vfs")]
            Backing::Kv => Box::new(KvBacking::open(&dir, &config, backend, read_only)?),
            Backing::Files | Backing::FilesTuned => Box::new(FilesBacking::open(&dir, read_only)?),
        };
        if config.backing.tuned() {
            shoal_vfs::sqlite::set_soft_heap_limit(
                i64::try_from(config.sqlite_heap_limit()).unwrap_or(i64::MAX),
            );
        }
        let pool = Pool::new(config.max_awake(), config.max_waking);
        Ok(Store {
            dir,
            staging,
            config,
            backend,
            pool,
            defaults: OnceLock::new(),
            read_only,
            _lock: lock,
        })
    }

    /// Opens an existing store; [`Error::NoStore`] if `dir` holds none (nothing is
    /// created), and an [`Error::Io`] saying what is wrong if it cannot be looked at
    /// (not a directory, no permission).
    pub fn open_existing(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        Store::open_on(dir.as_ref(), config, None, OpenMode::Existing)
    }

    /// Whether the store was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Fails with [`Error::ReadOnly`] on a read-only store.
    fn writable(&self) -> Result<()> {
        if self.read_only {
            Err(Error::ReadOnly {
                path: self.dir.clone(),
            })
        } else {
            Ok(())
        }
    }

    /// `e` from SQLite, with what lies behind it. SQLite's own message is generic, so
    /// the reason the VFS gave for the failure on this thread is added to it. And after a
    /// write failed in a way that left the store unusable (a full disk, a failed flush),
    /// SQLite reports what it ran into next (a disk I/O error, a malformed database image
    /// where its rollback could not be written), not why: on such a store an I/O,
    /// full-disk or corruption error from SQLite is [`Error::DiskFull`] when the first
    /// failure was a full disk, and otherwise says that the store refuses writes until
    /// it is reopened, and why. On a read-only store, SQLite's refusal to roll back an
    /// interrupted transaction ("attempt to write a readonly database") is
    /// [`Error::RollbackNeeded`]. Other errors are [`Error::Sqlite`]. The store's own
    /// methods do this; callers using a connection from [`Store::actor`] directly can too.
    pub fn explain_sqlite_error(&self, e: rusqlite::Error) -> Error {
        if self.read_only
            && e.sqlite_error()
                .is_some_and(|s| s.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK)
        {
            return Error::RollbackNeeded {
                path: self.dir.clone(),
            };
        }
        self.backend.explain(e)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The SQLite file of actor `name` on a file backing; `None` on the kv backing.
    pub fn actor_file(&self, name: &str) -> Option<PathBuf> {
        self.backend.actor_file(name)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backing in use.
    pub fn backing(&self) -> Backing {
        self.config.backing
    }

    /// Opens a new connection to actor `name`, creating the actor if it does not exist.
    /// The connection is tuned for actors and cannot ATTACH other databases. It is the
    /// caller's: the awake set neither counts nor closes it (see [`Store::actor`]).
    pub fn open_actor(&self, name: &str) -> Result<Connection> {
        validate_actor_name(name)?;
        Ok(self.open_valid(name, Create::Yes)?.conn)
    }

    /// Opens a tuned connection to actor `name` (already validated); with
    /// [`Create::No`], [`Error::NoSuchActor`] if it does not exist.
    fn open_valid(&self, name: &str, create: Create) -> Result<ActorConn> {
        let flags = if self.read_only {
            self.require(name)?;
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else if create == Create::Yes {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let conn = match self.backend.open(name, flags) {
            Ok(conn) => conn,
            // Both VFSes refuse to open a missing database without CREATE.
            Err(_) if create == Create::No && !self.actor_exists(name)? => {
                return Err(Error::NoSuchActor(name.to_owned()));
            }
            Err(e) => return Err(self.explain_sqlite_error(e)),
        };
        // Its pragmas are the connection's first reads (of the schema).
        let explained = |e| match e {
            Error::Sqlite(e) => self.explain_sqlite_error(e),
            other => other,
        };
        let conn = self.tune(reset::watch(conn)?).map_err(explained)?;
        if self.defaults.get().is_none() {
            let defaults =
                Defaults::read(&conn, self.config.actor.busy_timeout).map_err(explained)?;
            let _ = self.defaults.set(defaults);
        }
        Ok(conn)
    }

    fn tune(&self, mut actor: ActorConn) -> Result<ActorConn> {
        let t = &self.config.actor;
        let conn = &mut actor.conn;
        conn.busy_timeout(t.busy_timeout)?;
        if self.config.backing.tuned() {
            shoal_vfs::sqlite::set_lookaside(conn, t.lookaside_slot_size, t.lookaside_slots)?;
            conn.execute_batch(&format!(
                "PRAGMA cache_size = {}; PRAGMA mmap_size = {};",
                t.cache_pages, t.mmap_size
            ))?;
        }
        // The kv backing's durability is the VFS's default, set when the store registered
        // it; files get it from `synchronous`.
        if let Some(sync) = self.backend.synchronous(self.config.durability) {
            conn.execute_batch(&format!("PRAGMA synchronous = {sync};"))?;
        }
        Ok(actor.tuned())
    }

    /// Checks out actor `name` from the awake set, waking it (and creating it) if needed.
    ///
    /// Every checkout starts from the actor's defaults, whatever an earlier one did
    /// through the `&Connection` it was lent: an unfinished transaction is rolled back;
    /// connection PRAGMAs (`foreign_keys`, `cache_size`, `journal_mode`, `locking_mode`,
    /// `shoal_durability`, `synchronous`, ...), the busy timeout and the
    /// `sqlite3_db_config` flags are set back; a connection on which a checkout set any
    /// other PRAGMA or created TEMP objects is closed, and the next checkout opens a
    /// fresh one. The authorizer that denies ATTACH cannot be removed through a
    /// `&Connection` (rusqlite's `authorizer` takes `&mut`):
    ///
    /// ```compile_fail
    /// # fn f(store: &shoal::Store) -> Result<(), shoal::Error> {
    /// use shoal::rusqlite::hooks::{AuthContext, Authorization};
    /// let actor = store.actor("a")?;
    /// actor.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)?;
    /// # Ok(()) }
    /// ```
    ///
    /// Not undone: functions, collations, virtual-table modules and limits registered
    /// through rusqlite features this crate does not enable, process-wide settings
    /// (`soft_heap_limit`), and whatever is done through the raw handle.
    pub fn actor(&self, name: &str) -> Result<Actor<'_>> {
        validate_actor_name(name)?;
        self.checkout(name, Create::Yes)
    }

    /// Checks out actor `name` if it exists: [`Error::NoSuchActor`] otherwise, even
    /// when it is deleted meanwhile; never creates it.
    pub fn existing_actor(&self, name: &str) -> Result<Actor<'_>> {
        self.require(name)?;
        self.checkout(name, Create::No)
    }

    fn checkout(&self, name: &str, create: Create) -> Result<Actor<'_>> {
        let (mut conn, _woke) = self.pool.checkout(name, || self.open_valid(name, create))?;
        // An awake connection whose actor moved to another host (or changed underneath)
        // while it sat idle is closed, not handed out: the open that replaces it acquires
        // the lease again and reads afresh.
        if self.backend.needs_reopen(name) {
            self.pool.discard(conn);
            conn = self
                .pool
                .checkout(name, || self.open_valid(name, create))?
                .0;
        }
        Ok(Actor {
            store: self,
            name: name.to_owned(),
            conn: Some(conn),
        })
    }

    /// Runs `f` on actor `name`'s connection (waking, and creating, it if needed) and
    /// returns it to the awake set. `f` returns the caller's own error type `E`, which
    /// takes a [`shoal::Error`](Error) for a failure to wake the actor:
    ///
    /// ```no_run
    /// # fn f(store: &shoal::Store) -> Result<(), shoal::Error> {
    /// let n: i64 = store.with_actor("task-42", |c| -> shoal::Result<i64> {
    ///     c.execute_batch("CREATE TABLE IF NOT EXISTS notes(body TEXT)")?;
    ///     Ok(c.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?)
    /// })?;
    /// # let _ = n; Ok(()) }
    /// ```
    ///
    /// An I/O error from a commit in `f` leaves the commit's outcome unknown (see
    /// [`Store`], "Errors on commit"). When `E` is [`shoal::Error`](Error), SQLite's errors
    /// that `f` passed on ([`Error::Sqlite`]) are explained as
    /// [`Store::explain_sqlite_error`] does: one that the kv backing caused carries the
    /// VFS's reason in its message (SQLite's own is generic: a full temp space is
    /// "database or disk is full", here followed by the limit). Another `E` can call
    /// [`Store::explain_sqlite_error`] inside `f`.
    pub fn with_actor<T, E>(
        &self,
        name: &str,
        f: impl FnOnce(&Connection) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        E: From<Error> + 'static,
    {
        let actor = self.actor(name)?;
        self.backend.forget_failure();
        f(&actor).map_err(|e| self.explained(e))
    }

    /// `e`, explained by [`Store::explain_sqlite_error`] if it is an [`Error::Sqlite`].
    fn explained<E: 'static>(&self, e: E) -> E {
        let mut slot = Some(e);
        if let Some(ours) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Error>>() {
            *ours = ours.take().map(|e| match e {
                Error::Sqlite(e) => self.explain_sqlite_error(e),
                other => other,
            });
        }
        slot.unwrap_or_else(|| unreachable!("put back above"))
    }

    fn checkin(&self, name: String, mut actor: ActorConn) {
        let conn = &actor.conn;
        // Another host took the actor over (its writes are fenced), or a commit found the
        // stored database changed underneath: this connection's view is stale. Closing it
        // gives up the lease; the next use acquires it again and reads afresh.
        if self.backend.needs_reopen(&name) {
            self.pool.discard(actor);
            return;
        }
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            self.pool.discard(actor);
            return;
        }
        let reset = match self.defaults.get() {
            Some(defaults) => actor.reset(defaults),
            None => Ok(false),
        };
        if !matches!(reset, Ok(true)) {
            self.pool.discard(actor);
            return;
        }
        if self.config.backing.tuned() {
            // An idle actor keeps no page cache: its pages are in the store.
            // Best effort, as before: a failure only leaves the cache as it was.
            let _ = actor.conn.release_memory();
        }
        self.pool.checkin(name, actor);
    }

    /// Puts every idle actor to sleep (closes its connection) and gives the memory they
    /// held back to the kernel.
    pub fn sleep_all(&self) {
        self.pool.sleep_all();
        shoal_vfs::sqlite::trim_heap();
    }

    /// Actors with an open connection in the awake set.
    pub fn awake(&self) -> usize {
        self.pool.awake()
    }

    /// The bound on awake actors.
    pub fn max_awake(&self) -> usize {
        self.pool.max_awake()
    }

    /// Whether actor `name` exists.
    pub fn actor_exists(&self, name: &str) -> Result<bool> {
        validate_actor_name(name)?;
        self.backend.exists(name)
    }

    fn require(&self, name: &str) -> Result<()> {
        if self.actor_exists(name)? {
            Ok(())
        } else {
            Err(Error::NoSuchActor(name.to_owned()))
        }
    }

    /// Every actor's name, sorted.
    pub fn list_actors(&self) -> Result<Vec<String>> {
        let mut names = self.backend.list()?;
        names.sort();
        Ok(names)
    }

    /// Deletes actor `name` and everything it stored. Refused while a connection to it
    /// is checked out.
    pub fn delete_actor(&self, name: &str) -> Result<()> {
        self.writable()?;
        self.require(name)?;
        self.pool.sleep(name);
        self.backend.delete(name)
    }

    /// Size and I/O counters of actor `name`.
    pub fn actor_stats(&self, name: &str) -> Result<ActorStats> {
        self.require(name)?;
        let (size, io) = self.backend.stats(name)?;
        Ok(ActorStats {
            name: name.to_owned(),
            size,
            io,
        })
    }

    /// Writes actor `name` to `path` as a standard SQLite database file (which the
    /// sqlite3 shell opens), readable by its owner only. Refuses a `path` that exists as
    /// any kind of entry (a dangling symlink included). The file is written under a
    /// temporary name in the same directory and linked into place when complete, so a
    /// failed export leaves nothing behind (a killed one may leave a hidden `.tmp` file).
    pub fn export_actor(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.require(name)?;
        if path.symlink_metadata().is_ok() {
            return Err(Error::FileExists {
                path: path.to_path_buf(),
            });
        }
        let actor = self.existing_actor(name)?;
        transfer::export(&actor, path)
    }

    /// Creates actor `name` from the SQLite database file at `path` (the arguments in
    /// the order of [`Store::export_actor`]'s). Refuses an existing
    /// actor, anything but a regular file, a file that is not a sound SQLite database,
    /// and one with a hot journal beside it. A WAL-mode file is imported with the
    /// commits still in its `-wal`, as a rollback-journal database. The source is only
    /// read, never opened by SQLite, so nothing is written beside it; it must not be
    /// written by anything else meanwhile. All or nothing, a crash included: the copy
    /// becomes the actor with one atomic rename when it is complete.
    pub fn import_actor(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        validate_actor_name(name)?;
        self.writable()?;
        if self.actor_exists(name)? {
            return Err(Error::ActorExists(name.to_owned()));
        }
        let staged = transfer::stage(path, &self.staging)?;
        self.backend.import(&staged, name)
    }

    /// Runs `PRAGMA integrity_check` on actor `name` and, with the kv backing, audits the
    /// checksum of every stored record.
    pub fn check_actor(&self, name: &str) -> Result<CheckReport> {
        let integrity = {
            let actor = self.existing_actor(name)?;
            let lines = (|| {
                let mut stmt = actor.prepare("PRAGMA integrity_check")?;
                stmt.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })();
            lines.map_err(|e| self.explain_sqlite_error(e))?
        };
        let mut report = CheckReport {
            name: name.to_owned(),
            integrity,
            #[cfg(feature = "kv-vfs")]
            audit: None,
        };
        self.backend.check(&mut report)?;
        Ok(report)
    }

    /// Memory as the store and the kernel see it now.
    pub fn memory(&self) -> MemoryReport {
        let [rss, anon, file] = memory::rss_parts_kb();
        MemoryReport {
            awake: self.pool.awake(),
            sqlite_heap: shoal_vfs::sqlite::memory_used(),
            kv_cache_capacity: self.backend.cache_capacity(),
            rss_kb: rss.unwrap_or(0),
            rss_anon_kb: anon.unwrap_or(0),
            rss_file_kb: file.unwrap_or(0),
        }
    }

    #[cfg(feature = "kv-vfs")]
    fn history_vfs(&self, what: &'static str) -> Result<&shoal_vfs::Vfs> {
        self.backend.vfs().ok_or(Error::NeedsKv { what })
    }

    /// Actor `name`'s commits, oldest first (docs/design.md, "History").
    #[cfg(feature = "kv-vfs")]
    pub fn actor_history(&self, name: &str) -> Result<Vec<shoal_kv::CommitInfo>> {
        self.require(name)?;
        Ok(self.history_vfs("history")?.kv().history(name)?)
    }

    /// What actor `name`'s history holds on disk.
    #[cfg(feature = "kv-vfs")]
    pub fn actor_history_usage(&self, name: &str) -> Result<shoal_kv::HistoryUsage> {
        self.require(name)?;
        Ok(self.history_vfs("history")?.kv().history_usage(name)?)
    }

    /// Restores actor `name` in place, atomically, to `to`: one new commit whose state
    /// is the state at `to`, which restoring to the commit before it undoes. Returns its
    /// bookmark. Connections to the actor may stay open; refused while one is inside a
    /// transaction.
    #[cfg(feature = "kv-vfs")]
    pub fn restore_actor(
        &self,
        name: &str,
        to: &shoal_kv::PointInTime,
    ) -> Result<shoal_kv::Bookmark> {
        self.writable()?;
        self.require(name)?;
        Ok(self.history_vfs("restore")?.restore_database(name, to)?)
    }

    /// Forks actor `src` at `at` (its current state when `None`) into a new actor
    /// `new_name`, copying no page: the two share pages until either writes one, and are
    /// independent. Returns the bookmark of `src` forked.
    #[cfg(feature = "kv-vfs")]
    pub fn fork_actor(
        &self,
        src: &str,
        at: Option<&shoal_kv::PointInTime>,
        new_name: &str,
    ) -> Result<shoal_kv::Bookmark> {
        self.writable()?;
        validate_actor_name(new_name)?;
        self.require(src)?;
        if self.actor_exists(new_name)? {
            return Err(Error::ActorExists(new_name.to_owned()));
        }
        Ok(self.history_vfs("fork")?.fork_database(src, at, new_name)?)
    }

    /// Pins restore point `label` of actor `name` at `at` (its current state when
    /// `None`): it is never collected while pinned.
    #[cfg(feature = "kv-vfs")]
    pub fn pin_actor(
        &self,
        name: &str,
        label: &str,
        at: Option<&shoal_kv::PointInTime>,
    ) -> Result<shoal_kv::Bookmark> {
        self.writable()?;
        self.require(name)?;
        Ok(self.history_vfs("pin")?.kv().pin(name, label, at)?)
    }

    /// Removes restore point `label` of actor `name`.
    #[cfg(feature = "kv-vfs")]
    pub fn unpin_actor(&self, name: &str, label: &str) -> Result<()> {
        self.writable()?;
        self.require(name)?;
        Ok(self.history_vfs("unpin")?.kv().unpin(name, label)?)
    }

    /// Collects the history past its retention of every actor, one bounded pass at a
    /// time (no actor is locked between passes). Returns what was removed.
    #[cfg(feature = "kv-vfs")]
    pub fn collect_history(&self) -> Result<shoal_kv::Collected> {
        self.writable()?;
        let kv = self.history_vfs("collection")?.kv();
        let mut total = shoal_kv::Collected::default();
        for name in self.list_actors()? {
            loop {
                let pass = kv.collect_history(&name)?;
                total.commits += pass.commits;
                total.pages += pass.pages;
                total.bytes += pass.bytes;
                if !pass.more {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// The kv backing's VFS (for counters and tests); `None` for file backings.
    #[cfg(feature = "kv-vfs")]
    pub fn vfs(&self) -> Option<&shoal_vfs::Vfs> {
        self.backend.vfs()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Idle connections close before the VFS they use is unregistered.
        self.pool.sleep_all();
    }
}

/// Fails if `dir` exists and is not a directory.
fn refuse_non_directory(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(not_a_directory(dir)),
        _ => Ok(()),
    }
}

fn not_a_directory(dir: &Path) -> Error {
    Error::Io {
        what: "cannot open the store at",
        path: dir.to_path_buf(),
        cause: std::io::Error::new(std::io::ErrorKind::NotADirectory, "it is not a directory"),
    }
}

/// Checks that `dir` holds a store: [`Error::NoStore`] if there is nothing there, an
/// [`Error::Io`] naming the cause if it cannot be looked at or is not a directory.
fn check_existing(dir: &Path) -> Result<()> {
    let cannot = |cause| Error::Io {
        what: "cannot open the store at",
        path: dir.to_path_buf(),
        cause,
    };
    let no_store = || Error::NoStore {
        path: dir.to_path_buf(),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(not_a_directory(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_store()),
        Err(e) => return Err(cannot(e)),
    }
    match std::fs::metadata(dir.join(LOCK_FILE)) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(no_store()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(no_store()),
        Err(e) => Err(cannot(e)),
    }
}

/// Opens and locks the store's lock file: exclusively, or, for a read-only open of a lock
/// file that cannot be opened for writing, shared.
fn lock_store(dir: &Path, mode: OpenMode) -> Result<StoreLock> {
    let path = dir.join(LOCK_FILE);
    let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let writable = File::options()
        .create(matches!(mode, OpenMode::Create | OpenMode::Alongside))
        .truncate(false)
        .write(true)
        .open(&path);
    let (lock, shared) = match writable {
        Ok(file) => (file, false),
        Err(e)
            if mode == OpenMode::ReadOnly
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
        {
            (
                File::open(&path).map_err(Error::io("cannot open", &path))?,
                true,
            )
        }
        Err(e) => return Err(Error::io("cannot open", &path)(e)),
    };
    // A lock held by someone else is waited for briefly: a child process that another
    // thread is starting holds a copy of every open file, and so of the lock of a store
    // closed meanwhile, until it execs (seen as a reopen refused in parallel tests).
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let locked = if shared {
            lock.try_lock_shared()
        } else {
            lock.try_lock()
        };
        let here = || held_stores().contains(&key);
        match locked {
            Ok(()) => {
                held_stores().push(key.clone());
                return Ok(StoreLock { _file: lock, key });
            }
            Err(std::fs::TryLockError::WouldBlock) if here() => {
                return Err(Error::StoreOpenHere {
                    path: dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::StoreLocked {
                    path: dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("cannot lock", &path)(e));
            }
        }
    }
}

/// A store's lock, held while the `Store` lives. Stores of this process are also listed
/// (by canonical directory), so that a second open here is told apart from another
/// process's: an `flock` refuses both alike.
#[derive(Debug)]
struct StoreLock {
    _file: File,
    key: PathBuf,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let mut held = held_stores();
        if let Some(at) = held.iter().position(|k| *k == self.key) {
            held.swap_remove(at);
        }
    }
}

/// The directories of the stores this process holds open (one entry per `Store`).
fn held_stores() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    HELD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long an open waits for a store lock held elsewhere (see `lock_store`).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Refuses to open a store with another layout than the one it holds: each backing and
/// engine keeps its own subdirectory, and opening with another would start an empty store
/// beside the actors. A store holding more than one (made before this check) opens with
/// any of them. A read-only open of a store that holds none is [`Error::NoStore`]: there
/// is nothing to read, and nothing may be created.
fn check_layout(dir: &Path, config: &Config, mode: OpenMode) -> Result<()> {
    let asked = StoreLayout::of(config);
    let held: Vec<StoreLayout> = StoreLayout::ALL
        .into_iter()
        .filter(|layout| dir.join(layout.dir_name()).exists())
        .collect();
    match held.first() {
        _ if held.contains(&asked) => Ok(()),
        Some(&holds) => Err(Error::WrongLayout {
            path: dir.to_path_buf(),
            holds,
            asked,
        }),
        None if mode == OpenMode::ReadOnly => Err(Error::NoStore {
            path: dir.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// Whether an open may create the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Create {
    Yes,
    No,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn backings() -> Vec<Backing> {
        Backing::ALL.to_vec()
    }

    /// The race of export or check with delete, made deterministic: the actor is deleted
    /// between the existence check and the open. The open must fail, not create.
    #[test]
    fn an_open_after_the_existence_check_never_creates_a_deleted_actor() {
        for backing in backings() {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), Config::default().with_backing(backing)).unwrap();
            store
                .with_actor("gone", |c| {
                    c.execute_batch("CREATE TABLE t(x)").map_err(Error::from)
                })
                .unwrap();
            store.require("gone").unwrap();
            store.delete_actor("gone").unwrap();
            let err = store.checkout("gone", Create::No).unwrap_err();
            assert!(matches!(err, Error::NoSuchActor(_)), "{backing:?}: {err}");
            assert!(!store.actor_exists("gone").unwrap(), "{backing:?}");
        }
    }

    /// An I/O error on commit means "unknown outcome": here the flush fails after the
    /// commit's batch was applied, so the commit returns an error and yet is in the
    /// store after reopening. The idempotency key written in the same transaction tells
    /// the caller which it was, and the transaction is whole either way.
    #[cfg(feature = "kv-vfs")]
    #[test]
    fn a_failed_commit_may_have_landed_and_its_idempotency_key_tells() {
        use shoal_kv::{FaultOp, FaultyKv, MemKv};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let faulty = Arc::new(FaultyKv::new(MemKv::new()));
        let open = || {
            let backend: Arc<dyn shoal_kv::KvStore> = faulty.clone();
            Store::open_on(
                dir.path(),
                Config::default(),
                Some(backend),
                OpenMode::Create,
            )
            .unwrap()
        };
        let store = open();
        store
            .with_actor("acct", |c| -> Result<_> {
                Ok(c.execute_batch(
                    "CREATE TABLE ops(key TEXT PRIMARY KEY);
                     CREATE TABLE t(x);",
                )?)
            })
            .unwrap();
        faulty.fail_nth(FaultOp::Flush, 1); // also restarts the counts
        let committed = store.with_actor("acct", |c| -> Result<_> {
            Ok(c.execute_batch(
                "BEGIN;
                 INSERT INTO ops VALUES ('op-1');
                 INSERT INTO t VALUES (1), (2), (3);
                 COMMIT;",
            )?)
        });
        let err = committed.unwrap_err();
        assert!(err.to_string().contains("disk I/O error"), "{err}");
        // Batches applied before the failed flush (which the error came from).
        let applied = faulty.injected() == 1 && faulty.count(FaultOp::Batch) > 0;
        drop(store);
        faulty.clear();
        let store = open();
        let (landed, rows): (bool, i64) = store
            .with_actor("acct", |c| -> Result<_> {
                let landed =
                    c.query_row("SELECT count(*) FROM ops WHERE key = 'op-1'", [], |r| {
                        r.get::<_, i64>(0)
                    })? == 1;
                let rows = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
                Ok((landed, rows))
            })
            .unwrap();
        assert_eq!(rows, if landed { 3 } else { 0 }, "never torn");
        // The failed flush came after the commit's batch: the "failed" commit landed.
        assert_eq!(landed, applied);
        assert!(landed, "the fault should hit the commit's own flush");
    }
}
