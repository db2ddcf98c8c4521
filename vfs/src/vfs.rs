//! The VFS in safe Rust: what each SQLite method does, as implementations of the FFI
//! layer's traits ([`VfsImpl`], [`FileImpl`]; `crate::ffi` only converts arguments and
//! results, and holds SQLite's contract).
//!
//! [`VfsState`] is one registered VFS: the shared [`Kv`], the registry of live inodes
//! (one per open stored file, shared by every handle on it) and the per-database
//! counters. A [`FileHandle`] is one `sqlite3_file`: a stored file ([`KvHandle`]) or an
//! in-memory one ([`MemFile`]) for temp databases, temp and statement journals. Each
//! implements [`FileImpl`]; the enum only delegates to the one it holds.
//!
//! Poisoning: a panic in a call that changes what memory holds of a database (its
//! inodes' overlays, sizes, journal hint) may leave that state half-updated, and the next
//! flush would store it. So every such call runs in [`VfsState::guarded`]: a panic there
//! poisons the database, and from then on every SQLite call on any of its files fails with
//! an SQLITE_IOERR code and [`Error::Poisoned`] (naming the call and the panic) until the
//! store is reopened, which starts from what the kv holds. A poisoned file's xClose and
//! xUnlock still release its locks but flush nothing. In-memory files share nothing and
//! are not poisoned.

use std::any::Any;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use rusqlite::ffi;
use shoal_kv::{Claim, DbId, EntryKind, FileKind, Kv};

use crate::error::{Error, Result, panic_message};
use crate::ffi::{Control, FileImpl, Reply, SyncFlags, VfsImpl};
use crate::file::{Inode, OverlayBudget};
use crate::lock::LockLevel;
use crate::memfile::{MemFile, TempSpace};
use crate::names::{self, Target};
use crate::pages::{Fetched, Lent};
use crate::pragma::{self, Durability, Pragma};
use crate::stats::{DbCounters, DbStats};

/// One registered VFS.
#[derive(Debug)]
pub(crate) struct VfsState {
    pub(crate) name: String,
    pub(crate) kv: Arc<Kv>,
    /// This VFS is the store's one writer while it lives (see [`shoal_kv::Claim`]).
    _claim: Claim,
    pub(crate) durability: Durability,
    /// The working directory when the VFS was registered: where relative paths lead
    /// (see `names.rs`); `None` if it could not be read as UTF-8.
    base: Option<String>,
    inodes: Mutex<HashMap<(DbId, FileKind), Weak<Inode>>>,
    /// Open database files by name, so a journal name resolves without a catalog read.
    mains: Mutex<HashMap<String, Weak<Inode>>>,
    counters: Mutex<HashMap<DbId, Arc<DbCounters>>>,
    /// Open database files (one per connection, one more per attached database).
    pub(crate) open_databases: AtomicUsize,
    /// Databases poisoned by a panic (see the module docs), with what panicked.
    poisoned: Mutex<HashMap<DbId, Poison>>,
    /// Whether `poisoned` has any entry, so healthy calls skip its lock.
    any_poisoned: AtomicBool,
    /// The memory every temp file shares (see `memfile.rs`).
    pub(crate) temp: Arc<TempSpace>,
    /// The memory every open transaction's overlay shares (see `file.rs`).
    pub(crate) overlay: Arc<OverlayBudget>,
}

/// What poisoned a database.
#[derive(Debug, Clone)]
struct Poison {
    db: String,
    call: &'static str,
    panic: String,
}

impl VfsState {
    pub(crate) fn new(name: String, claim: Claim, options: &crate::VfsOptions) -> VfsState {
        VfsState {
            name,
            kv: Arc::clone(claim.kv()),
            _claim: claim,
            durability: options.durability,
            base: std::env::current_dir()
                .ok()
                .and_then(|d| d.to_str().map(str::to_owned)),
            inodes: Mutex::default(),
            mains: Mutex::default(),
            counters: Mutex::default(),
            open_databases: AtomicUsize::new(0),
            poisoned: Mutex::default(),
            any_poisoned: AtomicBool::new(false),
            temp: TempSpace::new(options.temp_limit),
            overlay: OverlayBudget::new(options.overlay_limit),
        }
    }

    /// Fails with [`Error::Poisoned`] if database `id` was poisoned by a panic.
    pub(crate) fn check_poison(&self, id: DbId) -> Result<()> {
        if !self.any_poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.poisoned.lock().get(&id) {
            Some(p) => Err(Error::Poisoned {
                db: p.db.clone(),
                call: p.call,
                panic: p.panic.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Runs `body`, SQLite's call `call` on a file of database `id` (named `file`), unless
    /// the database is poisoned; a panic in it poisons the database and goes on unwinding
    /// to the FFI boundary, which reports it.
    pub(crate) fn guarded<T>(
        &self,
        id: DbId,
        file: &str,
        call: &'static str,
        body: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.check_poison(id)?;
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(result) => result,
            Err(panic) => {
                self.poison(id, file, call, panic.as_ref());
                resume_unwind(panic)
            }
        }
    }

    /// Poisons database `id`: `call` on its file `file` panicked with `panic`. The first
    /// panic is the one reported.
    fn poison(&self, id: DbId, file: &str, call: &'static str, panic: &(dyn Any + Send)) {
        let db = match names::classify(file) {
            Target::Journal(db) => db,
            _ => file,
        };
        let poison = Poison {
            db: db.to_owned(),
            call,
            panic: panic_message(panic),
        };
        self.poisoned.lock().entry(id).or_insert(poison);
        self.any_poisoned.store(true, Ordering::Release);
    }

    /// xFullPathname: the one name of the database file SQLite was asked to open as
    /// `name` (see `names.rs`).
    pub(crate) fn canonical<'a>(&self, name: &'a str) -> Result<std::borrow::Cow<'a, str>> {
        names::canonical(name, self.base.as_deref())
            .map_err(|reason| Error::cant_open(name, reason))
    }

    pub(crate) fn counters(&self, id: DbId) -> Arc<DbCounters> {
        Arc::clone(self.counters.lock().entry(id).or_default())
    }

    pub(crate) fn stats(&self, name: &str) -> Result<Option<DbStats>> {
        let Some(entry) = self.kv.lookup(name)? else {
            return Ok(None);
        };
        Ok(Some(
            self.counters
                .lock()
                .get(&entry.id)
                .map(|c| c.snapshot())
                .unwrap_or_default(),
        ))
    }

    /// The stored size of database `name`'s main file.
    pub(crate) fn file_size(&self, name: &str) -> Result<Option<u64>> {
        let Some(entry) = self.kv.lookup(name)? else {
            return Ok(None);
        };
        if let Some(inode) = self.live_inode(entry.id, FileKind::Main) {
            return Ok(Some(inode.size()));
        }
        Ok(self
            .kv
            .read_meta(entry.id, FileKind::Main)?
            .map(|m| m.meta.size))
    }

    /// Whether open database `name` must be reopened: its lease was taken over by
    /// another host, or a commit found the stored file changed underneath it.
    pub(crate) fn main_is_stale(&self, name: &str) -> bool {
        let main = self.mains.lock().get(name).and_then(Weak::upgrade);
        main.is_some_and(|m| {
            m.stale.load(std::sync::atomic::Ordering::SeqCst)
                || m.lease.as_ref().is_some_and(shoal_kv::LeaseHold::is_lost)
        })
    }

    /// The catalog entry of database `name` (canonical), which must exist.
    fn entry(&self, name: &str) -> Result<shoal_kv::CatalogEntry> {
        self.kv
            .lookup(name)?
            .ok_or_else(|| Error::Kv(shoal_kv::Error::NotFound(name.to_owned())))
    }

    /// Restores database `name` (canonical) in place to `to` (see
    /// [`shoal_kv::Kv::restore`]): with its file open, while no handle holds a lock on it.
    pub(crate) fn restore(
        &self,
        name: &str,
        to: &shoal_kv::PointInTime,
    ) -> Result<shoal_kv::Bookmark> {
        let entry = self.entry(name)?;
        match self.live_inode(entry.id, FileKind::Main) {
            Some(inode) => inode.replace(&self.kv, || Ok(self.kv.restore(name, to)?)),
            None => Ok(self.kv.restore(name, to)?),
        }
    }

    /// Forks database `src` (canonical) into `new_name` at `at` (see
    /// [`shoal_kv::Kv::fork`]), with no commit of `src` running meanwhile.
    pub(crate) fn fork(
        &self,
        src: &str,
        at: Option<&shoal_kv::PointInTime>,
        new_name: &str,
    ) -> Result<shoal_kv::Bookmark> {
        let entry = self.entry(src)?;
        // Marked before its writers are quieted: a commit either sees the mark (and
        // records what it replaces) or finished before the fork reads the source.
        self.kv.will_fork(entry.id);
        match self.live_inode(entry.id, FileKind::Main) {
            Some(inode) => inode.quiet(|| Ok(self.kv.fork(src, at, new_name)?)),
            None => Ok(self.kv.fork(src, at, new_name)?),
        }
    }

    fn live_inode(&self, id: DbId, kind: FileKind) -> Option<Arc<Inode>> {
        self.inodes.lock().get(&(id, kind)).and_then(Weak::upgrade)
    }

    /// Whether any handle has a file of database `id` open.
    pub(crate) fn is_open(&self, id: DbId) -> bool {
        FileKind::ALL
            .into_iter()
            .any(|k| self.live_inode(id, k).is_some())
    }

    /// The shared inode of a stored file, loaded on first use.
    fn inode(
        &self,
        id: DbId,
        kind: FileKind,
        name: &str,
        may_be_absent: bool,
    ) -> Result<Arc<Inode>> {
        if let Some(inode) = self.live_inode(id, kind) {
            return fresh(inode, name);
        }
        // On a store that hosts share, the main file is read only under this host's
        // lease on the database, held as long as the inode lives. Acquired before the
        // inode table is locked: it may wait for another host's lease to run out.
        let lease = match kind {
            FileKind::Main => self.kv.hold_lease(id)?,
            _ => None,
        };
        let mut inodes = self.inodes.lock();
        if let Some(inode) = inodes.get(&(id, kind)).and_then(Weak::upgrade) {
            return fresh(inode, name);
        }
        let mut inode = Inode::load(
            &self.kv,
            id,
            kind,
            name,
            self.counters(id),
            Arc::clone(&self.overlay),
            may_be_absent,
        )?;
        inode.lease = lease;
        let inode = Arc::new(inode);
        insert_pruned(&mut inodes, (id, kind), &inode);
        Ok(inode)
    }

    /// xOpen. `name` is `None` for SQLite's anonymous temp files.
    pub(crate) fn open(self: &Arc<Self>, name: Option<&str>, flags: i32) -> Result<FileHandle> {
        let temp_kinds = ffi::SQLITE_OPEN_TEMP_DB
            | ffi::SQLITE_OPEN_TEMP_JOURNAL
            | ffi::SQLITE_OPEN_SUBJOURNAL
            | ffi::SQLITE_OPEN_TRANSIENT_DB;
        let Some(name) = name else {
            return Ok(self.opened(FileHandle::Mem(MemFile::new(Arc::clone(&self.temp)))));
        };
        let create = flags & ffi::SQLITE_OPEN_CREATE != 0;
        let target = names::classify(name);
        let inode = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
            if let Some(reason) = names::refuse_as_database(name) {
                return Err(Error::cant_open(name, reason));
            }
            let entry = if create {
                self.kv.lookup_or_create(name, EntryKind::Database)?.0
            } else {
                self.kv.lookup(name)?.ok_or_else(|| {
                    Error::cant_open(
                        name,
                        "no such database (open it with SQLITE_OPEN_CREATE to create it)",
                    )
                })?
            };
            if entry.kind != EntryKind::Database {
                return Err(Error::cant_open(
                    name,
                    "the name belongs to a super-journal",
                ));
            }
            self.guarded(entry.id, name, "xOpen", || {
                let inode = self.inode(entry.id, FileKind::Main, name, false)?;
                insert_pruned(&mut self.mains.lock(), name.to_owned(), &inode);
                Ok(inode)
            })?
        } else if flags & ffi::SQLITE_OPEN_MAIN_JOURNAL != 0
            // pager.c `pager_delsuper` opens each child journal a super-journal lists
            // with SQLITE_OPEN_SUPER_JOURNAL ("zJournal is really a MAIN_JOURNAL. But
            // call it a SUPER_JOURNAL here"), to read which super-journal it names.
            || flags & ffi::SQLITE_OPEN_SUPER_JOURNAL != 0 && matches!(target, Target::Journal(_))
        {
            let Target::Journal(db) = target else {
                return Err(Error::cant_open(
                    name,
                    "a journal name must end in -journal",
                ));
            };
            // The database is open (SQLite opens a journal through its pager) unless a
            // super-journal's cleanup reads a child journal; only then ask the catalog.
            let live_main = self.mains.lock().get(db).and_then(Weak::upgrade);
            let id = match live_main {
                Some(main) => main.id,
                None => {
                    self.kv
                        .lookup(db)?
                        .filter(|e| e.kind == EntryKind::Database)
                        .ok_or_else(|| {
                            Error::cant_open(name, format!("no database {db:?} to journal"))
                        })?
                        .id
                }
            };
            self.guarded(id, name, "xOpen", || {
                let inode = self.inode(id, FileKind::MainJournal, name, true)?;
                if !create && !inode.exists_nonempty() {
                    return Err(Error::cant_open(name, "no such journal"));
                }
                DbCounters::add(&inode.counters.journal_opens, 1);
                if let Some(main) = self.live_inode(id, FileKind::Main) {
                    main.journal_hint.lock().changed(false);
                }
                Ok(inode)
            })?
        } else if flags & ffi::SQLITE_OPEN_SUPER_JOURNAL != 0 {
            let entry = if create {
                self.kv.lookup_or_create(name, EntryKind::SuperJournal)?.0
            } else {
                self.kv
                    .lookup(name)?
                    .ok_or_else(|| Error::cant_open(name, "no such super-journal"))?
            };
            if entry.kind != EntryKind::SuperJournal {
                return Err(Error::cant_open(name, "the name belongs to a database"));
            }
            self.guarded(entry.id, name, "xOpen", || {
                self.inode(entry.id, FileKind::SuperJournal, name, false)
            })?
        } else if flags & ffi::SQLITE_OPEN_WAL != 0 {
            return Err(Error::cant_open(
                name,
                "WAL files are not supported (journal_mode=WAL is refused)",
            ));
        } else if flags & temp_kinds != 0 || flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0 {
            return Ok(self.opened(FileHandle::Mem(MemFile::new(Arc::clone(&self.temp)))));
        } else {
            return Err(Error::cant_open(name, "unknown kind of file"));
        };
        Ok(self.opened(FileHandle::Kv(KvHandle {
            vfs: Arc::clone(self),
            inode,
            lock: LockLevel::None,
            durability: self.durability,
            committed: false,
            synchronous_off: false,
            lent: Lent::default(),
            fetched: Fetched::default(),
            mmap_size: 0,
        })))
    }

    fn opened(&self, handle: FileHandle) -> FileHandle {
        if handle.is_database() {
            self.open_databases.fetch_add(1, Ordering::SeqCst);
        }
        handle
    }

    /// xDelete: journals and super-journals. Deleting a journal commits a journal-path
    /// transaction, so the delete is made durable before it returns.
    pub(crate) fn delete(&self, name: &str) -> Result<()> {
        match names::classify(name) {
            Target::Wal => Err(Error::NoSuchFile(name.to_owned())),
            Target::Journal(db) => {
                let entry = self
                    .kv
                    .lookup(db)?
                    .filter(|e| e.kind == EntryKind::Database)
                    .ok_or_else(|| Error::NoSuchFile(name.to_owned()))?;
                self.guarded(entry.id, name, "xDelete", || self.delete_journal(entry.id))
            }
            Target::Catalog(n) => match self.kv.lookup(n)? {
                Some(e) if e.kind == EntryKind::SuperJournal => {
                    self.guarded(e.id, n, "xDelete", || {
                        if let Some(inode) = self.live_inode(e.id, FileKind::SuperJournal) {
                            inode.forget();
                        }
                        self.kv.drop_entry(n)?;
                        self.kv.commit_durable()?;
                        Ok(())
                    })
                }
                Some(_) => Err(Error::Refused(format!(
                    "{n:?} is a database; shoal does not delete databases through SQLite's xDelete"
                ))),
                None => Err(Error::NoSuchFile(name.to_owned())),
            },
        }
    }

    /// Deletes database `id`'s rollback journal, durably.
    fn delete_journal(&self, id: DbId) -> Result<()> {
        if let Some(inode) = self.live_inode(id, FileKind::MainJournal) {
            inode.forget();
        }
        let main = self.live_inode(id, FileKind::Main);
        if let Some(main) = &main {
            main.journal_hint.lock().changed(false);
        }
        let mut journal = self.kv.file_write(id, FileKind::MainJournal);
        journal.remove();
        journal.commit_durable()?;
        if let Some(main) = &main {
            main.journal_hint.lock().changed(true);
        }
        let counters = self.counters(id);
        DbCounters::add(&counters.kv_batches, 1);
        DbCounters::add(&counters.durable_syncs, 1);
        Ok(())
    }

    /// xAccess (EXISTS and READWRITE alike): a file exists when it is stored and not
    /// empty, as the unix VFS answers for regular files.
    pub(crate) fn access(&self, name: &str) -> Result<bool> {
        let target = names::classify(name);
        if let Target::Journal(db) = target
            && let Some(main) = self.mains.lock().get(db).and_then(Weak::upgrade)
        {
            return self.guarded(main.id, name, "xAccess", || self.journal_exists(&main));
        }
        let (entry_name, kind) = match target {
            Target::Wal => return Ok(false),
            Target::Journal(db) => (db, FileKind::MainJournal),
            Target::Catalog(n) => (n, FileKind::Main),
        };
        if shoal_kv::validate_name(entry_name).is_err() {
            return Ok(false);
        }
        let Some(entry) = self.kv.lookup(entry_name)? else {
            return Ok(false);
        };
        let kind = match (kind, entry.kind) {
            (FileKind::MainJournal, EntryKind::Database) => FileKind::MainJournal,
            (FileKind::MainJournal, EntryKind::SuperJournal) => return Ok(false),
            (_, k) => k.primary_file(),
        };
        self.guarded(entry.id, name, "xAccess", || {
            if let Some(inode) = self.live_inode(entry.id, kind) {
                return Ok(inode.exists_nonempty());
            }
            Ok(self
                .kv
                .read_meta(entry.id, kind)?
                .is_some_and(|m| m.meta.size > 0))
        })
    }
}

impl VfsState {
    /// Whether the open database `main` has a non-empty rollback journal, answered from
    /// memory once known (see `JournalHint`).
    fn journal_exists(&self, main: &Inode) -> Result<bool> {
        if let Some(journal) = self.live_inode(main.id, FileKind::MainJournal) {
            return Ok(journal.exists_nonempty());
        }
        let epoch = {
            let hint = main.journal_hint.lock();
            if hint.absent {
                return Ok(false);
            }
            hint.epoch
        };
        let exists = self
            .kv
            .read_meta(main.id, FileKind::MainJournal)?
            .is_some_and(|m| m.meta.size > 0);
        if !exists {
            let mut hint = main.journal_hint.lock();
            if hint.epoch == epoch {
                hint.absent = true;
            }
        }
        Ok(exists)
    }
}

/// One open `sqlite3_file`.
#[derive(Debug)]
pub(crate) enum FileHandle {
    Kv(KvHandle),
    Mem(MemFile),
    /// A main database a store opened on first use could not serve (see `deferred.rs`).
    #[cfg_attr(not(feature = "extension"), allow(dead_code))]
    Refused(RefusedFile),
}

/// A database file whose open was refused after SQLite's xOpen had to succeed: it reads
/// as an empty file, so that SQLite's open goes on to the point where the extension's
/// connection set-up can report `reason` as the open's error, and fails everything else
/// with it. (A failed xOpen reaches the host only as "unable to open database file".)
#[derive(Debug)]
pub(crate) struct RefusedFile {
    reason: String,
}

impl RefusedFile {
    #[cfg_attr(not(feature = "extension"), allow(dead_code))]
    pub(crate) fn new(reason: String) -> RefusedFile {
        RefusedFile { reason }
    }

    fn refusal<T>(&self) -> Result<T> {
        Err(Error::Refused(self.reason.clone()))
    }
}

impl FileImpl for RefusedFile {
    fn read(&mut self, _buf: &mut [u8], _offset: u64) -> Result<usize> {
        Ok(0)
    }

    fn write(&mut self, _data: &[u8], _offset: u64) -> Result<()> {
        self.refusal()
    }

    fn truncate(&mut self, _size: u64) -> Result<()> {
        self.refusal()
    }

    fn sync(&mut self, _flags: SyncFlags) -> Result<()> {
        self.refusal()
    }

    fn file_size(&mut self) -> Result<u64> {
        Ok(0)
    }

    fn lock(&mut self, _level: LockLevel) -> Result<bool> {
        self.refusal()
    }

    fn unlock(&mut self, _level: LockLevel) -> Result<()> {
        Ok(())
    }

    fn check_reserved_lock(&mut self) -> Result<bool> {
        Ok(false)
    }

    fn control(&mut self, control: Control<'_>) -> Result<Reply> {
        match control {
            Control::Pragma { .. } => self.refusal(),
            _ => Ok(Reply::NotFound),
        }
    }

    fn device_characteristics(&self) -> i32 {
        0
    }

    fn unfetch(&mut self, _offset: u64, _ptr: Option<*const u8>) {}

    fn close(self) -> Result<()> {
        Ok(())
    }
}

/// An open stored file.
#[derive(Debug)]
pub(crate) struct KvHandle {
    vfs: Arc<VfsState>,
    inode: Arc<Inode>,
    lock: LockLevel,
    durability: Durability,
    /// A transaction was committed since the last xSync.
    committed: bool,
    /// `PRAGMA synchronous = OFF` was set through this file (see `pragma.rs`).
    synchronous_off: bool,
    /// Buffers lent to SQLite by xFetch, until xUnfetch.
    lent: Lent,
    /// Pages fetched while this handle holds its lock (see `pages.rs`).
    fetched: Fetched,
    mmap_size: i64,
}

impl FileHandle {
    /// Whether this is a stored database's main file.
    fn is_database(&self) -> bool {
        matches!(self, FileHandle::Kv(h) if h.inode.kind == FileKind::Main)
    }

    /// The file type's own implementation, which every method delegates to.
    fn inner(&mut self) -> &mut dyn FileImpl {
        match self {
            FileHandle::Kv(h) => h,
            FileHandle::Mem(m) => m,
            FileHandle::Refused(r) => r,
        }
    }
}

impl FileImpl for FileHandle {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.inner().read(buf, offset)
    }

    fn write(&mut self, data: &[u8], offset: u64) -> Result<()> {
        self.inner().write(data, offset)
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        self.inner().truncate(size)
    }

    fn sync(&mut self, flags: SyncFlags) -> Result<()> {
        self.inner().sync(flags)
    }

    fn file_size(&mut self) -> Result<u64> {
        self.inner().file_size()
    }

    fn lock(&mut self, level: LockLevel) -> Result<bool> {
        self.inner().lock(level)
    }

    fn unlock(&mut self, level: LockLevel) -> Result<()> {
        self.inner().unlock(level)
    }

    fn check_reserved_lock(&mut self) -> Result<bool> {
        self.inner().check_reserved_lock()
    }

    fn control(&mut self, control: Control<'_>) -> Result<Reply> {
        self.inner().control(control)
    }

    fn device_characteristics(&self) -> i32 {
        match self {
            FileHandle::Kv(h) => h.device_characteristics(),
            FileHandle::Mem(m) => m.device_characteristics(),
            FileHandle::Refused(r) => r.device_characteristics(),
        }
    }

    fn fetch(&mut self, offset: u64, len: usize) -> Option<*const u8> {
        self.inner().fetch(offset, len)
    }

    fn unfetch(&mut self, offset: u64, ptr: Option<*const u8>) {
        self.inner().unfetch(offset, ptr);
    }

    fn close(self) -> Result<()> {
        match self {
            FileHandle::Kv(h) => h.close(),
            FileHandle::Mem(m) => m.close(),
            FileHandle::Refused(r) => r.close(),
        }
    }
}

impl FileImpl for KvHandle {
    fn read(&mut self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.guarded("xRead", |h| {
            // pager.c `sqlite3PagerSharedLock` reads these 16 bytes (the change counter
            // and what follows) only when a transaction starts from the OPEN state. A
            // main file still holding uncommitted writes then is the remains of a
            // transaction SQLite gave up on without unlocking (an I/O error, or
            // journal_mode=OFF's rollback, in exclusive locking mode): forget them. Only
            // the writer's own handle (it holds EXCLUSIVE) may: the overlay is shared by
            // every connection to the database, and is the writer's.
            if h.inode.kind == FileKind::Main
                && offset == 24
                && buf.len() == 16
                && h.lock >= LockLevel::Exclusive
            {
                h.inode.discard(&h.vfs.kv)?;
            }
            h.inode.read(&h.vfs.kv, buf, offset)
        })
    }

    fn write(&mut self, data: &[u8], offset: u64) -> Result<()> {
        self.guarded("xWrite", |h| {
            h.fetched.clear();
            h.inode.write(&h.vfs.kv, data, offset)
        })
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        self.guarded("xTruncate", |h| {
            h.fetched.clear();
            h.inode.truncate(&h.vfs.kv, size)
        })
    }

    fn sync(&mut self, _flags: SyncFlags) -> Result<()> {
        self.guarded("xSync", KvHandle::flush_and_sync)
    }

    fn file_size(&mut self) -> Result<u64> {
        self.guarded("xFileSize", |h| Ok(h.inode.size()))
    }

    fn lock(&mut self, level: LockLevel) -> Result<bool> {
        self.guarded("xLock", |h| {
            Ok(h.inode.locks.lock().lock(&mut h.lock, level))
        })
    }

    fn unlock(&mut self, level: LockLevel) -> Result<()> {
        if let Err(poisoned) = self.vfs.check_poison(self.inode.id) {
            // Release the lock, but store nothing of a half-updated file.
            self.inode.locks.lock().unlock(&mut self.lock, level);
            return Err(poisoned);
        }
        self.guarded("xUnlock", |h| h.unlock_and_flush(level))
    }

    fn check_reserved_lock(&mut self) -> Result<bool> {
        self.guarded("xCheckReservedLock", |h| {
            Ok(h.inode.locks.lock().reserved())
        })
    }

    fn control(&mut self, control: Control<'_>) -> Result<Reply> {
        self.guarded("xFileControl", |h| h.answer(control))
    }

    /// Only what this VFS honours: a write never disturbs bytes outside it, and an
    /// append never shows a size without its data (nothing reaches the kv before the
    /// commit, and the commit is one batch). Not SQLITE_IOCAP_BATCH_ATOMIC: measured, a
    /// SQLite built with SQLITE_ENABLE_BATCH_ATOMIC_WRITE committing through its atomic
    /// writes was no faster than the one path every build takes (docs/BENCHMARKS.md,
    /// "One commit path"), so SQLite is never asked to use them.
    fn device_characteristics(&self) -> i32 {
        ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE | ffi::SQLITE_IOCAP_SAFE_APPEND
    }

    /// A pointer into a stored page, kept alive in `lent` until xUnfetch; `None` lets
    /// SQLite fall back to xRead (which then reports any error properly).
    fn fetch(&mut self, offset: u64, len: usize) -> Option<*const u8> {
        self.guarded("xFetch", |h| Ok(h.lend(offset, len))).ok()?
    }

    /// A pointer goes back to `lent`. xUnfetch(NULL) (the file may have changed: no page
    /// is lent then) drops the pages fetched under the lock, the only mapping kept.
    fn unfetch(&mut self, _offset: u64, ptr: Option<*const u8>) {
        match ptr {
            Some(ptr) => self.lent.give_back(ptr.addr()),
            None => self.fetched.clear(),
        }
    }

    /// Releases locks. A journal writes back anything still dirty; a database forgets
    /// an uncommitted transaction's pages (nothing is written, if the database is
    /// poisoned).
    fn close(mut self) -> Result<()> {
        if self.inode.kind == FileKind::Main {
            self.vfs.open_databases.fetch_sub(1, Ordering::SeqCst);
        }
        self.lent.clear();
        self.fetched.clear();
        let flushed = self.guarded("xClose", |h| {
            if h.inode.kind == FileKind::Main {
                // Only the writer's handle owns the (shared) overlay: another connection
                // closing must leave the writer's transaction alone.
                if h.lock > LockLevel::Shared {
                    h.inode.discard(&h.vfs.kv)?;
                }
                Ok(())
            } else {
                h.inode.flush(&h.vfs.kv).map(drop)
            }
        });
        self.inode
            .locks
            .lock()
            .unlock(&mut self.lock, LockLevel::None);
        flushed
    }
}

impl VfsImpl for VfsState {
    type File = FileHandle;

    fn open(self: &Arc<Self>, name: Option<&str>, flags: i32) -> Result<FileHandle> {
        VfsState::open(self, name, flags)
    }

    fn delete(&self, name: &str) -> Result<()> {
        VfsState::delete(self, name)
    }

    fn access(&self, name: &str) -> Result<bool> {
        VfsState::access(self, name)
    }

    fn full_pathname(&self, name: &str) -> Result<String> {
        Ok(self.canonical(name)?.into_owned())
    }
}

impl KvHandle {
    /// A `shoal_*` history pragma on this database (see `pragma.rs`).
    fn history(&self, op: pragma::HistoryOp) -> Result<String> {
        use pragma::HistoryOp;
        let kv = self.kv();
        let name = self.inode.name.as_str();
        Ok(match op {
            HistoryOp::Bookmark => kv.current_bookmark(name)?.to_string(),
            HistoryOp::List => kv
                .history(name)?
                .iter()
                .map(|c| {
                    let ms = c
                        .time
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis());
                    format!("{}\t{ms}", c.bookmark)
                })
                .collect::<Vec<_>>()
                .join("\n"),
            HistoryOp::Pin(label) => kv.pin(name, &label, None)?.to_string(),
            HistoryOp::Fork(new_name) => {
                let new_name = self.vfs.canonical(&new_name)?;
                self.vfs.fork(name, None, &new_name)?.to_string()
            }
            HistoryOp::Restore(point) => self.vfs.restore(name, &point)?.to_string(),
        })
    }

    fn kv(&self) -> &Kv {
        &self.vfs.kv
    }

    /// Runs SQLite's call `call` on this handle under [`VfsState::guarded`].
    fn guarded<T>(
        &mut self,
        call: &'static str,
        body: impl FnOnce(&mut KvHandle) -> Result<T>,
    ) -> Result<T> {
        self.vfs.check_poison(self.inode.id)?;
        match catch_unwind(AssertUnwindSafe(|| body(self))) {
            Ok(result) => result,
            Err(panic) => {
                let inode = &self.inode;
                self.vfs.poison(inode.id, &inode.name, call, panic.as_ref());
                resume_unwind(panic)
            }
        }
    }

    /// xFetch (see [`FileImpl::fetch`]).
    fn lend(&mut self, offset: u64, len: usize) -> Option<*const u8> {
        let cs = u64::from(self.inode.chunk_size());
        let chunk = u32::try_from(offset / cs.max(1)).ok()?;
        let page = match self.fetched.get(chunk) {
            Some(page) if page.len() == len && offset.is_multiple_of(cs.max(1)) => {
                DbCounters::add(&self.inode.counters.pages_fetched, 1);
                page.clone()
            }
            _ => {
                let page = self.inode.fetch(&self.vfs.kv, offset, len).ok()??;
                self.fetched.insert(chunk, page.clone());
                page
            }
        };
        Some(self.lent.lend(page))
    }

    /// xSync. A journal is flushed and made durable. A database was committed at
    /// SQLITE_FCNTL_SYNC, which SQLite sends right before (`sqlite3PagerSync`); here the
    /// commit is made durable, or not waited for under relaxed durability.
    fn flush_and_sync(&mut self) -> Result<()> {
        let counters = &self.inode.counters;
        if self.inode.kind == FileKind::Main {
            let committed = std::mem::take(&mut self.committed);
            if self.durability == Durability::Relaxed && committed {
                DbCounters::add(&counters.relaxed_syncs, 1);
                return Ok(());
            }
        } else {
            self.inode.flush(self.kv())?;
        }
        // A second sync with nothing applied since the last durable flush costs nothing.
        let generation = self.inode.generation();
        if self.inode.is_durable(generation) {
            return Ok(());
        }
        self.kv().commit_durable()?;
        self.inode.mark_durable(generation);
        DbCounters::add(&counters.durable_syncs, 1);
        Ok(())
    }

    /// SQLITE_FCNTL_SYNC of the main file: the commit point (see docs/design.md,
    /// "Commits"). Everything the transaction wrote becomes one kv batch now.
    fn commit(&mut self) -> Result<()> {
        let flushed = self.inode.commit(self.kv())?;
        if flushed.chunks > 0 {
            DbCounters::add(&self.inode.counters.batch_commits, 1);
            if self
                .vfs
                .live_inode(self.inode.id, FileKind::MainJournal)
                .is_some_and(|j| j.exists_nonempty())
            {
                DbCounters::add(&self.inode.counters.journal_commits, 1);
            }
            self.committed = true;
        }
        Ok(())
    }

    fn unlock_and_flush(&mut self, level: LockLevel) -> Result<()> {
        // A writer's lock ends with its transaction: what it did not commit (a rollback,
        // an abandoned transaction) never reaches the kv. Readers read the kv.
        let discarded = if self.lock > LockLevel::Shared
            && level <= LockLevel::Shared
            && self.inode.kind == FileKind::Main
        {
            self.inode.discard(self.kv()).map(drop)
        } else {
            Ok(())
        };
        self.inode.locks.lock().unlock(&mut self.lock, level);
        if level == LockLevel::None {
            self.fetched.clear();
        }
        discarded
    }

    fn answer(&mut self, control: Control<'_>) -> Result<Reply> {
        let main = self.inode.kind == FileKind::Main;
        Ok(match control {
            Control::Sync if main => {
                self.fetched.clear();
                self.commit()?;
                Reply::Done
            }
            // After the commit point, before the unlock: what SQLite wrote since (the
            // truncation of a database that shrank, pager.c `pager_end_transaction`)
            // is stored now, as its own batch.
            Control::CommitPhaseTwo if main => {
                self.inode.flush(self.kv())?;
                Reply::Done
            }
            Control::Pragma { name, value } if main => match pragma::classify(name, value) {
                Pragma::NotOurs => Reply::NotFound,
                Pragma::Refused(msg) => return Err(Error::Refused(msg)),
                Pragma::Synchronous { off } => {
                    self.synchronous_off = off;
                    Reply::NotFound
                }
                Pragma::Durability(set) => {
                    if let Some(d) = set {
                        self.durability = d;
                    }
                    // synchronous=OFF skips xSync, so commits are relaxed whatever this
                    // connection asked for.
                    let effective = if self.synchronous_off {
                        Durability::Relaxed
                    } else {
                        self.durability
                    };
                    Reply::Text(effective.as_str().to_owned())
                }
                Pragma::Stats => Reply::Text(self.inode.counters.snapshot().to_string()),
                Pragma::History(op) => Reply::Text(self.history(op)?),
            },
            Control::MmapSize(new) => {
                let current = self.mmap_size;
                if new >= 0 {
                    self.mmap_size = new;
                }
                Reply::Int(current)
            }
            Control::LockState => Reply::Int(self.lock as i64),
            Control::HasMoved => Reply::Int(0),
            Control::PowersafeOverwrite => Reply::Int(1),
            Control::VfsName => Reply::Text(self.vfs.name.clone()),
            Control::Hint => Reply::Done,
            _ => Reply::NotFound,
        })
    }
}

/// `inode`, unless its view of the file is known stale (a commit found the stored file
/// changed, or its lease was taken over): a new open must not share it, and cannot read
/// the file afresh while other handles keep the stale one alive.
fn fresh(inode: Arc<Inode>, name: &str) -> Result<Arc<Inode>> {
    let stale = inode.stale.load(std::sync::atomic::Ordering::SeqCst)
        || inode
            .lease
            .as_ref()
            .is_some_and(shoal_kv::LeaseHold::is_lost);
    if stale {
        return Err(Error::cant_open(
            name,
            "the stored database changed underneath the connections this process has open \
             to it (another host took it over, or the server lost writes): close them \
             first, then open it again",
        ));
    }
    Ok(inode)
}

/// Inserts a weak reference to `inode`, first dropping dead ones whenever the map has
/// doubled (so it stays about as large as the files open).
fn insert_pruned<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Weak<Inode>>,
    key: K,
    inode: &Arc<Inode>,
) {
    if map.len() >= 64 && map.len().is_power_of_two() {
        map.retain(|_, w| w.strong_count() > 0);
    }
    map.insert(key, Arc::downgrade(inode));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// os_unix.c answers SQLITE_FCNTL_LOCKSTATE with the handle's `eFileLock` for every
    /// file; an in-memory file answers the level it was last asked for the same way.
    #[test]
    fn in_memory_files_answer_lockstate_with_the_level_asked_for() {
        let mut f = FileHandle::Mem(MemFile::new(TempSpace::new(1 << 20)));
        let state = |f: &mut FileHandle| match f.control(Control::LockState) {
            Ok(Reply::Int(level)) => level,
            other => panic!("LOCKSTATE answered {other:?}"),
        };
        assert_eq!(state(&mut f), 0);
        assert!(f.lock(LockLevel::Shared).unwrap());
        assert_eq!(state(&mut f), 1);
        assert!(f.lock(LockLevel::Exclusive).unwrap());
        assert_eq!(state(&mut f), 4);
        assert!(
            f.lock(LockLevel::Reserved).unwrap(),
            "a lower level is already held"
        );
        assert_eq!(state(&mut f), 4);
        f.unlock(LockLevel::Shared).unwrap();
        assert_eq!(state(&mut f), 1);
        f.unlock(LockLevel::None).unwrap();
        assert_eq!(state(&mut f), 0);
    }
}
