//! `Store`: one directory, one backing, one memory budget, many actors.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, MAIN_DB, OpenFlags};

use crate::config::{Backing, Config, Durability};
use crate::error::{Error, Result};
use crate::memory::{self, MemoryReport};
use crate::names::validate_actor_name;
use crate::pool::Pool;

/// The directory of actor files inside a store (file backings).
const ACTORS_DIR: &str = "actors";

/// The lock file that keeps a store open in one process at a time.
const LOCK_FILE: &str = "LOCK";

#[cfg(feature = "kv-vfs")]
static NEXT_VFS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[derive(Debug)]
enum Engine {
    #[cfg(feature = "kv-vfs")]
    Kv(shoal_vfs::Vfs),
    Files {
        dir: PathBuf,
    },
}

/// Many actor databases behind one memory budget.
///
/// ```no_run
/// # fn main() -> Result<(), shoal::Error> {
/// let store = shoal::Store::open("./shoal-data", shoal::Config::default())?;
/// store.with_actor("task-42", |conn| {
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
    config: Config,
    engine: Engine,
    pool: Pool,
    _lock: File,
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
    pub io: Option<shoal_vfs::DbStats>,
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
    pub audit: Option<shoal_vfs::Audit>,
}

impl CheckReport {
    /// Whether both checks passed.
    pub fn is_ok(&self) -> bool {
        self.integrity == ["ok"] && self.audit.as_ref().is_none_or(|a| a.problems.is_empty())
    }
}

/// An actor's connection checked out of the store: derefs to [`rusqlite::Connection`] and
/// goes back to the awake set when dropped (an unfinished transaction is rolled back).
#[derive(Debug)]
pub struct Actor<'s> {
    store: &'s Store,
    name: String,
    conn: Option<Connection>,
}

impl std::ops::Deref for Actor<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Present from construction until drop.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("an Actor always holds its connection"))
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
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        create_private_dir(&dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("cannot open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::StoreLocked { path: dir }),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("cannot lock", &lock_path)(e));
            }
        }
        let engine = match config.backing {
            #[cfg(feature = "kv-vfs")]
            Backing::Kv => Engine::Kv(open_kv(&dir, &config)?),
            Backing::Files | Backing::FilesTuned => {
                let actors = dir.join(ACTORS_DIR);
                create_private_dir(&actors)?;
                Engine::Files { dir: actors }
            }
        };
        if config.backing.tuned() {
            shoal_vfs::sqlite::set_soft_heap_limit(
                i64::try_from(config.sqlite_heap_limit()).unwrap_or(i64::MAX),
            );
        }
        let pool = Pool::new(config.max_awake(), config.max_waking);
        Ok(Store {
            dir,
            config,
            engine,
            pool,
            _lock: lock,
        })
    }

    /// Opens an existing store; [`Error::NoStore`] if `dir` holds none (nothing is
    /// created).
    pub fn open_existing(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let dir = dir.as_ref();
        if !dir.join(LOCK_FILE).is_file() {
            return Err(Error::NoStore {
                path: dir.to_path_buf(),
            });
        }
        Store::open(dir, config)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The SQLite file of actor `name` on a file backing; `None` on the kv backing.
    pub fn actor_file(&self, name: &str) -> Option<PathBuf> {
        match &self.engine {
            #[cfg(feature = "kv-vfs")]
            Engine::Kv(_) => None,
            Engine::Files { dir } => Some(actor_path(dir, name)),
        }
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
        self.open_valid(name)
    }

    /// [`Store::open_actor`] for a name already validated.
    fn open_valid(&self, name: &str) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = match &self.engine {
            #[cfg(feature = "kv-vfs")]
            Engine::Kv(vfs) => Connection::open_with_flags_and_vfs(name, flags, vfs.name())?,
            Engine::Files { dir } => Connection::open_with_flags(actor_path(dir, name), flags)?,
        };
        self.tune(&mut conn)?;
        Ok(conn)
    }

    fn tune(&self, conn: &mut Connection) -> Result<()> {
        let t = &self.config.actor;
        conn.busy_timeout(t.busy_timeout)?;
        // An actor sees its own database only: ATTACH of any file (and VACUUM INTO,
        // which attaches its target) is denied; VACUUM's own temporary database ("")
        // stays allowed.
        conn.authorizer(Some(|ctx: AuthContext<'_>| match ctx.action {
            AuthAction::Attach { filename } if !filename.is_empty() => Authorization::Deny,
            _ => Authorization::Allow,
        }))?;
        if self.config.backing.tuned() {
            shoal_vfs::sqlite::set_lookaside(conn, t.lookaside_slot_size, t.lookaside_slots)?;
            conn.execute_batch(&format!(
                "PRAGMA cache_size = {}; PRAGMA mmap_size = {};",
                t.cache_pages, t.mmap_size
            ))?;
        }
        // The kv backing's durability is the VFS's default, set when the store registered
        // it (`open_kv`); files get it from `synchronous`.
        if matches!(self.engine, Engine::Files { .. }) {
            let sync = match self.config.durability {
                Durability::Full => "FULL",
                Durability::Relaxed => "NORMAL",
            };
            conn.execute_batch(&format!("PRAGMA synchronous = {sync};"))?;
        }
        Ok(())
    }

    /// Checks out actor `name` from the awake set, waking it (and creating it) if needed.
    pub fn actor(&self, name: &str) -> Result<Actor<'_>> {
        validate_actor_name(name)?;
        let (conn, _woke) = self.pool.checkout(name, || self.open_valid(name))?;
        Ok(Actor {
            store: self,
            name: name.to_owned(),
            conn: Some(conn),
        })
    }

    /// Runs `f` on actor `name`'s connection (waking the actor if needed) and returns it
    /// to the awake set.
    pub fn with_actor<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let actor = self.actor(name)?;
        Ok(f(&actor)?)
    }

    fn checkin(&self, name: String, conn: Connection) {
        if !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            self.pool.discard(conn);
            return;
        }
        if self.config.backing.tuned() {
            // An idle actor keeps no page cache: its pages are in the store.
            shoal_vfs::sqlite::release_memory(&conn);
        }
        self.pool.checkin(name, conn);
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
        Ok(match &self.engine {
            #[cfg(feature = "kv-vfs")]
            Engine::Kv(vfs) => vfs
                .kv()
                .lookup(name)?
                .is_some_and(|e| e.kind == shoal_kv::EntryKind::Database),
            Engine::Files { dir } => actor_path(dir, name).is_file(),
        })
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
        let mut names = match &self.engine {
            #[cfg(feature = "kv-vfs")]
            Engine::Kv(vfs) => vfs
                .kv()
                .list()?
                .into_iter()
                .filter(|(_, e)| e.kind == shoal_kv::EntryKind::Database)
                .map(|(n, _)| n)
                .collect(),
            Engine::Files { dir } => {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(dir).map_err(Error::io("cannot list", dir))? {
                    let entry = entry.map_err(Error::io("cannot list", dir))?;
                    let file = entry.file_name();
                    if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".db"))
                        && validate_actor_name(name).is_ok()
                    {
                        names.push(name.to_owned());
                    }
                }
                names
            }
        };
        names.sort();
        Ok(names)
    }

    /// Deletes actor `name` and everything it stored. Refused while a connection to it
    /// is checked out.
    pub fn delete_actor(&self, name: &str) -> Result<()> {
        self.require(name)?;
        self.pool.sleep(name);
        match &self.engine {
            #[cfg(feature = "kv-vfs")]
            Engine::Kv(vfs) => vfs.delete_database(name).map_err(|e| match e {
                shoal_vfs::Error::InUse(_) => Error::ActorInUse(name.to_owned()),
                other => other.into(),
            }),
            Engine::Files { dir } => {
                let path = actor_path(dir, name);
                std::fs::remove_file(&path).map_err(Error::io("cannot delete", &path))?;
                let journal = dir.join(format!("{name}.db-journal"));
                match std::fs::remove_file(&journal) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(Error::io("cannot delete", journal)(e))
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Size and I/O counters of actor `name`.
    pub fn actor_stats(&self, name: &str) -> Result<ActorStats> {
        self.require(name)?;
        let (size, io) = match &self.engine {
            #[cfg(feature = "kv-vfs")]
            Engine::Kv(vfs) => (vfs.file_size(name)?.unwrap_or(0), vfs.stats(name)?),
            Engine::Files { dir } => {
                let path = actor_path(dir, name);
                let meta = std::fs::metadata(&path).map_err(Error::io("cannot stat", &path))?;
                (meta.len(), None)
            }
        };
        Ok(ActorStats {
            name: name.to_owned(),
            size,
            io,
        })
    }

    /// Writes actor `name` to `path` as a standard SQLite database file (which the
    /// sqlite3 shell opens). Refuses to overwrite an existing file.
    pub fn export_actor(&self, name: &str, path: impl AsRef<Path>) -> Result<()> {
        self.require(name)?;
        let path = path.as_ref();
        if path.exists() {
            return Err(Error::FileExists {
                path: path.to_path_buf(),
            });
        }
        let actor = self.actor(name)?;
        let result = actor.backup(MAIN_DB, path, None::<fn(rusqlite::backup::Progress)>);
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        Ok(result?)
    }

    /// Creates actor `name` from the SQLite database file at `path`. Refuses an existing
    /// actor, and a file that is not a sound SQLite database; on any failure nothing is
    /// left behind.
    pub fn import_actor(&self, path: impl AsRef<Path>, name: &str) -> Result<()> {
        let path = path.as_ref();
        validate_actor_name(name)?;
        if self.actor_exists(name)? {
            return Err(Error::ActorExists(name.to_owned()));
        }
        check_sqlite_header(path)?;
        let source = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| not_sqlite(path, e))?;
        let check: String = source
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| not_sqlite(path, e))?;
        if check != "ok" {
            return Err(Error::NotSqlite {
                path: path.to_path_buf(),
                reason: format!("quick_check failed: {check}"),
            });
        }
        let imported = (|| -> Result<()> {
            let mut target = self.open_actor(name)?;
            let backup = rusqlite::backup::Backup::new(&source, &mut target)?;
            backup.run_to_completion(1024, std::time::Duration::ZERO, None)?;
            Ok(())
        })();
        if imported.is_err() && self.actor_exists(name).unwrap_or(false) {
            let _ = self.delete_actor(name);
        }
        imported
    }

    /// Runs `PRAGMA integrity_check` on actor `name` and, with the kv backing, audits the
    /// checksum of every stored record.
    pub fn check_actor(&self, name: &str) -> Result<CheckReport> {
        self.require(name)?;
        let integrity = {
            let actor = self.actor(name)?;
            let mut stmt = actor.prepare("PRAGMA integrity_check")?;
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?
        };
        let audit = match &self.engine {
            #[cfg(feature = "kv-vfs")]
            Engine::Kv(vfs) => vfs.audit(name)?,
            Engine::Files { .. } => None,
        };
        Ok(CheckReport {
            name: name.to_owned(),
            integrity,
            audit,
        })
    }

    /// Memory as the store and the kernel see it now.
    pub fn memory(&self) -> MemoryReport {
        let [rss, anon, file] = memory::rss_parts_kb();
        MemoryReport {
            awake: self.pool.awake(),
            sqlite_heap: shoal_vfs::sqlite::memory_used(),
            kv_cache_capacity: match &self.engine {
                #[cfg(feature = "kv-vfs")]
                Engine::Kv(_) => self.config.kv_cache_bytes(),
                Engine::Files { .. } => 0,
            },
            rss_kb: rss.unwrap_or(0),
            rss_anon_kb: anon.unwrap_or(0),
            rss_file_kb: file.unwrap_or(0),
        }
    }

    /// The kv backing's VFS (for counters and tests); `None` for file backings.
    #[cfg(feature = "kv-vfs")]
    pub fn vfs(&self) -> Option<&shoal_vfs::Vfs> {
        match &self.engine {
            Engine::Kv(vfs) => Some(vfs),
            Engine::Files { .. } => None,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Idle connections close before the VFS they use is unregistered.
        self.pool.sleep_all();
    }
}

#[cfg(feature = "kv-vfs")]
fn open_kv(dir: &Path, config: &Config) -> Result<shoal_vfs::Vfs> {
    use crate::config::KvEngine;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let locked = |e: shoal_kv::Error| match e {
        shoal_kv::Error::StoreLocked { .. } => Error::StoreLocked {
            path: dir.to_path_buf(),
        },
        other => other.into(),
    };
    // Each engine keeps its own directory: their files are not interchangeable.
    let backend: Arc<dyn shoal_kv::KvStore> = match config.kv_engine {
        KvEngine::Fjall => {
            let mut fjall = shoal_kv::FjallConfig::new(dir.join("kv-fjall"));
            fjall.cache_capacity = config.kv_cache_bytes() / 2;
            fjall.write_buffer = config.kv_write_buffer_bytes();
            Arc::new(shoal_kv::FjallKv::open(&fjall).map_err(locked)?)
        }
        KvEngine::Sled => {
            let mut sled = shoal_kv::SledConfig::new(dir.join("kv-sled"));
            sled.cache_capacity = config.kv_cache_bytes() / 2;
            Arc::new(shoal_kv::SledKv::open(&sled).map_err(locked)?)
        }
    };
    // Half the kv share is the backend's own cache, half the verified-chunk cache above it.
    let read_cache = usize::try_from(config.kv_cache_bytes() / 2).unwrap_or(usize::MAX);
    let kv = Arc::new(shoal_kv::Kv::open_with_cache(backend, read_cache)?);
    let name = format!("shoal-{}", NEXT_VFS.fetch_add(1, Ordering::Relaxed));
    Ok(shoal_vfs::register(
        kv,
        shoal_vfs::VfsOptions {
            name,
            durability: match config.durability {
                Durability::Full => shoal_vfs::Durability::Full,
                Durability::Relaxed => shoal_vfs::Durability::Relaxed,
            },
        },
    )?)
}

fn actor_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.db"))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(Error::io("cannot create", dir))
}

fn check_sqlite_header(path: &Path) -> Result<()> {
    let mut file = File::open(path).map_err(Error::io("cannot read", path))?;
    let mut header = [0u8; 16];
    match file.read_exact(&mut header) {
        Ok(()) if &header == b"SQLite format 3\0" => Ok(()),
        Ok(()) => Err(Error::NotSqlite {
            path: path.to_path_buf(),
            reason: "it does not start with the SQLite header".into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::NotSqlite {
            path: path.to_path_buf(),
            reason: "it is shorter than a SQLite header".into(),
        }),
        Err(e) => Err(Error::io("cannot read", path)(e)),
    }
}

fn not_sqlite(path: &Path, e: rusqlite::Error) -> Error {
    Error::NotSqlite {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
