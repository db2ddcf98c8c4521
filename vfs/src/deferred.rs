//! A shoal VFS registered before its store is known: what the loadable extension
//! registers when a host loads it, to serve whichever store the first database open
//! names.
//!
//! A host loads the extension into some connection and then opens actor databases by
//! name. The store (a directory) and the memory budget come with each main database's
//! open: the URI parameters `store` and `budget_mb` (`file:actor-42?vfs=shoal&store=/x`),
//! else the environment variables [`STORE_ENV`] and [`BUDGET_ENV`]. The invariants:
//! - one store per process: the first open that names one opens it, every later open
//!   uses it, and an open naming another store (or another budget) is refused, since a
//!   store may have only one VFS writing it (see [`shoal_kv::Claim`]);
//! - an open that names no store uses the one already open, and fails if there is none;
//! - a failed open of a main database does not fail xOpen (SQLite would report only
//!   "unable to open database file"): it gives a [`RefusedFile`](crate::vfs) that reads as
//!   empty and fails every lock and pragma with the reason, which the extension's
//!   connection set-up then reports as the open's error. Locks fail, so nothing reads it
//!   as an empty database;
//! - a store that fails to open is not remembered: a later open may name a good one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::ffi;
use shoal_kv::Kv;

use crate::error::{Error, Result};
use crate::ffi::{OpenParams, VfsImpl};
use crate::vfs::{FileHandle, RefusedFile, VfsState};
use crate::{VfsOptions, names};

/// The environment variable naming the store directory when an open's URI does not.
pub const STORE_ENV: &str = "SHOAL_STORE";
/// The environment variable giving the memory budget in MiB when an open's URI does not.
pub const BUDGET_ENV: &str = "SHOAL_BUDGET_MB";
/// The memory budget, in MiB, when neither the URI nor the environment gives one.
pub const DEFAULT_BUDGET_MB: u64 = 256;

/// What an open asked for: the store directory and the memory budget.
#[derive(Debug)]
pub(crate) struct StoreRequest {
    /// The store's directory, as given.
    pub dir: PathBuf,
    /// The memory budget in bytes.
    pub budget: u64,
}

/// Opens the store a [`StoreRequest`] names: its kv, and the options of the VFS over it.
pub(crate) type StoreOpener = dyn Fn(&StoreRequest) -> Result<(Arc<Kv>, VfsOptions)> + Send + Sync;

/// The store serving the VFS once an open named it.
#[derive(Debug)]
struct Current {
    /// The directory, canonical.
    dir: PathBuf,
    budget: u64,
    state: Arc<VfsState>,
}

/// The VFS a loaded extension registers (see the module docs).
pub(crate) struct DeferredVfs {
    open_store: Box<StoreOpener>,
    current: Mutex<Option<Current>>,
    /// The working directory at registration, where relative names lead (`names.rs`).
    base: Option<String>,
}

impl std::fmt::Debug for DeferredVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredVfs")
            .field("current", &*self.current.lock())
            .finish_non_exhaustive()
    }
}

impl DeferredVfs {
    /// A VFS that opens its store with `open_store` when an open first names one.
    pub fn new(open_store: Box<StoreOpener>) -> DeferredVfs {
        DeferredVfs {
            open_store,
            current: Mutex::new(None),
            base: std::env::current_dir()
                .ok()
                .and_then(|d| d.to_str().map(str::to_owned)),
        }
    }

    /// The kv of the store in use, if an open named one.
    pub fn kv(&self) -> Option<Arc<Kv>> {
        self.current
            .lock()
            .as_ref()
            .map(|c| Arc::clone(&c.state.kv))
    }

    /// The state serving an open of a main database with `params`, opening the store if
    /// this is the first.
    fn serve(&self, params: OpenParams<'_>) -> Result<Arc<VfsState>> {
        let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
        let dir = params
            .get("store")
            .map(str::to_owned)
            .or_else(|| env(STORE_ENV));
        let budget_mb = params
            .get("budget_mb")
            .map(str::to_owned)
            .or_else(|| env(BUDGET_ENV));
        let budget = budget_mb.as_deref().map(parse_budget).transpose()?;
        let mut current = self.current.lock();
        if let Some(c) = &*current {
            if let Some(dir) = &dir
                && canonical_dir(Path::new(dir)) != c.dir
            {
                return Err(Error::Refused(format!(
                    "this process already uses the store {}; it cannot open {dir} too \
                     (one store per process: every connection shares the first one opened)",
                    c.dir.display()
                )));
            }
            if let Some(budget) = budget
                && budget != c.budget
            {
                return Err(Error::Refused(format!(
                    "the store {} was opened with a budget of {} MiB; an open cannot ask \
                     for {} MiB (the first open sets it for the process)",
                    c.dir.display(),
                    c.budget >> 20,
                    budget >> 20
                )));
            }
            return Ok(Arc::clone(&c.state));
        }
        let Some(dir) = dir else {
            return Err(Error::Refused(format!(
                "no store: name its directory in the URI (file:NAME?vfs=shoal&store=DIR) \
                 or in the environment variable {STORE_ENV}"
            )));
        };
        let request = StoreRequest {
            dir: PathBuf::from(&dir),
            budget: budget.unwrap_or(DEFAULT_BUDGET_MB << 20),
        };
        let (kv, options) = (self.open_store)(&request)?;
        let claim = kv.claim().ok_or(Error::KvInUse)?;
        let state = Arc::new(VfsState::new(options.name.clone(), claim, &options));
        *current = Some(Current {
            dir: canonical_dir(&request.dir),
            budget: request.budget,
            state: Arc::clone(&state),
        });
        Ok(state)
    }

    fn current(&self) -> Option<Arc<VfsState>> {
        self.current.lock().as_ref().map(|c| Arc::clone(&c.state))
    }
}

/// `budget_mb` as bytes: a whole number of MiB, at least 1.
fn parse_budget(mb: &str) -> Result<u64> {
    mb.trim()
        .parse::<u64>()
        .ok()
        .filter(|&mb| mb >= 1)
        .and_then(|mb| mb.checked_mul(1 << 20))
        .ok_or_else(|| {
            Error::Refused(format!(
                "budget_mb must be a whole number of MiB, at least 1, not {mb:?}"
            ))
        })
}

/// `dir` made absolute and free of links where it exists, so that two spellings of one
/// directory are one store.
fn canonical_dir(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

impl VfsImpl for DeferredVfs {
    type File = FileHandle;

    fn open(self: &Arc<Self>, name: Option<&str>, flags: i32) -> Result<FileHandle> {
        self.open_with(name, flags, OpenParams::none())
    }

    fn open_with(
        self: &Arc<Self>,
        name: Option<&str>,
        flags: i32,
        params: OpenParams<'_>,
    ) -> Result<FileHandle> {
        if flags & ffi::SQLITE_OPEN_MAIN_DB == 0 {
            // Journals and temp files belong to a database already open, so to the store.
            let state = self.current().ok_or_else(|| {
                Error::cant_open(name.unwrap_or("a temp file"), "no shoal store is open yet")
            })?;
            return state.open(name, flags);
        }
        let opened = self.serve(params).and_then(|state| state.open(name, flags));
        Ok(opened.unwrap_or_else(|e| FileHandle::Refused(RefusedFile::new(e.to_string()))))
    }

    fn delete(&self, name: &str) -> Result<()> {
        match self.current() {
            Some(state) => state.delete(name),
            None => Err(Error::NoSuchFile(name.to_owned())),
        }
    }

    fn access(&self, name: &str) -> Result<bool> {
        match self.current() {
            Some(state) => state.access(name),
            None => Ok(false),
        }
    }

    fn full_pathname(&self, name: &str) -> Result<String> {
        names::canonical(name, self.base.as_deref())
            .map(std::borrow::Cow::into_owned)
            .map_err(|reason| Error::cant_open(name, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse_as_whole_mib() {
        assert_eq!(parse_budget("64").ok(), Some(64 << 20));
        assert_eq!(parse_budget(" 1 ").ok(), Some(1 << 20));
        for bad in ["0", "-1", "1.5", "lots", "", "99999999999999999999"] {
            let err = parse_budget(bad).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("budget_mb")),
                "{bad:?}: {err:?}"
            );
        }
    }
}
