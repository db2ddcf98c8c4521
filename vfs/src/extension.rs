//! The loadable extension's safe half (feature `extension`): the `shoal` VFS a host
//! loads into its own SQLite, the store it opens on first use, and the SQL functions.
//! The entry points SQLite calls are in `ffi/extension.rs`.
//!
//! What a host gets, once per process whichever library loaded it:
//! - the VFS `shoal` (a [`DeferredVfs`]): databases open as `file:NAME?vfs=shoal&store=DIR`,
//!   or by name alone where shoal is the default VFS; the store and budget come from the
//!   URI or the environment (`SHOAL_STORE`, `SHOAL_BUDGET_MB`);
//! - the store layout the `shoal` command and the library use (`DIR/LOCK`, `DIR/kv-fjall`),
//!   so one store can be used from a host and inspected with `shoal`, one process at a
//!   time: the store's `LOCK` is held while the process lives;
//! - the memory budget split as the library splits it (`Config` in the facade): a quarter
//!   for the kv's caches (at least 4 MiB), a sixteenth for its write buffer (at least 4
//!   MiB), half as SQLite's soft heap limit, an eighth for temp files, a sixteenth (at
//!   least 1 MiB) for the pages of open transactions before they stage in the kv;
//! - `journal_mode=MEMORY` on every shoal database a connection opens (set as the
//!   connection opens): commits need no stored journal;
//! - SQL functions on every connection: `shoal_export(name, path)`, `shoal_check(name)`
//!   and `shoal_last_error()`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::{Connection, OpenFlags};
use shoal_kv::Kv;

use crate::deferred::{DeferredVfs, StoreRequest};
use crate::error::{Error, Result};
use crate::ffi::{RegisteredVfs, register_as};
use crate::{Durability, VfsOptions};

/// The VFS name a host opens databases with.
pub(crate) const VFS_NAME: &str = "shoal";

/// The store's lock file and its engine directory: the layout of the facade's stores.
const LOCK_FILE: &str = "LOCK";
const ENGINE_DIR: &str = "kv-fjall";
const CREATING_SUFFIX: &str = ".creating";
/// How long an open waits for the store's lock before calling it held elsewhere.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The registration, made by the first load and kept for the process.
static REGISTERED: Mutex<Option<&'static RegisteredVfs<DeferredVfs>>> = Mutex::new(None);

/// Registers the `shoal` VFS (once per process), as the default VFS if `make_default`.
pub(crate) fn register(make_default: bool) -> Result<&'static RegisteredVfs<DeferredVfs>> {
    let mut registered = REGISTERED.lock();
    if let Some(reg) = *registered {
        if make_default {
            reg.make_default()?;
        }
        return Ok(reg);
    }
    let vfs = Arc::new(DeferredVfs::new(Box::new(open_store)));
    let reg: &'static RegisteredVfs<DeferredVfs> =
        Box::leak(Box::new(register_as(VFS_NAME, vfs, make_default)?));
    *registered = Some(reg);
    Ok(reg)
}

/// The registration, if a load made it.
pub(crate) fn registered() -> Option<&'static RegisteredVfs<DeferredVfs>> {
    *REGISTERED.lock()
}

/// Sets up a connection as it opens: the SQL functions, and, if its main database is a
/// shoal one, `journal_mode=MEMORY`. An error fails the connection's open with its text,
/// which is how a store that could not be opened is reported (see `deferred.rs`).
pub(crate) fn set_up(conn: &Connection, shoal_database: bool) -> rusqlite::Result<()> {
    add_functions(conn)?;
    if shoal_database {
        // No lookaside, as the library's connections (Config's lookaside_slots is 0).
        // Only possible while none of it is in use, so before the pragma below reads the
        // schema. (Under Bun it made no measured difference to RSS per awake actor.)
        let _ = crate::sqlite::set_lookaside(conn, 0, 0);
        conn.query_row("PRAGMA main.journal_mode = MEMORY", [], |_| Ok(()))?;
    }
    Ok(())
}

/// Adds shoal's SQL functions to `conn`. DIRECTONLY: a trigger or view in a database
/// cannot call them (they write files and read other databases).
pub(crate) fn add_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY;
    conn.create_scalar_function(c"shoal_export", 2, flags, |ctx| {
        let (name, path) = (text_arg(ctx, 0)?, text_arg(ctx, 1)?);
        export(&name, Path::new(&path)).map_err(user_error)?;
        Ok(path)
    })?;
    conn.create_scalar_function(c"shoal_check", 1, flags, |ctx| {
        check(&text_arg(ctx, 0)?).map_err(user_error)
    })?;
    conn.create_scalar_function(c"shoal_last_error", 0, flags, |_| {
        Ok(crate::take_last_failure().map(|(_, message)| message))
    })?;
    Ok(())
}

fn text_arg(ctx: &Context<'_>, at: usize) -> rusqlite::Result<String> {
    ctx.get::<String>(at)
}

fn user_error(err: Error) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(format!("shoal: {err}").into())
}

/// The kv of the store in use, or an error saying none is open.
fn store_kv() -> Result<Arc<Kv>> {
    registered()
        .and_then(|reg| reg.state().kv())
        .ok_or_else(|| Error::Refused("no shoal store is open in this process yet".into()))
}

/// A connection to database `name` of the store in use.
fn open_database(name: &str, flags: OpenFlags) -> Result<Connection> {
    store_kv()?
        .lookup(name)?
        .ok_or_else(|| Error::Refused(format!("no database named {name:?} in the store")))?;
    let conn = Connection::open_with_flags_and_vfs(name, flags, VFS_NAME).map_err(sqlite_error)?;
    Ok(conn)
}

/// An I/O failure doing `what` to `at`, as the error SQLite reports.
fn io(what: &'static str, at: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let at = at.display().to_string();
    move |e| Error::Refused(format!("{what} {at}: {e}"))
}

fn sqlite_error(err: rusqlite::Error) -> Error {
    Error::Refused(err.to_string())
}

/// Writes database `name` to `path` as a plain SQLite file (SQLite's unix VFS), whole or
/// not at all: the copy is built beside `path` and linked into place, never replacing a
/// file already there.
fn export(name: &str, path: &Path) -> Result<()> {
    let source = open_database(name, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut staging = path.as_os_str().to_owned();
    staging.push(".shoal-export");
    let staging = PathBuf::from(staging);
    if path.exists() {
        return Err(Error::Refused(format!(
            "{} exists; shoal_export never replaces a file",
            path.display()
        )));
    }
    match std::fs::remove_file(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("cannot remove", &staging)(e));
        }
        _ => {}
    }
    let copied = (|| -> Result<()> {
        let mut target = Connection::open_with_flags_and_vfs(
            &staging,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            "unix",
        )
        .map_err(sqlite_error)?;
        let backup = rusqlite::backup::Backup::new(&source, &mut target).map_err(sqlite_error)?;
        backup
            .run_to_completion(1024, std::time::Duration::ZERO, None)
            .map_err(sqlite_error)?;
        drop(backup);
        target.close().map_err(|(_, e)| sqlite_error(e))?;
        File::open(&staging)
            .and_then(|f| f.sync_all())
            .map_err(io("cannot sync", &staging))?;
        std::fs::hard_link(&staging, path).map_err(io("cannot create", path))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&staging);
    copied
}

/// `integrity_check` of database `name`, then a checksum audit of every stored record:
/// `ok`, or every problem found, one per line.
fn check(name: &str) -> Result<String> {
    let conn = open_database(name, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut problems: Vec<String> = {
        let mut stmt = conn
            .prepare("PRAGMA integrity_check")
            .map_err(sqlite_error)?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(sqlite_error)?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sqlite_error)?
    };
    problems.retain(|p| p != "ok");
    if let Some(audit) = store_kv()?.audit(name)? {
        problems.extend(audit.problems);
    }
    Ok(if problems.is_empty() {
        "ok".to_owned()
    } else {
        problems.join("\n")
    })
}

/// Opens the store `request` names (see the module docs for its layout and budget).
fn open_store(request: &StoreRequest) -> Result<(Arc<Kv>, VfsOptions)> {
    let dir = &request.dir;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if !dir.is_dir() {
                return Err(Error::Refused(format!(
                    "the store {} is not a directory",
                    dir.display()
                )));
            }
        }
        Err(e) => return Err(io("cannot create the store directory", dir)(e)),
    }
    let engine = dir.join(ENGINE_DIR);
    if !dir.join(LOCK_FILE).exists()
        && std::fs::read_dir(dir)
            .map_err(io("cannot list", dir))?
            .next()
            .is_some()
    {
        return Err(Error::Refused(format!(
            "{} is not a shoal store (it has files but no {LOCK_FILE}); name an empty or new \
             directory, or a store made by shoal",
            dir.display()
        )));
    }
    for other in ["kv-sled", "actors"] {
        if !engine.exists() && dir.join(other).exists() {
            return Err(Error::Refused(format!(
                "the store {} keeps its actors in {other}/, which the extension does not \
                 read (it opens stores on fjall, the default)",
                dir.display()
            )));
        }
    }
    lock_store(dir)?;
    let budget = request.budget;
    let mut fjall = shoal_kv::FjallConfig::new(&engine);
    let kv_cache = (budget / 4).max(4 << 20);
    fjall.cache_capacity = kv_cache / 2;
    fjall.write_buffer = (budget / 16).max(4 << 20);
    create_engine(&fjall)?;
    let backend = shoal_kv::FjallKv::open(&fjall)?;
    let read_cache = usize::try_from(kv_cache / 2).unwrap_or(usize::MAX);
    let kv = Arc::new(Kv::open_with_cache(Arc::new(backend), read_cache)?);
    crate::sqlite::set_soft_heap_limit(i64::try_from(budget / 2).unwrap_or(i64::MAX));
    let options = VfsOptions {
        name: VFS_NAME.to_owned(),
        durability: Durability::Full,
        temp_limit: budget / 8,
        overlay_limit: (budget / 16).max(1 << 20),
    };
    Ok((kv, options))
}

/// Takes the store's `LOCK` for the rest of the process, as the facade's `Store::open`
/// does: a store has one process at a time.
fn lock_store(dir: &Path) -> Result<()> {
    let path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Refused(format!("cannot open {}: {e}", path.display())))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Refused(format!(
                    "the store {} is locked by another process (a store is open in one \
                     process at a time)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Refused(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
    }
    // Held until the process exits: the extension stays loaded, and its store open.
    std::mem::forget(lock);
    Ok(())
}

/// Creates the engine directory all at once if it is missing, as the facade does (see
/// `create_if_missing` in its `backend/kv.rs`): built beside it, flushed, fsynced, then
/// renamed into place, so a crash leaves no half-made engine directory.
fn create_engine(fjall: &shoal_kv::FjallConfig) -> Result<()> {
    let path = &fjall.path;
    if path.exists() {
        return Ok(());
    }
    let mut creating = path.as_os_str().to_owned();
    creating.push(CREATING_SUFFIX);
    let creating = PathBuf::from(creating);
    match std::fs::remove_dir_all(&creating) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("cannot remove", &creating)(e));
        }
        _ => {}
    }
    {
        let config = shoal_kv::FjallConfig {
            path: creating.clone(),
            flush_every_ms: None,
            ..fjall.clone()
        };
        let kv = Kv::open_with_cache(Arc::new(shoal_kv::FjallKv::open(&config)?), 0)?;
        kv.commit_durable()?;
    }
    sync_tree(&creating).map_err(io("cannot sync", &creating))?;
    std::fs::rename(&creating, path).map_err(io("cannot rename", &creating))?;
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot sync", parent))?;
    }
    Ok(())
}

fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}
