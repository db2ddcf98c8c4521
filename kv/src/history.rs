//! History: every commit of a database kept for a retention, restore in place to any
//! kept commit, and forks that share their origin's pages.
//!
//! The layout is an undo log beside the current pages (`keys.rs`, tag `0x04`):
//! - the current pages stay where they are (`[0x02][DbId][Main][page]`), so reading the
//!   current state costs what it cost without history;
//! - commit `V` (the main file's metadata generation it writes) stores, in the same
//!   batch, a [`CommitRecord`] (its time and the file's size after it) and, for every page
//!   below the old size that it overwrites or truncates away, the page as it was before:
//!   `undo(page, V)`. Keys sort by page, then commit, so the page as it was at commit `v`
//!   is the first `undo(page, V)` with `V > v`, and the current page if there is none;
//! - a commit whose replaced pages would take its batch past the limits writes them in
//!   batches of their own just before it. If the commit then fails, they stay behind
//!   under a version no commit has yet; each still holds its page as it was at the
//!   version before, which is what the next commit numbered `V` would have recorded for
//!   it, so reads through them stay right;
//! - a restore is a commit: it writes the restored pages as a large transaction does
//!   (staged, then moved into place, see `staging.rs`) and records the pages it replaced,
//!   so it can be undone by restoring to the commit before it;
//! - a fork is one batch: a catalog entry, metadata copied from the origin's commit, an
//!   [`OriginRecord`] on the fork and a child record on the origin. A page the fork has
//!   not written is read from its origin as of that commit ([`Kv::read_chunk`] falls back
//!   to it), so no page is copied. The origin's child record keeps every commit after the
//!   fork point in its history, and makes its commits record history even with
//!   retention off;
//! - collection ([`Kv::collect_history`]) deletes the oldest commits past the retention
//!   (a time and a byte budget per database), never a pinned restore point and never what
//!   a fork still reads; dropping a database copies into each of its forks the pages it
//!   still shares first.
//!
//! Invariant: for every commit `v` with a record, if every commit after it up to the
//! current one has its record too, the state at `v` is exactly what the undo log and the
//! current pages give. A commit made with history off (and no forks) writes no record,
//! so it breaks the chain: every earlier point is refused, never restored wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::checksum;
use crate::error::{Error, Result};
use crate::file_write::FileWrite;
use crate::keys::{self, ChunkNo, DbId, FileKind, Key};
use crate::records::{self, CommitRecord, FileMeta, OriginRecord, StageRecord};
use crate::shared::{Kv, StoredMeta};
use crate::store::{Batch, MAX_BATCH_BYTES, MAX_BATCH_KEYS, Op};

/// How long, and how much, history each database keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long a commit stays restorable; `None`: history is off.
    pub keep: Option<Duration>,
    /// The most bytes of replaced pages one database keeps; older commits go first.
    pub max_bytes: u64,
}

impl Retention {
    /// The default time kept: 7 days.
    pub const DEFAULT_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
    /// The default bytes of history per database: 64 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

    /// No history (forks still keep what they read of their origin).
    pub const OFF: Retention = Retention {
        keep: None,
        max_bytes: 0,
    };

    /// History kept for `keep` or `max_bytes` per database, whichever ends first.
    pub fn keep(keep: Duration, max_bytes: u64) -> Retention {
        Retention {
            keep: Some(keep),
            max_bytes,
        }
    }

    /// Whether commits record history.
    pub fn is_on(&self) -> bool {
        self.keep.is_some()
    }
}

impl Default for Retention {
    fn default() -> Retention {
        Retention::keep(Retention::DEFAULT_KEEP, Retention::DEFAULT_MAX_BYTES)
    }
}

/// A commit of one database, named by an opaque string that sorts in commit order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bookmark(pub u64);

impl std::fmt::Display for Bookmark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Bookmark {
    /// Parses the 16 lower-case hex digits [`Bookmark`]'s `Display` writes.
    pub fn parse(text: &str) -> Option<Bookmark> {
        if text.len() != 16
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(Bookmark)
    }
}

/// A point in a database's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointInTime {
    /// Just after this commit.
    Bookmark(Bookmark),
    /// The last commit at or before this time.
    Time(SystemTime),
    /// A pinned restore point.
    Label(String),
}

/// One commit in a database's history, as [`Kv::history`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Its bookmark.
    pub bookmark: Bookmark,
    /// When it was applied.
    pub time: SystemTime,
    /// The database's size in bytes after it.
    pub size: u64,
    /// Whether the state after it can be restored (every later commit kept its record).
    pub restorable: bool,
    /// The restore points pinned to it.
    pub labels: Vec<String>,
}

/// What a database's history holds, as [`Kv::history_usage`] counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryUsage {
    /// Commit records.
    pub commits: u64,
    /// Replaced pages kept.
    pub pages: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Pinned restore points.
    pub pins: u64,
    /// Forks made of the database that still read pages from it.
    pub forks: u64,
}

/// What one [`Kv::collect_history`] pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Commit records removed.
    pub commits: u64,
    /// Replaced pages removed.
    pub pages: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Whether more is to be collected (the pass stopped at its bound).
    pub more: bool,
}

/// The longest chain of forks of forks: a read of a page no fork wrote goes this deep.
pub const MAX_FORK_DEPTH: usize = 16;

/// The longest label of a restore point, in bytes.
pub const MAX_LABEL_LEN: usize = 128;

/// Bytes of pages a restore stages, or a drop copies into a fork, per batch (with at most
/// 1,000 of them, well inside the batch limits at any page size).
const STAGE_BYTES: usize = 4 << 20;

/// Keys one collection pass deletes at most.
const COLLECT_PASS_KEYS: usize = 20_000;

/// Replaced pages a commit adds to its own batch at most; more go in batches before it.
const UNDO_IN_BATCH_KEYS: usize = 2_000;
const UNDO_IN_BATCH_BYTES: usize = 2 << 20;

/// Per-store state of history: the retention, and what is known of each database's
/// forks.
#[derive(Debug)]
pub(crate) struct HistoryState {
    retention: Mutex<Retention>,
    /// Whether a database has forks reading from it (loaded on its first commit).
    children: Mutex<HashMap<DbId, bool>>,
    /// A fork's origin (loaded on its first read of a page it does not hold).
    origins: Mutex<HashMap<DbId, Option<OriginRecord>>>,
    /// Serialises forks, restores and collection with each other.
    pub(crate) lock: Mutex<()>,
}

impl Default for HistoryState {
    fn default() -> HistoryState {
        HistoryState {
            retention: Mutex::new(Retention::default()),
            children: Mutex::new(HashMap::new()),
            origins: Mutex::new(HashMap::new()),
            lock: Mutex::new(()),
        }
    }
}

impl HistoryState {
    /// Forgets what is cached of database `id` (its ownership may have moved).
    pub(crate) fn forget(&self, id: DbId) {
        // A database known to have forks keeps recording history: that can only cost
        // (a few replaced pages a fork dropped since no longer needs), never lose.
        let mut children = self.children.lock();
        if children.get(&id) == Some(&false) {
            children.remove(&id);
        }
        drop(children);
        self.origins.lock().remove(&id);
    }
}

/// The error for a point of database `name`'s history that cannot be used.
fn no_such_point(name: &str, reason: String) -> Error {
    Error::NoSuchPoint {
        db: format!("database {name:?}"),
        reason,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn pages_of(size: u64, chunk_size: u32) -> u32 {
    if chunk_size == 0 {
        return 0;
    }
    u32::try_from(size.div_ceil(u64::from(chunk_size))).unwrap_or(u32::MAX)
}

/// Checks a restore point's label: 1 to [`MAX_LABEL_LEN`] bytes of letters, digits and
/// `-_.:`, not a bookmark's shape (so a label never reads as one).
pub fn validate_label(label: &str) -> std::result::Result<(), String> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "a label is 1 to {MAX_LABEL_LEN} bytes, {:?} has {}",
            label.chars().take(40).collect::<String>(),
            label.len()
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:".contains(*c)))
    {
        return Err(format!(
            "a label holds letters, digits and -_.: only, {label:?} has {c:?}"
        ));
    }
    if Bookmark::parse(label).is_some() {
        return Err(format!(
            "{label:?} has the shape of a bookmark (16 hex digits), so it cannot be a label"
        ));
    }
    Ok(())
}

/// The SQLite file change counter of a database header (bytes 24..28), if `page` is
/// page 1 of a SQLite database.
fn change_counter(page: &[u8]) -> Option<u32> {
    if !page.starts_with(b"SQLite format 3\0") {
        return None;
    }
    let bytes: [u8; 4] = page.get(24..28)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

impl Kv {
    /// Sets how long and how much history every database keeps from now on.
    pub fn set_retention(&self, retention: Retention) {
        *self.history.retention.lock() = retention;
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        *self.history.retention.lock()
    }

    /// Whether commits of database `id` record history: retention is on, or it has forks.
    fn history_active(&self, id: DbId) -> Result<bool> {
        if self.retention().is_on() {
            return Ok(true);
        }
        if let Some(known) = self.history.children.lock().get(&id) {
            return Ok(*known);
        }
        let has = self.scan(keys::children_range(id))?.next().is_some();
        // A fork that marked the database meanwhile wins over what was read before it.
        Ok(*self.history.children.lock().entry(id).or_insert(has))
    }

    /// Marks database `id` as having forks before a fork of it is made: from now on its
    /// commits record what they replace. The VFS calls it before it quiets the
    /// database's writers, so a commit either saw the mark or had finished.
    pub fn will_fork(&self, id: DbId) {
        self.history.children.lock().insert(id, true);
    }

    /// Adds database `id`'s history to `batch`, a write of its main file: the pages it
    /// replaces, and the commit record if it writes the metadata. Returns the batches of
    /// replaced pages to apply before it, when they would not fit in it.
    pub(crate) fn record_history(&self, id: DbId, batch: &mut Batch) -> Result<Vec<Batch>> {
        if !self.history_active(id)? {
            return Ok(Vec::new());
        }
        let meta_key = keys::meta_key(id, FileKind::Main);
        let file_end = keys::file_range(id, FileKind::Main).end;
        let chunk_of = |key: &[u8]| -> Option<u32> {
            let tail = key.strip_prefix(&meta_key[..])?;
            <[u8; 4]>::try_from(tail).ok().map(u32::from_be_bytes)
        };
        let mut puts = BTreeSet::new();
        let mut drop_from: Option<u32> = None;
        let mut new_meta = None;
        for op in &batch.ops {
            match op {
                Op::Put(k, v) if k[..] == meta_key[..] => {
                    new_meta = Some(FileMeta::decode(id, FileKind::Main, v.clone())?);
                }
                Op::Put(k, _) => {
                    if let Some(c) = chunk_of(k) {
                        puts.insert(c);
                    }
                }
                Op::DeleteRange(r) if r.end == file_end => {
                    if let Some(c) = chunk_of(&r.start) {
                        drop_from = Some(drop_from.map_or(c, |d| d.min(c)));
                    }
                }
                _ => {}
            }
        }
        if puts.is_empty() && drop_from.is_none() && new_meta.is_none() {
            return Ok(Vec::new());
        }
        // The staging record, read only where it matters: a batch without metadata is a
        // staged commit's move, and a truncation may be its last batch.
        let staged_key = keys::meta_key(id, FileKind::Staged);
        let staged_raw = if new_meta.is_none() || drop_from.is_some() {
            self.get(&staged_key)?
        } else {
            None
        };
        let staged_target = match &staged_raw {
            Some(raw) => match StageRecord::decode(id, raw.clone())? {
                StageRecord::Committed(target) => Some(target),
                StageRecord::Staging => None,
            },
            None => None,
        };
        // The version this write belongs to: the metadata it writes, or, for a batch of a
        // staged commit's move, the metadata the commit record carries.
        let (version, moving) = match (new_meta, staged_target) {
            (Some(m), _) => (m.generation, false),
            (None, Some(t)) => (t.generation, true),
            (None, None) => return Ok(Vec::new()),
        };
        // The batches of replaced pages written before this one carry its guards (and a
        // move's, the staging record as it is), so a stale writer's are refused too
        // instead of overwriting the real ones.
        let mut guards = batch.preconditions.clone();
        if moving {
            guards.push(crate::store::Precondition {
                key: Bytes::copy_from_slice(&staged_key),
                expected: staged_raw,
            });
        }
        // The metadata before this write: what its guard expects (no read), or, for a
        // move batch, as stored.
        let guarded = batch
            .preconditions
            .iter()
            .find(|p| p.key[..] == meta_key[..])
            .map(|p| p.expected.clone());
        let old = match guarded {
            Some(Some(raw)) => Some(FileMeta::decode(id, FileKind::Main, raw)?),
            Some(None) => None,
            None => self.read_meta(id, FileKind::Main)?.map(|m| m.meta),
        };
        let old_pages = old.map_or(0, |m| pages_of(m.size, m.chunk_size));
        let mut replaced: Vec<u32> = puts.iter().copied().filter(|c| *c < old_pages).collect();
        if let Some(t) = drop_from {
            // A staged commit's last batch may drop pages an earlier batch of the same
            // commit moved: their replaced page is already recorded.
            let also_moved = staged_target.is_some();
            for c in t..old_pages {
                if puts.contains(&c) {
                    continue;
                }
                if also_moved
                    && self
                        .get(&keys::undo_key(id, ChunkNo(c), version))?
                        .is_some()
                {
                    continue;
                }
                replaced.push(c);
            }
        }
        let mut undo = Vec::with_capacity(replaced.len());
        for c in replaced {
            let Some(page) = self.read_chunk(id, FileKind::Main, ChunkNo(c))? else {
                return Err(Error::Corrupt {
                    what: keys::describe(&keys::chunk_key(id, FileKind::Main, ChunkNo(c))),
                    reason: format!("missing below the file's {old_pages} pages"),
                });
            };
            let key = keys::undo_key(id, ChunkNo(c), version);
            undo.push((key, records::seal_undo(&key, &page)));
        }
        if let Some(m) = new_meta {
            let record = CommitRecord {
                time_ms: now_ms(),
                size: m.size,
                chunk_size: m.chunk_size,
            };
            batch.put(
                keys::commit_key(id, version).to_vec(),
                record.encode(id, version),
            );
        }
        let undo_bytes: usize = undo.iter().map(|(k, v)| k.len() + v.len()).sum();
        let fits = batch.ops.len() + batch.preconditions.len() + undo.len() + 8 <= MAX_BATCH_KEYS
            && batch.bytes() + undo_bytes + (64 << 10) <= MAX_BATCH_BYTES
            && undo.len() <= UNDO_IN_BATCH_KEYS
            && undo_bytes <= UNDO_IN_BATCH_BYTES;
        if fits {
            for (k, v) in undo {
                batch.put(k.to_vec(), v);
            }
            return Ok(Vec::new());
        }
        let guarded = || Batch {
            ops: Vec::new(),
            preconditions: guards.clone(),
        };
        let mut before = Vec::new();
        let mut part = guarded();
        let mut part_bytes = 0;
        for (k, v) in undo {
            if part.ops.len() >= UNDO_IN_BATCH_KEYS * 2 || part_bytes + v.len() > 8 << 20 {
                before.push(std::mem::replace(&mut part, guarded()));
                part_bytes = 0;
            }
            part_bytes += k.len() + v.len();
            part.put(k.to_vec(), v);
        }
        if !part.is_empty() {
            before.push(part);
        }
        Ok(before)
    }

    /// The origin of database `id`, if it is a fork that may still read pages from it.
    fn origin(&self, id: DbId) -> Result<Option<OriginRecord>> {
        if let Some(known) = self.history.origins.lock().get(&id) {
            return Ok(*known);
        }
        let origin = match self.get(&keys::origin_key(id))? {
            Some(raw) => Some(OriginRecord::decode(id, raw)?),
            None => None,
        };
        self.history.origins.lock().insert(id, origin);
        Ok(origin)
    }

    /// Page `no` of fork `id` that the fork has not written: its origin's page as of the
    /// fork point. `None` if `id` is not a fork (the page is missing).
    pub(crate) fn inherited(&self, id: DbId, no: ChunkNo) -> Result<Option<Bytes>> {
        self.inherited_at_depth(id, no, 0)
    }

    fn inherited_at_depth(&self, id: DbId, no: ChunkNo, depth: usize) -> Result<Option<Bytes>> {
        let Some(o) = self.origin(id)? else {
            return Ok(None);
        };
        if depth >= MAX_FORK_DEPTH {
            return Err(Error::Corrupt {
                what: keys::describe(&keys::origin_key(id)),
                reason: format!("its forks' origins go more than {MAX_FORK_DEPTH} deep"),
            });
        }
        self.page_at(o.parent, no, o.version, depth + 1)
    }

    /// Page `no` of database `id` as it was just after commit `version`. The current
    /// page is read first, straight from the store (this host may not own `id`, so its
    /// cache may not follow it), then the first page replaced after `version`: a commit
    /// between the two reads leaves that replaced page, which is the right one.
    fn page_at(&self, id: DbId, no: ChunkNo, version: u64, depth: usize) -> Result<Option<Bytes>> {
        let key = keys::chunk_key(id, FileKind::Main, no);
        let current = match self.get(&key)? {
            Some(v) => Some(checksum::open(&key, v)?),
            None => None,
        };
        if let Some(item) = self.scan(keys::undo_after(id, no, version))?.next() {
            let (key, value) = item?;
            return records::open_undo(&key, value).map(Some);
        }
        match current {
            Some(page) => Ok(Some(page)),
            None => self.inherited_at_depth(id, no, depth),
        }
    }

    fn commit_record(&self, id: DbId, version: u64) -> Result<Option<CommitRecord>> {
        match self.get(&keys::commit_key(id, version))? {
            Some(raw) => CommitRecord::decode(id, version, raw).map(Some),
            None => Ok(None),
        }
    }

    /// Every commit record of database `id`, oldest first.
    fn commit_records(&self, id: DbId) -> Result<Vec<(u64, CommitRecord)>> {
        let mut out = Vec::new();
        for item in self.scan(keys::commits_range(id))? {
            let (key, value) = item?;
            let Key::Commit(_, v) = Key::decode(&key)? else {
                continue;
            };
            out.push((v, CommitRecord::decode(id, v, value)?));
        }
        Ok(out)
    }

    /// The version-valued records of `range` (restore points, forks), each with what
    /// `pick` makes of its key.
    fn versions_in<T>(
        &self,
        range: crate::keys::KeyRange,
        pick: impl Fn(Key) -> Option<T>,
    ) -> Result<Vec<(T, u64)>> {
        let mut out = Vec::new();
        for item in self.scan(range)? {
            let (key, value) = item?;
            if let Some(t) = pick(Key::decode(&key)?) {
                out.push((t, records::decode_u64(&key, value)?));
            }
        }
        Ok(out)
    }

    fn pins(&self, id: DbId) -> Result<Vec<(String, u64)>> {
        self.versions_in(keys::pins_range(id), |k| match k {
            Key::Pin(_, label) => Some(String::from_utf8_lossy(&label).into_owned()),
            _ => None,
        })
    }

    fn children(&self, id: DbId) -> Result<Vec<(DbId, u64)>> {
        self.versions_in(keys::children_range(id), |k| match k {
            Key::Child(_, child) => Some(child),
            _ => None,
        })
    }

    fn entry_of(&self, name: &str) -> Result<crate::records::CatalogEntry> {
        self.lookup(name)?
            .ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    fn current_meta(&self, name: &str, id: DbId) -> Result<StoredMeta> {
        self.read_meta(id, FileKind::Main)?
            .ok_or_else(|| Error::Corrupt {
                what: format!("database {name:?}"),
                reason: "its main file's metadata is missing".into(),
            })
    }

    /// The oldest version from which every commit up to `current` has its record: the
    /// points before it cannot be restored.
    fn chain_start(records: &[(u64, CommitRecord)], current: u64) -> u64 {
        let mut oldest = None;
        let mut want = current;
        for (v, _) in records.iter().rev().filter(|(v, _)| *v <= current) {
            if *v != want {
                break;
            }
            oldest = Some(want);
            match want.checked_sub(1) {
                Some(w) => want = w,
                None => break,
            }
        }
        oldest.unwrap_or(current)
    }

    /// Database `name`'s history, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<CommitInfo>> {
        let entry = self.entry_of(name)?;
        let current = self.current_meta(name, entry.id)?.meta.generation;
        let records = self.commit_records(entry.id)?;
        let start = Kv::chain_start(&records, current);
        let mut labels: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (label, v) in self.pins(entry.id)? {
            labels.entry(v).or_default().push(label);
        }
        Ok(records
            .into_iter()
            .map(|(v, r)| CommitInfo {
                bookmark: Bookmark(v),
                time: time_of(r.time_ms),
                size: r.size,
                restorable: v >= start && v <= current,
                labels: labels.remove(&v).unwrap_or_default(),
            })
            .collect())
    }

    /// The bookmark of database `name`'s current state.
    pub fn current_bookmark(&self, name: &str) -> Result<Bookmark> {
        let entry = self.entry_of(name)?;
        Ok(Bookmark(self.current_meta(name, entry.id)?.meta.generation))
    }

    fn resolve_version(
        &self,
        name: &str,
        id: DbId,
        current: u64,
        point: &PointInTime,
    ) -> Result<u64> {
        let refuse = |reason: String| no_such_point(name, reason);
        let records = self.commit_records(id)?;
        let start = Kv::chain_start(&records, current);
        let version = match point {
            PointInTime::Bookmark(b) => {
                if b.0 == current {
                    return Ok(current);
                }
                if b.0 > current || !records.iter().any(|(v, _)| *v == b.0) {
                    return Err(refuse(format!(
                        "no commit has bookmark {b} (unknown, or collected from its history)"
                    )));
                }
                b.0
            }
            PointInTime::Time(t) => {
                let ms = t
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                match records.iter().rev().find(|(_, r)| r.time_ms <= ms) {
                    Some((v, _)) => *v,
                    None => {
                        let oldest = records
                            .first()
                            .map(|(_, r)| humanish(r.time_ms))
                            .unwrap_or_else(|| "none".into());
                        return Err(refuse(format!(
                            "{} is before the history kept (its oldest commit: {oldest})",
                            humanish(ms)
                        )));
                    }
                }
            }
            PointInTime::Label(label) => {
                validate_label(label).map_err(refuse)?;
                match self.get(&keys::pin_key(id, label.as_bytes()))? {
                    Some(raw) => records::decode_u64(&keys::pin_key(id, label.as_bytes()), raw)?,
                    None => return Err(refuse(format!("no restore point is labelled {label:?}"))),
                }
            }
        };
        if version == current {
            return Ok(current);
        }
        if version < start {
            return Err(refuse(format!(
                "commit {} cannot be restored: a later commit was made with history off, \
                 so its pages were not kept",
                Bookmark(version)
            )));
        }
        Ok(version)
    }

    /// Pins restore point `label` of database `name` at `at` (its current state when
    /// `None`): collection keeps it until it is unpinned. Fails if the label is taken.
    pub fn pin(&self, name: &str, label: &str, at: Option<&PointInTime>) -> Result<Bookmark> {
        let _serial = self.history.lock.lock();
        validate_label(label).map_err(|reason| no_such_point(name, reason))?;
        let entry = self.entry_of(name)?;
        self.with_lease(entry.id, |kv| kv.pin_leased(name, entry.id, label, at))
    }

    fn pin_leased(
        &self,
        name: &str,
        id: DbId,
        label: &str,
        at: Option<&PointInTime>,
    ) -> Result<Bookmark> {
        let refuse = |reason: String| no_such_point(name, reason);
        let current = self.current_meta(name, id)?.meta.generation;
        let version = match at {
            Some(point) => self.resolve_version(name, id, current, point)?,
            None => current,
        };
        let commit_key = keys::commit_key(id, version);
        let Some(commit) = self.get(&commit_key)? else {
            return Err(refuse(format!(
                "commit {} has no record in the history (history was off when it was made)",
                Bookmark(version)
            )));
        };
        let key = keys::pin_key(id, label.as_bytes());
        if self.get(&key)?.is_some() {
            return Err(refuse(format!("restore point {label:?} exists already")));
        }
        let mut batch = Batch::new();
        batch
            .put(key.clone(), records::encode_u64(&key, version))
            .guard(key, None)
            // Not collected between the resolution and the pin (collection takes the
            // same lock and lease; the guard says so in the batch itself).
            .guard(commit_key.to_vec(), Some(commit));
        self.apply(batch)?;
        self.commit_durable()?;
        Ok(Bookmark(version))
    }

    /// Removes restore point `label` of database `name`.
    pub fn unpin(&self, name: &str, label: &str) -> Result<()> {
        let _serial = self.history.lock.lock();
        let entry = self.entry_of(name)?;
        let key = keys::pin_key(entry.id, label.as_bytes());
        if self.get(&key)?.is_none() {
            return Err(no_such_point(
                name,
                format!("no restore point is labelled {label:?}"),
            ));
        }
        let mut batch = Batch::new();
        batch.delete(key);
        self.apply(batch)?;
        self.commit_durable()
    }

    /// Restores database `name`, in place and atomically, to `to`: one new commit whose
    /// state is the state at `to`, itself recorded (restoring to the commit before it
    /// undoes it). Returns the new commit's bookmark. The caller makes sure no connection
    /// reads or writes the database meanwhile (the VFS does: `Vfs::restore_database`).
    pub fn restore(&self, name: &str, to: &PointInTime) -> Result<Bookmark> {
        let _serial = self.history.lock.lock();
        let entry = self.entry_of(name)?;
        let id = entry.id;
        self.settle_staged(id)?;
        let stored = self.current_meta(name, id)?;
        let current = stored.meta.generation;
        let version = self.resolve_version(name, id, current, to)?;
        if version == current {
            return Ok(Bookmark(current));
        }
        let record = self.commit_record(id, version)?.ok_or_else(|| {
            no_such_point(
                name,
                format!("commit {} is not in the history", Bookmark(version)),
            )
        })?;
        let pages = pages_of(record.size, record.chunk_size);
        // The header's change counter must move on, or a connection that cached the
        // pages of a state with the same counter would not see the restore.
        let counter_now = match self.read_chunk(id, FileKind::Main, ChunkNo(0))? {
            Some(p) => change_counter(&p),
            None => None,
        };
        let restored_first = |page: &[u8]| -> Vec<u8> {
            let mut v = Vec::with_capacity(page.len() + FileWrite::SPARE_CAPACITY);
            v.extend_from_slice(page);
            if let (Some(now), Some(_)) = (counter_now, change_counter(page)) {
                let next = now.wrapping_add(1).to_be_bytes();
                if let Some(c) = v.get_mut(24..28) {
                    c.copy_from_slice(&next);
                }
                if let Some(c) = v.get_mut(92..96) {
                    c.copy_from_slice(&next);
                }
            }
            v
        };
        let target = FileMeta {
            chunk_size: record.chunk_size,
            size: record.size,
            generation: current + 1,
        };
        self.with_lease(id, |kv| {
            kv.stage_restore(id, name, version, pages, &restored_first)
                .and_then(|write| write.commit_staged(&target, Some(&stored)))
                .inspect_err(|_| {
                    // Before the commit batch the database is as it was; the pages staged
                    // so far go (a failure inside the commit's move is settled at the next
                    // open).
                    if let Ok(Some(raw)) = kv.get(&keys::meta_key(id, FileKind::Staged))
                        && matches!(StageRecord::decode(id, raw), Ok(StageRecord::Staging))
                    {
                        let _ = kv.discard_staged(id);
                    }
                })
        })?;
        self.commit_durable()?;
        Ok(Bookmark(target.generation))
    }

    /// Stages the pages of database `id` that differ at commit `version` (of its first
    /// `pages`), page 1 through `first_page`, and returns the write that commits them.
    fn stage_restore(
        &self,
        id: DbId,
        name: &str,
        version: u64,
        pages: u32,
        first_page: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> Result<FileWrite<'_>> {
        let mut begin = self.file_write(id, FileKind::Staged);
        begin.begin_staging();
        begin.commit()?;
        let mut write = self.file_write(id, FileKind::Staged);
        let (mut in_write, mut pages_in) = (0usize, 0usize);
        let mut first_done = false;
        let mut last: Option<u32> = None;
        for item in self.scan(keys::undo_range(id))? {
            let (key, value) = item?;
            let Key::Undo(_, page, v) = Key::decode(&key)? else {
                continue;
            };
            if v <= version || last == Some(page.0) || page.0 >= pages {
                continue;
            }
            last = Some(page.0);
            let data = records::open_undo(&key, value)?;
            let page_bytes = if page.0 == 0 {
                first_done = true;
                first_page(&data)
            } else {
                let mut v = Vec::with_capacity(data.len() + FileWrite::SPARE_CAPACITY);
                v.extend_from_slice(&data);
                v
            };
            in_write += page_bytes.len();
            pages_in += 1;
            write.put_chunk(page, page_bytes);
            if in_write >= STAGE_BYTES || pages_in >= 1_000 {
                (in_write, pages_in) = (0, 0);
                write.commit()?;
                write = self.file_write(id, FileKind::Staged);
            }
        }
        if !first_done && pages > 0 {
            let Some(first) = self.read_chunk(id, FileKind::Main, ChunkNo(0))? else {
                return Err(Error::Corrupt {
                    what: format!("database {name:?}"),
                    reason: "its first page is missing".into(),
                });
            };
            write.put_chunk(ChunkNo(0), first_page(&first));
        }
        Ok(write)
    }

    /// Forks database `src` at `at` (its current state when `None`) into a new database
    /// `new_name`, copying no page: the fork reads what it has not written from `src` as
    /// of that commit. The two are independent afterwards. Fails if `new_name` exists.
    pub fn fork(&self, src: &str, at: Option<&PointInTime>, new_name: &str) -> Result<Bookmark> {
        keys::validate_name(new_name)?;
        let _serial = self.history.lock.lock();
        let entry = self.entry_of(src)?;
        let id = entry.id;
        if entry.kind != crate::records::EntryKind::Database {
            return Err(Error::NoSuchPoint {
                db: format!("{src:?}"),
                reason: "only a database can be forked".into(),
            });
        }
        // From now on every commit of `src` records what it replaces.
        self.will_fork(id);
        self.with_lease(id, |kv| kv.fork_leased(src, id, at, new_name))
    }

    fn fork_leased(
        &self,
        src: &str,
        id: DbId,
        at: Option<&PointInTime>,
        new_name: &str,
    ) -> Result<Bookmark> {
        if self.get(&keys::meta_key(id, FileKind::Staged))?.is_some() {
            return Err(Error::HistoryBusy {
                db: format!("database {src:?}"),
                reason: "a large transaction of it is in progress or not yet settled; \
                         fork it once it is"
                    .into(),
            });
        }
        let mut depth = 1;
        let mut cursor = self.origin(id)?;
        while let Some(o) = cursor {
            depth += 1;
            cursor = self.origin(o.parent)?;
        }
        if depth > MAX_FORK_DEPTH {
            return Err(Error::HistoryBusy {
                db: format!("database {src:?}"),
                reason: format!(
                    "it is a fork {} deep; forks are at most {MAX_FORK_DEPTH} deep",
                    depth - 1
                ),
            });
        }
        let stored = self.current_meta(src, id)?;
        let current = stored.meta.generation;
        let version = match at {
            Some(point) => self.resolve_version(src, id, current, point)?,
            None => current,
        };
        let fork_meta = if version == current {
            stored.meta
        } else {
            let r = self.commit_record(id, version)?.ok_or_else(|| {
                no_such_point(
                    src,
                    format!("commit {} is not in the history", Bookmark(version)),
                )
            })?;
            FileMeta {
                chunk_size: r.chunk_size,
                size: r.size,
                generation: version,
            }
        };
        self.create_with(new_name, |batch, new_id| {
            batch
                .put(
                    keys::meta_key(new_id, FileKind::Main).to_vec(),
                    fork_meta.encode(new_id, FileKind::Main),
                )
                .put(
                    keys::origin_key(new_id).to_vec(),
                    OriginRecord {
                        parent: id,
                        version,
                    }
                    .encode(new_id),
                )
                .put(
                    keys::commit_key(new_id, version).to_vec(),
                    CommitRecord {
                        time_ms: now_ms(),
                        size: fork_meta.size,
                        chunk_size: fork_meta.chunk_size,
                    }
                    .encode(new_id, version),
                );
            let child = keys::child_key(id, new_id);
            batch
                .put(child.to_vec(), records::encode_u64(&child, version))
                // No commit of `src` slipped in between its metadata read and here.
                .guard(
                    keys::meta_key(id, FileKind::Main).to_vec(),
                    Some(stored.raw.clone()),
                );
        })?;
        self.commit_durable()?;
        Ok(Bookmark(version))
    }

    /// Copies into fork `child` every page it still reads from its origin, then cuts the
    /// link (for dropping the origin). Idempotent: a crash part way leaves pages that are
    /// what the fork read anyway.
    pub(crate) fn materialize(&self, child: DbId) -> Result<()> {
        let Some(origin) = self.origin(child)? else {
            return Ok(());
        };
        let Some(meta) = self.read_meta(child, FileKind::Main)? else {
            return Ok(());
        };
        let pages = pages_of(meta.meta.size, meta.meta.chunk_size);
        let mut tries = 0;
        loop {
            match self.copy_inherited(child, origin, pages) {
                // The fork committed a page between the check and the copy: look again.
                Err(Error::PreconditionFailed { .. }) if tries < 16 => tries += 1,
                other => break other?,
            }
        }
        let mut batch = Batch::new();
        batch
            .delete(keys::origin_key(child).to_vec())
            .delete(keys::child_key(origin.parent, child).to_vec());
        self.apply(batch)?;
        self.history.forget(child);
        Ok(())
    }

    /// Writes into fork `child` each of its first `pages` pages it does not hold, as its
    /// origin had it, each guarded on the fork still not holding it.
    fn copy_inherited(&self, child: DbId, origin: OriginRecord, pages: u32) -> Result<()> {
        let mut batch = Batch::new();
        let mut bytes = 0usize;
        for c in 0..pages {
            let key = keys::chunk_key(child, FileKind::Main, ChunkNo(c));
            if self.get(&key)?.is_some() {
                continue;
            }
            let Some(page) = self.page_at(origin.parent, ChunkNo(c), origin.version, 1)? else {
                return Err(Error::Corrupt {
                    what: keys::describe(&key),
                    reason: "neither the fork nor its origin holds it".into(),
                });
            };
            let mut v = Vec::with_capacity(page.len() + checksum::TRAILER_LEN);
            v.extend_from_slice(&page);
            bytes += v.len();
            crate::file_write::put_chunk(&mut batch, child, FileKind::Main, ChunkNo(c), v);
            batch.guard(key.to_vec(), None);
            if batch.ops.len() >= 1_000 || bytes >= STAGE_BYTES {
                bytes = 0;
                self.apply(std::mem::take(&mut batch))?;
            }
        }
        if !batch.is_empty() {
            self.apply(batch)?;
        }
        Ok(())
    }

    /// Before database `id` is dropped: gives each fork of it its own copy of the pages
    /// it still shares, and removes `id` from its own origin's forks; adds to `batch`, the
    /// drop's, the removal of `id`'s history.
    pub(crate) fn prepare_drop(&self, id: DbId, batch: &mut Batch) -> Result<()> {
        for (child, _) in self.children(id)? {
            self.materialize(child)?;
        }
        if let Some(o) = self.origin(id)? {
            batch.delete(keys::child_key(o.parent, id).to_vec());
        }
        batch.delete_range(keys::history_range(id));
        self.history.forget(id);
        Ok(())
    }

    /// What database `name`'s history holds.
    pub fn history_usage(&self, name: &str) -> Result<HistoryUsage> {
        let entry = self.entry_of(name)?;
        let id = entry.id;
        let mut usage = HistoryUsage {
            commits: self.scan(keys::commits_range(id))?.count() as u64,
            pins: self.scan(keys::pins_range(id))?.count() as u64,
            forks: self.scan(keys::children_range(id))?.count() as u64,
            ..HistoryUsage::default()
        };
        for item in self.scan(keys::undo_range(id))? {
            let (key, value) = item?;
            usage.pages += 1;
            usage.bytes += (key.len() + value.len()) as u64;
        }
        Ok(usage)
    }

    /// One pass of collection over database `name`'s history: removes the commits past
    /// the retention (older than its time, or beyond its bytes, counted from the newest),
    /// keeping every pinned point and everything a fork reads. Deletes at most a bounded
    /// number of keys; [`Collected::more`] says whether another pass has work.
    pub fn collect_history(&self, name: &str) -> Result<Collected> {
        let _serial = self.history.lock.lock();
        let entry = self.entry_of(name)?;
        // On a store hosts share, the host that writes the database collects it, under
        // its lease, so that no fork, pin or restore there races the collection.
        if self.leased_elsewhere(entry.id)? {
            return Ok(Collected::default());
        }
        self.with_lease(entry.id, |kv| kv.collect_leased(entry.id))
    }

    fn collect_leased(&self, id: DbId) -> Result<Collected> {
        let Some(stored) = self.read_meta(id, FileKind::Main)? else {
            return Ok(Collected::default());
        };
        let current = stored.meta.generation;
        let records = self.commit_records(id)?;
        let retention = self.retention();
        // One scan of the replaced pages: their sizes by version, and their keys for the
        // deletes below.
        let mut bytes_by_version: BTreeMap<u64, u64> = BTreeMap::new();
        let mut replaced = Vec::new();
        for item in self.scan(keys::undo_range(id))? {
            let (key, value) = item?;
            if let Key::Undo(_, _, v) = Key::decode(&key)? {
                let bytes = (key.len() + value.len()) as u64;
                *bytes_by_version.entry(v).or_default() += bytes;
                replaced.push((key, v, bytes));
            }
        }
        // The oldest state to keep restorable: `keep_from`. Keeping the state after
        // commit `v` needs every replaced page of commits after `v`.
        let mut keep_from = current;
        if let Some(keep) = retention.keep {
            let cutoff =
                now_ms().saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
            let by_time = records
                .iter()
                .find(|(_, r)| r.time_ms >= cutoff)
                .map_or(current, |(v, _)| *v);
            // By bytes: the oldest `v` whose later replaced pages fit the budget.
            let mut by_bytes = current;
            let mut total = 0u64;
            let mut upper = u64::MAX;
            for (v, _) in records.iter().rev().filter(|(v, _)| *v <= current) {
                total += bytes_by_version
                    .range(v + 1..=upper)
                    .map(|(_, b)| *b)
                    .sum::<u64>();
                upper = *v;
                if total > retention.max_bytes {
                    break;
                }
                by_bytes = *v;
            }
            keep_from = by_time.max(by_bytes);
        }
        keep_from = keep_from.max(Kv::chain_start(&records, current));
        // Never past a pinned point or a fork's origin point.
        for (_, v) in self.pins(id)? {
            keep_from = keep_from.min(v);
        }
        for (_, v) in self.children(id)? {
            keep_from = keep_from.min(v);
        }
        let mut out = Collected::default();
        let mut batch = Batch::new();
        let mut deleted = 0usize;
        let flush = |batch: &mut Batch, kv: &Kv| -> Result<()> {
            if !batch.is_empty() {
                kv.apply(std::mem::take(batch))?;
            }
            Ok(())
        };
        for (v, _) in &records {
            if *v >= keep_from {
                break;
            }
            if deleted >= COLLECT_PASS_KEYS {
                out.more = true;
                break;
            }
            batch.delete(keys::commit_key(id, *v).to_vec());
            out.commits += 1;
            deleted += 1;
            if batch.ops.len() >= 4_000 {
                flush(&mut batch, self)?;
            }
        }
        for (key, v, bytes) in replaced {
            if deleted >= COLLECT_PASS_KEYS {
                out.more = true;
                break;
            }
            if v > keep_from {
                continue;
            }
            out.pages += 1;
            out.bytes += bytes;
            deleted += 1;
            batch.delete(key);
            if batch.ops.len() >= 4_000 {
                flush(&mut batch, self)?;
            }
        }
        flush(&mut batch, self)?;
        if out.commits + out.pages > 0 {
            self.commit_durable()?;
        }
        Ok(out)
    }
}

/// A time for messages, as RFC 3339 UTC (milliseconds since the Unix epoch in; the
/// civil date from the day number by Howard Hinnant's `civil_from_days`). Written here:
/// the library links none of the date crates the command uses.
fn humanish(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mem::MemKv;
    use crate::records::EntryKind;

    fn kv() -> Kv {
        Kv::open(Arc::new(MemKv::new())).unwrap()
    }

    /// Commits `pages` (page number, fill byte) to database `id` with `size` pages of 8
    /// bytes, as the VFS does: one batch, truncating past the new size.
    fn commit(kv: &Kv, id: DbId, size: u32, pages: &[(u32, u8)]) -> u64 {
        let before = kv.read_meta(id, FileKind::Main).unwrap();
        let generation = before.as_ref().map_or(0, |m| m.meta.generation) + 1;
        let mut w = kv.file_write(id, FileKind::Main);
        w.drop_chunks_from(ChunkNo(size));
        for (c, b) in pages {
            w.put_chunk(ChunkNo(*c), vec![*b; 8]);
        }
        let meta = FileMeta {
            chunk_size: 8,
            size: u64::from(size) * 8,
            generation,
        };
        w.set_meta(&meta, before.as_ref());
        w.commit().unwrap();
        generation
    }

    fn state(kv: &Kv, id: DbId) -> Vec<u8> {
        let meta = kv.read_meta(id, FileKind::Main).unwrap().unwrap().meta;
        (0..pages_of(meta.size, meta.chunk_size))
            .map(|c| {
                kv.read_chunk(id, FileKind::Main, ChunkNo(c))
                    .unwrap()
                    .unwrap()[0]
            })
            .collect()
    }

    #[test]
    fn restore_gives_every_earlier_state_and_can_be_undone() {
        let kv = kv();
        let id = kv.create("a", EntryKind::Database).unwrap().id;
        let mut states = Vec::new();
        let steps: &[(u32, &[(u32, u8)])] = &[
            (3, &[(0, 1), (1, 1), (2, 1)]),
            (3, &[(1, 2)]),
            (5, &[(3, 3), (4, 3), (0, 3)]),
            (2, &[(1, 4)]),
            (4, &[(2, 5), (3, 5)]),
        ];
        for (size, pages) in steps {
            let v = commit(&kv, id, *size, pages);
            states.push((v, state(&kv, id)));
        }
        let before_restores = states.last().unwrap().0;
        for (v, want) in states.iter().rev() {
            let new = kv
                .restore("a", &PointInTime::Bookmark(Bookmark(*v)))
                .unwrap();
            assert_eq!(&state(&kv, id), want, "restored to {v}");
            assert!(new.0 > before_restores || *v == before_restores);
        }
        // Undo the restores: back to the state before the first one.
        kv.restore("a", &PointInTime::Bookmark(Bookmark(before_restores)))
            .unwrap();
        assert_eq!(state(&kv, id), states.last().unwrap().1);
        assert_eq!(
            kv.audit("a").unwrap().unwrap().problems,
            Vec::<String>::new()
        );
        let err = kv
            .restore("a", &PointInTime::Bookmark(Bookmark(9_999)))
            .unwrap_err();
        assert!(matches!(err, Error::NoSuchPoint { .. }), "{err}");
    }

    #[test]
    fn a_fork_shares_pages_and_each_side_writes_alone() {
        let kv = kv();
        kv.set_retention(Retention::OFF);
        let src = kv.create("src", EntryKind::Database).unwrap().id;
        commit(&kv, src, 4, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
        kv.fork("src", None, "dst").unwrap();
        let dst = kv.lookup("dst").unwrap().unwrap().id;
        assert_eq!(state(&kv, dst), vec![1, 1, 1, 1]);
        assert_eq!(
            kv.scan(keys::file_range(dst, FileKind::Main))
                .unwrap()
                .count(),
            1,
            "no page copied"
        );
        commit(&kv, src, 4, &[(1, 7), (2, 7)]);
        commit(&kv, dst, 5, &[(2, 9), (4, 9)]);
        assert_eq!(state(&kv, src), vec![1, 7, 7, 1]);
        assert_eq!(state(&kv, dst), vec![1, 1, 9, 1, 9]);
        assert!(kv.audit("dst").unwrap().unwrap().problems.is_empty());
        // Collection keeps what the fork reads; dropping the source copies it over.
        kv.collect_history("src").unwrap();
        kv.forget_cached(dst);
        assert_eq!(state(&kv, dst), vec![1, 1, 9, 1, 9]);
        kv.drop_entry("src").unwrap();
        kv.forget_cached(dst);
        assert_eq!(state(&kv, dst), vec![1, 1, 9, 1, 9]);
        assert!(kv.get(&keys::origin_key(dst)).unwrap().is_none());
        assert!(kv.scan(keys::history_range(src)).unwrap().next().is_none());
        assert!(matches!(
            kv.fork("dst", None, "dst").unwrap_err(),
            Error::AlreadyExists(_)
        ));
    }

    #[test]
    fn collection_keeps_pins_and_the_byte_budget() {
        let kv = kv();
        let id = kv.create("a", EntryKind::Database).unwrap().id;
        let mut versions = Vec::new();
        for i in 0..20u8 {
            versions.push(commit(&kv, id, 2, &[(0, i), (1, i)]));
        }
        kv.pin(
            "a",
            "before-deploy",
            Some(&PointInTime::Bookmark(Bookmark(versions[5]))),
        )
        .unwrap();
        // Each commit replaces two pages of 8 + 16 bytes under 22-byte keys.
        kv.set_retention(Retention::keep(Retention::DEFAULT_KEEP, 3 * 2 * 46));
        let done = kv.collect_history("a").unwrap();
        assert!(done.pages > 0 && !done.more);
        let history = kv.history("a").unwrap();
        assert_eq!(
            history.first().unwrap().bookmark.0,
            versions[5],
            "pinned point kept"
        );
        kv.restore("a", &PointInTime::Label("before-deploy".into()))
            .unwrap();
        assert_eq!(state(&kv, id), vec![5, 5]);
        kv.unpin("a", "before-deploy").unwrap();
        kv.collect_history("a").unwrap();
        let usage = kv.history_usage("a").unwrap();
        assert!(usage.bytes <= 3 * 2 * 46, "{usage:?}");
        for bad in ["", "a b", "0123456789abcdef"] {
            assert!(kv.pin("a", bad, None).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            kv.restore("a", &PointInTime::Time(UNIX_EPOCH)).unwrap_err(),
            Error::NoSuchPoint { .. }
        ));
    }

    #[test]
    fn times_in_messages_are_rfc3339() {
        assert_eq!(humanish(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(humanish(978_307_200_000), "2001-01-01T00:00:00.000Z");
        assert_eq!(humanish(1_796_322_302_412), "2026-12-03T18:25:02.412Z");
        assert_eq!(humanish(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_commit_with_history_off_cuts_the_chain() {
        let kv = kv();
        let id = kv.create("a", EntryKind::Database).unwrap().id;
        let v1 = commit(&kv, id, 1, &[(0, 1)]);
        kv.set_retention(Retention::OFF);
        commit(&kv, id, 1, &[(0, 2)]);
        kv.set_retention(Retention::default());
        commit(&kv, id, 1, &[(0, 3)]);
        let err = kv
            .restore("a", &PointInTime::Bookmark(Bookmark(v1)))
            .unwrap_err();
        assert!(err.to_string().contains("history off"), "{err}");
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod review_tests;
