//! `Kv`: the one handle the layers above use. It owns the backend and its group
//! committer, refuses writes once a flush or a write has failed in a way that leaves the
//! engine unusable (a full disk, an engine that poisoned itself), keeps the catalog of
//! database names, and reads file records verified (writes go through
//! [`FileWrite`](crate::FileWrite)), so that keys and checksums never leave this crate. A
//! `Kv` opened with [`Kv::open_read_only`] refuses every write.
//!
//! One-writer invariant: at most one [`Claim`] on a `Kv` lives at a time, and only
//! dropping it gives the claim back; a VFS holds it for as long as it caches what it
//! wrote.
//!
//! Catalog invariants: a name maps to at most one `DbId`; ids come from a counter that only
//! grows (a dropped database's id is never reused, so stale keys can never be mistaken
//! for a new database's); creating an entry writes the entry, the counter and the entry's
//! empty file metadata in one guarded batch, dropping one removes the entry and every
//! key of the database in one batch, and renaming one moves the entry (same id, so the
//! same files) in one batch guarded on the new name being free.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::cache::ReadCache;
use crate::checksum;
use crate::error::{Error, Result};
use crate::group_commit::{GroupCommitStats, GroupCommitter};
use crate::keys::{self, ChunkNo, DbId, FileKind, KeyRange};
use crate::records::{self, CatalogEntry, EntryKind, FileMeta};
use crate::store::{Batch, KvStats, KvStore, Scan};

/// A file's metadata as stored, with the raw value that guards the next write of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMeta {
    /// The parsed record.
    pub meta: FileMeta,
    /// The stored bytes (the expected value of the next write's precondition).
    pub(crate) raw: Bytes,
}

/// The shared key-value layer: backend, group commit and catalog.
#[derive(Debug)]
pub struct Kv {
    backend: Arc<dyn KvStore>,
    pub(crate) committer: GroupCommitter,
    /// Serialises catalog changes (lookup-then-insert must not race).
    catalog_lock: Mutex<()>,
    /// Set while one VFS serves this store (see [`Kv::claim`]).
    claimed: std::sync::atomic::AtomicBool,
    /// Verified chunks above the backend (see `cache.rs`).
    cache: Arc<ReadCache>,
    /// Opened with [`Kv::open_read_only`]: every write is refused.
    read_only: bool,
    /// Whether durable commits share flushes ([`Kv::set_group_commit`]).
    group_commit: std::sync::atomic::AtomicBool,
    /// This host's leases, once [`Kv::enable_leases`] turned them on.
    pub(crate) leases: std::sync::OnceLock<crate::lease::Leases>,
    /// Retention, and what is known of forks (see `history.rs`).
    pub(crate) history: crate::history::HistoryState,
}

/// The one-writer claim on a [`Kv`], from [`Kv::claim`]: while it lives, every other
/// claim fails. Dropping it gives the claim back.
#[derive(Debug)]
pub struct Claim {
    kv: Arc<Kv>,
}

impl Claim {
    /// The claimed store.
    pub fn kv(&self) -> &Arc<Kv> {
        &self.kv
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.kv
            .claimed
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How often a catalog change is tried again after another host changed the catalog
/// between its read and its guarded write.
const CATALOG_RETRIES: u32 = 64;

/// Bytes of the read cache [`Kv::open`] gives a store.
pub const DEFAULT_READ_CACHE: usize = 16 << 20;

impl Kv {
    /// Opens the layer over `backend`: checks (or, on an empty store, writes) the format
    /// version and starts the group committer.
    pub fn open(backend: Arc<dyn KvStore>) -> Result<Kv> {
        Kv::open_with_cache(backend, DEFAULT_READ_CACHE)
    }

    /// As [`Kv::open`], with a read cache of `read_cache` bytes (0: none) holding
    /// verified chunks above the backend; part of the memory budget.
    pub fn open_with_cache(backend: Arc<dyn KvStore>, read_cache: usize) -> Result<Kv> {
        Kv::open_mode(backend, read_cache, false)
    }

    /// As [`Kv::open_with_cache`], for reading only: an empty store is not given a format
    /// version record, and every write ([`FileWrite::commit`](crate::FileWrite::commit), [`Kv::commit_durable`], catalog
    /// changes) fails with [`Error::ReadOnly`].
    pub fn open_read_only(backend: Arc<dyn KvStore>, read_cache: usize) -> Result<Kv> {
        Kv::open_mode(backend, read_cache, true)
    }

    fn open_mode(backend: Arc<dyn KvStore>, read_cache: usize, read_only: bool) -> Result<Kv> {
        match Kv::check_version(&backend, read_only) {
            // A store several hosts share, opened for the first time by two of them at
            // once: the other wrote the record between this one's read and its write. Read
            // again (an embedded store's lock makes this impossible).
            Err(Error::PreconditionFailed { .. }) => Kv::check_version(&backend, read_only)
                .map_err(|e| match e {
                    Error::PreconditionFailed { .. } => Error::Corrupt {
                        what: "store".into(),
                        reason: "its format version record reads as absent, then as present: \
                                 the engine's files are damaged (or another process writes \
                                 to them)"
                            .into(),
                    },
                    other => other,
                })?,
            other => other?,
        }
        Kv::start(backend, read_cache, read_only)
    }

    /// Checks (or, on an empty store, writes) the format version record.
    fn check_version(backend: &Arc<dyn KvStore>, read_only: bool) -> Result<()> {
        let version_key = keys::store_version_key();
        match backend.get(&version_key)? {
            Some(v) => {
                let found = records::check_store_version(v.clone())?;
                if found < keys::STORE_VERSION && !read_only {
                    // A version-1 store has no staged keys, so it is already a valid
                    // version-2 store; mark it, so that an older build refuses it once
                    // it may hold staged transactions.
                    let mut b = Batch::new();
                    b.put(version_key.to_vec(), records::encode_store_version())
                        .guard(version_key.to_vec(), Some(v));
                    backend.apply(b)?;
                    backend.flush()?;
                }
            }
            None => {
                if let Some(first) = backend.scan(KeyRange::prefix(&[]))?.next() {
                    let (key, _) = first?;
                    if key[..] == version_key[..] {
                        // Written since the read: another host opening the store now.
                        return Err(Error::PreconditionFailed {
                            what: keys::describe(&key),
                        });
                    }
                    return Err(Error::Corrupt {
                        what: "store".into(),
                        reason: format!(
                            "it has no format version record but holds {}",
                            keys::describe(&key)
                        ),
                    });
                }
                if read_only {
                    return Ok(());
                }
                let mut b = Batch::new();
                b.put(version_key.to_vec(), records::encode_store_version())
                    .guard(version_key.to_vec(), None);
                // The read above found no record; the guard finding one means another
                // host wrote it meanwhile (read again, above), or, on an embedded store
                // whose directory lock rules that out, that the engine's reads disagree
                // with each other: its files are damaged.
                backend.apply(b)?;
            }
        }
        Ok(())
    }

    fn start(backend: Arc<dyn KvStore>, read_cache: usize, read_only: bool) -> Result<Kv> {
        let committer = GroupCommitter::start(Arc::clone(&backend))?;
        Ok(Kv {
            backend,
            committer,
            catalog_lock: Mutex::new(()),
            claimed: std::sync::atomic::AtomicBool::new(false),
            cache: Arc::new(ReadCache::new(read_cache)),
            read_only,
            group_commit: std::sync::atomic::AtomicBool::new(true),
            leases: std::sync::OnceLock::new(),
            history: crate::history::HistoryState::default(),
        })
    }

    /// Whether the store was opened with [`Kv::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Claims the store for one user that caches what it wrote (a VFS keeps file sizes
    /// and recent pages in memory, which is only right while nothing else writes):
    /// `None` if it is claimed already. The claim lasts as long as the returned
    /// [`Claim`]; nothing else can give it back.
    pub fn claim(self: &Arc<Kv>) -> Option<Claim> {
        if self.claimed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        Some(Claim {
            kv: Arc::clone(self),
        })
    }

    /// The backend (for statistics and [`crate::raw`]).
    pub(crate) fn backend(&self) -> &Arc<dyn KvStore> {
        &self.backend
    }

    /// Raw value under `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.backend.get(key)
    }

    /// Raw entries in `range`.
    pub(crate) fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        self.backend.scan(range)
    }

    /// Applies `batch` atomically, unless the store is poisoned (a failed flush, or a
    /// write that left the engine unusable) or read-only. A write failing for lack of
    /// space poisons it: the engine may hold part of that write in its log.
    pub(crate) fn apply(&self, batch: Batch) -> Result<()> {
        self.check_writable()?;
        let _applying = self.committer.applying();
        if !self.cache.enabled() {
            return self.backend.apply(batch).inspect_err(|e| self.failed(e));
        }
        // The cache follows the batch once it is applied, so it keeps a clone (refcounted
        // values; the ops list and the keys' shared headers are allocated).
        self.backend
            .apply(batch.clone())
            .inspect_err(|e| self.failed(e))?;
        self.cache.written(&batch);
        Ok(())
    }

    /// The read cache, shared with the lease renewer (which empties it of a lost lease's
    /// database).
    pub(crate) fn read_cache(&self) -> &Arc<ReadCache> {
        &self.cache
    }

    /// Drops every cached chunk of database `id` (its ownership moved, or may have).
    pub(crate) fn forget_cached(&self, id: DbId) {
        self.cache.forget(&keys::db_range(id));
        self.history.forget(id);
    }

    /// Poisons the store if `err` leaves the engine unusable.
    fn failed(&self, err: &Error) {
        if err.poisons_store() {
            self.committer.poison(err);
        }
    }

    /// Whether durable commits share flushes through the group committer (the default),
    /// or each flushes on its own (for measuring what the sharing is worth).
    pub fn set_group_commit(&self, on: bool) {
        self.group_commit
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes the read cache holds now, and its capacity.
    pub fn read_cache_bytes(&self) -> (usize, usize) {
        (self.cache.bytes(), self.cache.capacity())
    }

    /// Returns once everything applied so far is durable (shares flushes, see
    /// [`GroupCommitter`]).
    pub fn commit_durable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly { op: "flush" });
        }
        let durable = if self.group_commit.load(std::sync::atomic::Ordering::Relaxed) {
            self.committer.commit_durable()
        } else {
            self.committer.commit_alone()
        };
        durable.inspect(|()| self.backend.durable_here())
    }

    /// Fails once the store is poisoned (a failed flush, or a write that left the engine unusable), or if it is read-only.
    pub fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly { op: "write" });
        }
        self.committer.check_writable()
    }

    /// Has the engine rewrite its files now, so that deleted keys (collected history, a
    /// dropped database) leave the disk; for measurements and tools.
    pub fn compact(&self) -> Result<()> {
        self.check_writable()?;
        self.backend.flush()?;
        self.backend.compact()
    }

    /// Backend statistics.
    pub fn stats(&self) -> Result<KvStats> {
        self.backend.stats()
    }

    /// Group-commit counters.
    pub fn commit_stats(&self) -> GroupCommitStats {
        self.committer.stats()
    }

    // ---- files: metadata and chunks ----

    /// A file's metadata, verified; `None` if the file does not exist.
    pub fn read_meta(&self, id: DbId, kind: FileKind) -> Result<Option<StoredMeta>> {
        let Some(raw) = self.backend.get(&keys::meta_key(id, kind))? else {
            return Ok(None);
        };
        let meta = FileMeta::decode(id, kind, raw.clone())?;
        Ok(Some(StoredMeta { meta, raw }))
    }

    /// One chunk's bytes, verified and sharing the backend's buffer; `None` if absent. A
    /// page of the main file of a fork that the fork never wrote is its origin's (see
    /// `history.rs`).
    pub fn read_chunk(&self, id: DbId, kind: FileKind, no: ChunkNo) -> Result<Option<Bytes>> {
        let key = keys::chunk_key(id, kind, no);
        let epoch = match self.cache.get(&key) {
            Ok(hit) => return Ok(Some(hit)),
            Err(epoch) => epoch,
        };
        let payload = match self.backend.get(&key)? {
            Some(v) => checksum::open(&key, v)?,
            None if kind == FileKind::Main => match self.inherited(id, no)? {
                Some(page) => page,
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        self.cache.insert(&key, payload.clone(), epoch);
        Ok(Some(payload))
    }

    // ---- catalog ----

    /// The entry for `name`, if any.
    pub fn lookup(&self, name: &str) -> Result<Option<CatalogEntry>> {
        keys::validate_name(name)?;
        match self.backend.get(&keys::catalog_key(name.as_bytes()))? {
            Some(v) => CatalogEntry::decode(name.as_bytes(), v).map(Some),
            None => Ok(None),
        }
    }

    /// Creates `name` with a fresh id and an empty primary file; fails if it exists.
    pub fn create(&self, name: &str, kind: EntryKind) -> Result<CatalogEntry> {
        match self.lookup_or_create(name, kind)? {
            (entry, true) => Ok(entry),
            (_, false) => Err(Error::AlreadyExists(name.to_owned())),
        }
    }

    /// The entry for `name`, created if absent; the flag says whether it was created.
    ///
    /// Safe with many hosts creating at once: the batch is guarded on the name being free
    /// and on the id counter being what was read, so of two hosts racing one wins and the
    /// other reads again (and finds the name, or allocates the next id).
    pub fn lookup_or_create(&self, name: &str, kind: EntryKind) -> Result<(CatalogEntry, bool)> {
        let _serial = self.catalog_lock.lock();
        let mut raced = 0;
        loop {
            match self.try_create(name, kind) {
                Err(Error::PreconditionFailed { .. }) if raced < CATALOG_RETRIES => raced += 1,
                other => return other,
            }
        }
    }

    fn try_create(&self, name: &str, kind: EntryKind) -> Result<(CatalogEntry, bool)> {
        if let Some(entry) = self.lookup(name)? {
            return Ok((entry, false));
        }
        let primary = kind.primary_file();
        let entry = self.try_create_with(name, kind, |batch, id| {
            batch.put(
                keys::meta_key(id, primary).to_vec(),
                FileMeta::EMPTY.encode(id, primary),
            );
        })?;
        Ok((entry, true))
    }

    /// Creates database `name` (which must not exist) in one batch with what `files`
    /// adds for its new id: the batch is guarded on the name being free and the id
    /// counter unchanged, and tried again if another host raced it.
    pub(crate) fn create_with(
        &self,
        name: &str,
        mut files: impl FnMut(&mut Batch, DbId),
    ) -> Result<CatalogEntry> {
        keys::validate_name(name)?;
        let _serial = self.catalog_lock.lock();
        let mut raced = 0;
        loop {
            if self.lookup(name)?.is_some() {
                return Err(Error::AlreadyExists(name.to_owned()));
            }
            match self.try_create_with(name, EntryKind::Database, &mut files) {
                Err(Error::PreconditionFailed { .. }) if raced < CATALOG_RETRIES => raced += 1,
                other => return other,
            }
        }
    }

    fn try_create_with(
        &self,
        name: &str,
        kind: EntryKind,
        mut files: impl FnMut(&mut Batch, DbId),
    ) -> Result<CatalogEntry> {
        let counter_key = keys::next_db_id_key();
        let previous = self.backend.get(&counter_key)?;
        let id = match &previous {
            Some(v) => records::decode_u64(&counter_key, v.clone())?,
            None => 1,
        };
        let next = id.checked_add(1).ok_or_else(|| Error::Corrupt {
            what: keys::describe(&counter_key),
            reason: "the id space is exhausted".into(),
        })?;
        let entry = CatalogEntry { id: DbId(id), kind };
        let mut batch = Batch::new();
        batch
            .put(
                keys::catalog_key(name.as_bytes()),
                entry.encode(name.as_bytes()),
            )
            .put(
                counter_key.to_vec(),
                records::encode_u64(&counter_key, next),
            );
        files(&mut batch, entry.id);
        batch
            .guard(counter_key.to_vec(), previous)
            .guard(keys::catalog_key(name.as_bytes()), None);
        self.apply(batch)?;
        Ok(entry)
    }

    /// Every catalog entry, in name order.
    pub fn list(&self) -> Result<Vec<(String, CatalogEntry)>> {
        self.list_prefix("")
    }

    /// The catalog entries whose names start with `prefix`, in name order.
    pub fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, CatalogEntry)>> {
        let mut out = Vec::new();
        for item in self
            .backend
            .scan(keys::catalog_prefix_range(prefix.as_bytes()))?
        {
            let (key, value) = item?;
            let keys::Key::Catalog(name) = keys::Key::decode(&key)? else {
                continue;
            };
            let entry = CatalogEntry::decode(&name, value)?;
            let name = String::from_utf8(name).map_err(|e| Error::Corrupt {
                what: keys::describe(&key),
                reason: format!("the name is not UTF-8: {e}"),
            })?;
            out.push((name, entry));
        }
        Ok(out)
    }

    /// Gives entry `from` the name `to`, in one batch: its id, and so its files, stay.
    /// Fails if `to` exists ([`Error::AlreadyExists`]) or `from` does not
    /// ([`Error::NotFound`]). The caller makes sure nothing has `from` open.
    pub fn rename(&self, from: &str, to: &str) -> Result<CatalogEntry> {
        let _serial = self.catalog_lock.lock();
        keys::validate_name(to)?;
        let entry = self
            .lookup(from)?
            .ok_or_else(|| Error::NotFound(from.to_owned()))?;
        if self.lookup(to)?.is_some() {
            return Err(Error::AlreadyExists(to.to_owned()));
        }
        let target = keys::catalog_key(to.as_bytes());
        let source = keys::catalog_key(from.as_bytes());
        let mut batch = Batch::new();
        batch
            .delete(source.clone())
            .put(target.clone(), entry.encode(to.as_bytes()))
            .guard(target, None)
            .guard(source, Some(entry.encode(from.as_bytes())));
        self.with_lease(entry.id, |kv| kv.apply_for(entry.id, FileKind::Main, batch))?;
        Ok(entry)
    }

    /// Removes `name` and every key of its database, in one batch.
    pub fn drop_entry(&self, name: &str) -> Result<CatalogEntry> {
        // History's lock first, as a fork takes it before the catalog's.
        let _history = self.history.lock.lock();
        let _serial = self.catalog_lock.lock();
        let entry = self
            .lookup(name)?
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        let key = keys::catalog_key(name.as_bytes());
        let mut batch = Batch::new();
        batch
            .delete(key.clone())
            .delete_range(keys::db_range(entry.id))
            .guard(key, Some(entry.encode(name.as_bytes())));
        if self.leases_enabled() {
            // The lease goes with the database: guarded on this host's record (no other
            // host may be writing it), then deleted in the same batch.
            batch.delete(keys::lease_key(entry.id).to_vec());
        }
        self.with_lease(entry.id, |kv| {
            // Its forks get their own copies of the pages they share with it first.
            kv.prepare_drop(entry.id, &mut batch)?;
            kv.apply_for(entry.id, FileKind::Main, batch)
        })?;
        Ok(entry)
    }

    /// Runs `f` holding database `id`'s lease (with leases on: acquired for it, unless
    /// this host holds it already, and released after).
    pub(crate) fn with_lease<T>(&self, id: DbId, f: impl FnOnce(&Kv) -> Result<T>) -> Result<T> {
        self.acquire_lease(id)?;
        let result = f(self);
        let released = self.release_lease(id);
        let value = result?;
        released?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemKv;

    fn kv() -> Kv {
        Kv::open(Arc::new(MemKv::new())).unwrap()
    }

    #[test]
    fn ids_are_allocated_once_and_never_reused() {
        let kv = kv();
        let a = kv.create("a", EntryKind::Database).unwrap();
        let b = kv.create("b", EntryKind::Database).unwrap();
        assert_ne!(a.id, b.id);
        assert!(matches!(
            kv.create("a", EntryKind::Database),
            Err(Error::AlreadyExists(_))
        ));
        kv.drop_entry("a").unwrap();
        let a2 = kv.create("a", EntryKind::Database).unwrap();
        assert!(a2.id > b.id);
        assert_eq!(kv.lookup("a").unwrap(), Some(a2));
    }

    #[test]
    fn creating_writes_an_empty_primary_file() {
        let kv = kv();
        let e = kv.create("sj", EntryKind::SuperJournal).unwrap();
        assert_eq!(
            kv.read_meta(e.id, FileKind::SuperJournal)
                .unwrap()
                .unwrap()
                .meta,
            FileMeta::EMPTY
        );
        assert!(kv.read_meta(e.id, FileKind::Main).unwrap().is_none());
    }

    #[test]
    fn dropping_removes_every_key_of_the_database_only() {
        let kv = kv();
        let a = kv.create("a", EntryKind::Database).unwrap();
        let b = kv.create("b", EntryKind::Database).unwrap();
        for e in [a, b] {
            let mut main = kv.file_write(e.id, FileKind::Main);
            main.put_chunk(ChunkNo(0), vec![1; 16]);
            main.commit().unwrap();
            let mut journal = kv.file_write(e.id, FileKind::MainJournal);
            journal.put_chunk(ChunkNo(3), vec![2; 16]);
            journal.commit().unwrap();
        }
        kv.drop_entry("a").unwrap();
        assert_eq!(kv.scan(keys::db_range(a.id)).unwrap().count(), 0);
        assert_eq!(kv.scan(keys::db_range(b.id)).unwrap().count(), 3);
        assert_eq!(kv.list().unwrap(), vec![("b".to_owned(), b)]);
        assert!(matches!(kv.drop_entry("a"), Err(Error::NotFound(_))));
    }

    #[test]
    fn renaming_moves_the_entry_and_keeps_its_files() {
        let kv = kv();
        let a = kv.create(".staging", EntryKind::Database).unwrap();
        let mut write = kv.file_write(a.id, FileKind::Main);
        write.put_chunk(ChunkNo(0), vec![7; 16]);
        write.commit().unwrap();
        let taken = kv.create("taken", EntryKind::Database).unwrap();
        assert!(matches!(
            kv.rename(".staging", "taken"),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(kv.lookup("taken").unwrap(), Some(taken), "untouched");
        assert_eq!(kv.rename(".staging", "final").unwrap(), a);
        assert_eq!(kv.lookup(".staging").unwrap(), None);
        assert_eq!(kv.lookup("final").unwrap(), Some(a));
        let chunk = kv.read_chunk(a.id, FileKind::Main, ChunkNo(0)).unwrap();
        assert_eq!(chunk.as_deref(), Some(&[7u8; 16][..]));
        assert!(matches!(
            kv.rename(".staging", "other"),
            Err(Error::NotFound(_))
        ));
        assert_eq!(
            kv.list_prefix(".").unwrap(),
            vec![],
            "no entry is left under the old name"
        );
        assert_eq!(
            kv.list_prefix("fin").unwrap(),
            vec![("final".to_owned(), a)]
        );
    }

    #[test]
    fn a_store_from_another_format_is_refused() {
        let backend = Arc::new(MemKv::new());
        let key = keys::store_version_key();
        let mut b = Batch::new();
        b.put(key.to_vec(), checksum::seal_copy(&key, &[99]));
        backend.apply(b).unwrap();
        let err = Kv::open(backend).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedFormat { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_store_without_version_but_with_data_is_refused() {
        let backend = Arc::new(MemKv::new());
        let mut b = Batch::new();
        b.put(keys::catalog_key(b"x"), Bytes::from_static(b"junk"));
        backend.apply(b).unwrap();
        assert!(matches!(Kv::open(backend), Err(Error::Corrupt { .. })));
    }

    /// A backend whose reads miss a record its batches' guards still see, as an engine
    /// with damaged files can.
    #[derive(Debug)]
    struct Disagreeing(MemKv);

    impl KvStore for Disagreeing {
        fn get(&self, _key: &[u8]) -> Result<Option<Bytes>> {
            Ok(None)
        }
        fn scan(&self, _range: KeyRange) -> Result<Scan<'_>> {
            Ok(Box::new(std::iter::empty()))
        }
        fn apply(&self, batch: Batch) -> Result<()> {
            self.0.apply(batch)
        }
        fn flush(&self) -> Result<()> {
            self.0.flush()
        }
        fn stats(&self) -> Result<KvStats> {
            self.0.stats()
        }
    }

    #[test]
    fn a_version_record_that_reads_absent_but_guards_present_is_corruption() {
        let inner = MemKv::new();
        let key = keys::store_version_key();
        let mut b = Batch::new();
        b.put(key.to_vec(), records::encode_store_version());
        inner.apply(b).unwrap();
        let err = Kv::open(Arc::new(Disagreeing(inner))).unwrap_err();
        assert!(err.is_corruption(), "{err}");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn a_read_only_kv_reads_and_refuses_every_write() {
        let backend = Arc::new(MemKv::new());
        Kv::open(backend.clone())
            .unwrap()
            .create("a", EntryKind::Database)
            .unwrap();
        let kv = Kv::open_read_only(backend.clone(), 0).unwrap();
        assert!(kv.is_read_only());
        assert!(kv.lookup("a").unwrap().is_some());
        for err in [
            kv.create("b", EntryKind::Database).unwrap_err(),
            kv.drop_entry("a").unwrap_err(),
            kv.commit_durable().unwrap_err(),
            kv.check_writable().unwrap_err(),
        ] {
            assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        }
        // An empty store is not given its version record.
        let empty = Arc::new(MemKv::new());
        Kv::open_read_only(empty.clone(), 0).unwrap();
        assert!(empty.snapshot().is_empty());
    }

    #[test]
    fn a_claim_is_held_until_its_owner_drops_it() {
        let kv = Arc::new(kv());
        let first = kv.claim().unwrap();
        assert!(kv.claim().is_none(), "a second claim while the first lives");
        assert!(Arc::ptr_eq(first.kv(), &kv));
        drop(first);
        assert!(kv.claim().is_some(), "the store can be claimed again");
    }

    #[test]
    fn corrupt_catalog_entries_are_errors() {
        let backend = Arc::new(MemKv::new());
        let kv = Kv::open(backend.clone()).unwrap();
        let mut b = Batch::new();
        b.put(
            keys::catalog_key(b"x"),
            Bytes::from_static(b"not a sealed entry"),
        );
        backend.apply(b).unwrap();
        assert!(kv.lookup("x").unwrap_err().is_corruption());
        assert!(kv.list().unwrap_err().is_corruption());
    }
}
