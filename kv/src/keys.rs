//! The key format: the only place keys are built and parsed. Outside this crate it is
//! reached only through [`crate::raw`] (tests and tools); `kv/tests/golden/keys.hex`
//! pins the bytes of every key kind.
//!
//! Every key starts with a tag byte that names its key space *and* the format of that
//! space; a future format gets new tags, so old and new keys can never be confused.
//! All integers are big-endian and fixed width, so the byte order of keys is the
//! logical order:
//!
//! ```text
//! [0x00]['v']                                  store format version   -> [version u8]
//! [0x00]['n']                                  next DbId to allocate  -> [u64 BE]
//! [0x01][name bytes]                           catalog entry          -> [DbId u64 BE][EntryKind u8]
//! [0x02][DbId u64 BE][FileKind u8]             file metadata          -> FileMeta
//! [0x02][DbId u64 BE][FileKind u8][ChunkNo u32 BE]  one chunk of a file -> chunk bytes
//! [0x03][DbId u64 BE]                          a database's lease      -> LeaseRecord
//! [0x04][DbId u64 BE][0x00][Version u64 BE]      a commit in its history -> CommitRecord
//! [0x04][DbId u64 BE][0x01][Page u32 BE][Version u64 BE]  a page before that commit -> page bytes
//! [0x04][DbId u64 BE][0x02][label bytes]        a pinned restore point  -> [Version u64 BE]
//! [0x04][DbId u64 BE][0x03]                     the fork's origin       -> OriginRecord
//! [0x04][DbId u64 BE][0x04][Child DbId u64 BE]  a fork made of it       -> [Version u64 BE]
//! ```
//!
//! A database's history (`history.rs`) lies in [`history_range`], outside [`db_range`]: a
//! range delete of its files never drops it, and dropping the database drops it apart.
//!
//! Invariants this encoding keeps (tested below):
//! - every key of one database lies in [`db_range`], and nothing else does;
//! - a file's metadata key sorts directly before that file's chunks, and the chunks sort
//!   by chunk number, so one file is one contiguous range ([`file_range`]);
//! - [`Key::decode`] inverts every `*_key` builder and rejects anything else.
//!
//! Values are sealed with a checksum trailer by [`crate::checksum`]; this module only
//! knows key bytes.

use std::fmt;

use crate::error::{Error, Result};

/// Version of the record layouts written by this build (file metadata, catalog entries):
/// the first byte of every record.
pub const FORMAT_VERSION: u8 = 1;

/// Version of the store as a whole, in its store-version record. Version 2 added the
/// staging area of large transactions ([`FileKind::Staged`]): a version-1 store is read
/// as it is (it has no staged keys) and marked version 2 when opened for writing; a
/// build that knows only version 1 refuses a version-2 store, which may hold a committed
/// transaction whose pages are not yet in place.
///
/// Version 3 added history (`history.rs`): commit records, the pages each commit
/// replaced, and forks whose pages are read from their origin. A version-2 store has no
/// history and reads as it is (marked version 3 when opened for writing); a build that
/// knows only version 2 refuses a version-3 store, whose forks it would read as missing
/// pages and whose history it would not keep.
pub const STORE_VERSION: u8 = 3;

/// The oldest store version this build reads.
pub const OLDEST_STORE_VERSION: u8 = 1;

/// Longest database name the catalog accepts, in bytes.
pub const MAX_NAME_LEN: usize = 512;

const TAG_SYSTEM: u8 = 0x00;
const TAG_CATALOG: u8 = 0x01;
const TAG_DATA: u8 = 0x02;
const TAG_LEASE: u8 = 0x03;
const TAG_HISTORY: u8 = 0x04;

const HIST_COMMIT: u8 = 0x00;
const HIST_UNDO: u8 = 0x01;
const HIST_PIN: u8 = 0x02;
const HIST_ORIGIN: u8 = 0x03;
const HIST_CHILD: u8 = 0x04;

const SYSTEM_VERSION: u8 = b'v';
const SYSTEM_NEXT_DB_ID: u8 = b'n';

const META_KEY_LEN: usize = 1 + 8 + 1;
const CHUNK_KEY_LEN: usize = META_KEY_LEN + 4;

/// Identifies one database (or super-journal) in the store. Allocated once, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DbId(pub u64);

impl fmt::Display for DbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "db#{}", self.0)
    }
}

/// The index of one fixed-size chunk inside a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkNo(pub u32);

/// Which file of a database a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum FileKind {
    /// The database itself; one chunk is one page.
    Main = 0,
    /// Its rollback journal.
    MainJournal = 1,
    /// A super-journal naming the journals of a multi-database commit.
    SuperJournal = 2,
    /// The staging area of the main file's transaction in progress, when it outgrew its
    /// memory share: its chunks are pages no reader sees. Its metadata key is the commit
    /// record of a transaction whose staged pages are being moved into place (see
    /// `staging.rs`).
    Staged = 3,
}

impl FileKind {
    /// Every kind, in key order.
    pub const ALL: [FileKind; 4] = [
        FileKind::Main,
        FileKind::MainJournal,
        FileKind::SuperJournal,
        FileKind::Staged,
    ];

    fn from_byte(b: u8) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Main => "main",
            FileKind::MainJournal => "journal",
            FileKind::SuperJournal => "super-journal",
            FileKind::Staged => "staged",
        })
    }
}

/// A parsed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// The store's format version.
    StoreVersion,
    /// The DbId allocation counter.
    NextDbId,
    /// A catalog entry for the name.
    Catalog(Vec<u8>),
    /// A file's metadata.
    Meta(DbId, FileKind),
    /// One chunk of a file.
    Chunk(DbId, FileKind, ChunkNo),
    /// The lease of a database (which host may write it).
    Lease(DbId),
    /// The record of commit `version` in a database's history.
    Commit(DbId, u64),
    /// Page `page` of a database as it was before commit `version` replaced it.
    Undo(DbId, ChunkNo, u64),
    /// A pinned restore point of a database, by label.
    Pin(DbId, Vec<u8>),
    /// Where a fork's pages come from.
    Origin(DbId),
    /// A fork made of a database (whose history it keeps alive).
    Child(DbId, DbId),
}

impl Key {
    /// Parses key bytes; anything that no builder here produces is an error.
    pub fn decode(key: &[u8]) -> Result<Key> {
        let bad = |reason: &str| Error::Corrupt {
            what: format!("key {}", hex(key)),
            reason: reason.to_owned(),
        };
        match key {
            [TAG_SYSTEM, SYSTEM_VERSION] => Ok(Key::StoreVersion),
            [TAG_SYSTEM, SYSTEM_NEXT_DB_ID] => Ok(Key::NextDbId),
            [TAG_CATALOG, name @ ..] => Ok(Key::Catalog(name.to_vec())),
            [TAG_DATA, rest @ ..] => {
                let (id, rest) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| bad("short data key"))?;
                let (kind, rest) = rest.split_first().ok_or_else(|| bad("no file kind"))?;
                let id = DbId(u64::from_be_bytes(*id));
                let kind = FileKind::from_byte(*kind).ok_or_else(|| bad("unknown file kind"))?;
                match rest {
                    [] => Ok(Key::Meta(id, kind)),
                    [a, b, c, d] => Ok(Key::Chunk(
                        id,
                        kind,
                        ChunkNo(u32::from_be_bytes([*a, *b, *c, *d])),
                    )),
                    _ => Err(bad("bad chunk number")),
                }
            }
            [TAG_LEASE, id @ ..] => match <[u8; 8]>::try_from(id) {
                Ok(id) => Ok(Key::Lease(DbId(u64::from_be_bytes(id)))),
                Err(_) => Err(bad("bad lease key length")),
            },
            [TAG_HISTORY, rest @ ..] => {
                let (id, rest) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| bad("short history key"))?;
                let id = DbId(u64::from_be_bytes(*id));
                let u64_of = |b: &[u8]| <[u8; 8]>::try_from(b).map(u64::from_be_bytes);
                match rest {
                    [HIST_COMMIT, v @ ..] => u64_of(v)
                        .map(|v| Key::Commit(id, v))
                        .map_err(|_| bad("bad commit key")),
                    [HIST_UNDO, p0, p1, p2, p3, v @ ..] => u64_of(v)
                        .map(|v| {
                            Key::Undo(id, ChunkNo(u32::from_be_bytes([*p0, *p1, *p2, *p3])), v)
                        })
                        .map_err(|_| bad("bad page history key")),
                    [HIST_PIN, label @ ..] => Ok(Key::Pin(id, label.to_vec())),
                    [HIST_ORIGIN] => Ok(Key::Origin(id)),
                    [HIST_CHILD, c @ ..] => u64_of(c)
                        .map(|c| Key::Child(id, DbId(c)))
                        .map_err(|_| bad("bad fork key")),
                    _ => Err(bad("unknown history key")),
                }
            }
            _ => Err(bad("unknown key tag")),
        }
    }

    /// The key bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::StoreVersion => store_version_key().to_vec(),
            Key::NextDbId => next_db_id_key().to_vec(),
            Key::Catalog(name) => catalog_key(name),
            Key::Meta(id, kind) => meta_key(*id, *kind).to_vec(),
            Key::Chunk(id, kind, no) => chunk_key(*id, *kind, *no).to_vec(),
            Key::Lease(id) => lease_key(*id).to_vec(),
            Key::Commit(id, v) => commit_key(*id, *v).to_vec(),
            Key::Undo(id, page, v) => undo_key(*id, *page, *v).to_vec(),
            Key::Pin(id, label) => pin_key(*id, label),
            Key::Origin(id) => origin_key(*id).to_vec(),
            Key::Child(id, child) => child_key(*id, *child).to_vec(),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::StoreVersion => f.write_str("store version"),
            Key::NextDbId => f.write_str("next db id"),
            Key::Catalog(name) => write!(f, "catalog entry {:?}", String::from_utf8_lossy(name)),
            Key::Meta(id, kind) => write!(f, "{id} {kind} metadata"),
            Key::Chunk(id, kind, no) => write!(f, "{id} {kind} chunk {}", no.0),
            Key::Lease(id) => write!(f, "{id} lease"),
            Key::Commit(id, v) => write!(f, "{id} commit {v:016x}"),
            Key::Undo(id, page, v) => write!(f, "{id} page {} before commit {v:016x}", page.0),
            Key::Pin(id, label) => {
                write!(f, "{id} restore point {:?}", String::from_utf8_lossy(label))
            }
            Key::Origin(id) => write!(f, "{id} fork origin"),
            Key::Child(id, child) => write!(f, "{id} fork {child}"),
        }
    }
}

/// A human-readable name for key bytes, for error messages.
pub fn describe(key: &[u8]) -> String {
    match Key::decode(key) {
        Ok(k) => k.to_string(),
        Err(_) => format!("key {}", hex(key)),
    }
}

/// Lower-case hex of `bytes`, for messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Key of the store format version.
pub fn store_version_key() -> [u8; 2] {
    [TAG_SYSTEM, SYSTEM_VERSION]
}

/// Key of the DbId allocation counter.
pub fn next_db_id_key() -> [u8; 2] {
    [TAG_SYSTEM, SYSTEM_NEXT_DB_ID]
}

/// Checks a database name: non-empty, at most [`MAX_NAME_LEN`] bytes, no NUL.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.len() > MAX_NAME_LEN {
        "the name is longer than 512 bytes"
    } else if name.contains('\0') {
        "the name contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: truncate_for_message(name),
        reason,
    })
}

fn truncate_for_message(name: &str) -> String {
    let mut end = name.len().min(64);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let head = name.get(..end).unwrap_or_default();
    if end < name.len() {
        format!("{head}...")
    } else {
        head.to_owned()
    }
}

/// Key of the catalog entry for `name` (validate the name first).
pub fn catalog_key(name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(TAG_CATALOG);
    k.extend_from_slice(name);
    k
}

/// The range holding every catalog entry.
pub fn catalog_range() -> KeyRange {
    KeyRange::prefix(&[TAG_CATALOG])
}

/// The range holding the catalog entries whose names start with `prefix`.
pub fn catalog_prefix_range(prefix: &[u8]) -> KeyRange {
    KeyRange::prefix(&catalog_key(prefix))
}

/// The range holding every database's files (metadata and chunks).
pub fn data_range() -> KeyRange {
    KeyRange::prefix(&[TAG_DATA])
}

/// Key of a file's metadata.
pub fn meta_key(id: DbId, kind: FileKind) -> [u8; META_KEY_LEN] {
    let mut k = [0u8; META_KEY_LEN];
    let (tag, rest) = k.split_at_mut(1);
    let (db, kind_byte) = rest.split_at_mut(8);
    tag.copy_from_slice(&[TAG_DATA]);
    db.copy_from_slice(&id.0.to_be_bytes());
    kind_byte.copy_from_slice(&[kind as u8]);
    k
}

/// Key of one chunk of a file.
pub fn chunk_key(id: DbId, kind: FileKind, no: ChunkNo) -> [u8; CHUNK_KEY_LEN] {
    let mut k = [0u8; CHUNK_KEY_LEN];
    let (meta, chunk) = k.split_at_mut(META_KEY_LEN);
    meta.copy_from_slice(&meta_key(id, kind));
    chunk.copy_from_slice(&no.0.to_be_bytes());
    k
}

/// Key of database `id`'s lease: which host may write it (see `lease.rs`). It lies outside
/// [`db_range`], so that a range delete of the database's files cannot drop it.
pub fn lease_key(id: DbId) -> [u8; 9] {
    let mut k = [0u8; 9];
    let (tag, db) = k.split_at_mut(1);
    tag.copy_from_slice(&[TAG_LEASE]);
    db.copy_from_slice(&id.0.to_be_bytes());
    k
}

fn history_prefix(id: DbId, sub: u8) -> [u8; 10] {
    let mut k = [0u8; 10];
    let (tag, rest) = k.split_at_mut(1);
    let (db, sub_byte) = rest.split_at_mut(8);
    tag.copy_from_slice(&[TAG_HISTORY]);
    db.copy_from_slice(&id.0.to_be_bytes());
    sub_byte.copy_from_slice(&[sub]);
    k
}

fn history_key<const N: usize>(id: DbId, sub: u8, tail: &[u8]) -> [u8; N] {
    let mut k = [0u8; N];
    let (head, rest) = k.split_at_mut(10);
    head.copy_from_slice(&history_prefix(id, sub));
    rest.copy_from_slice(tail);
    k
}

/// Key of commit `version`'s record in database `id`'s history.
pub fn commit_key(id: DbId, version: u64) -> [u8; 18] {
    history_key(id, HIST_COMMIT, &version.to_be_bytes())
}

/// Key of page `page` of database `id` as it was before commit `version`.
pub fn undo_key(id: DbId, page: ChunkNo, version: u64) -> [u8; 22] {
    let mut tail = [0u8; 12];
    let (p, v) = tail.split_at_mut(4);
    p.copy_from_slice(&page.0.to_be_bytes());
    v.copy_from_slice(&version.to_be_bytes());
    history_key(id, HIST_UNDO, &tail)
}

/// Key of restore point `label` of database `id`.
pub fn pin_key(id: DbId, label: &[u8]) -> Vec<u8> {
    let mut k = history_prefix(id, HIST_PIN).to_vec();
    k.extend_from_slice(label);
    k
}

/// Key of fork `id`'s origin record.
pub fn origin_key(id: DbId) -> [u8; 10] {
    history_prefix(id, HIST_ORIGIN)
}

/// Key recording that `child` was forked from `id`.
pub fn child_key(id: DbId, child: DbId) -> [u8; 18] {
    history_key(id, HIST_CHILD, &child.0.to_be_bytes())
}

/// Every history key of one database: commits, replaced pages, restore points, origin and
/// forks.
pub fn history_range(id: DbId) -> KeyRange {
    let mut prefix = [0u8; 9];
    let (tag, db) = prefix.split_at_mut(1);
    tag.copy_from_slice(&[TAG_HISTORY]);
    db.copy_from_slice(&id.0.to_be_bytes());
    KeyRange::prefix(&prefix)
}

/// The commit records of database `id`, oldest first.
pub fn commits_range(id: DbId) -> KeyRange {
    KeyRange::prefix(&history_prefix(id, HIST_COMMIT))
}

/// Every replaced page of database `id`, by page, then by commit.
pub fn undo_range(id: DbId) -> KeyRange {
    KeyRange::prefix(&history_prefix(id, HIST_UNDO))
}

/// The replaced versions of page `page` of database `id` from commit `after + 1` on,
/// oldest first: the first one holds the page as it was at commit `after`.
pub fn undo_after(id: DbId, page: ChunkNo, after: u64) -> KeyRange {
    let mut prefix = history_prefix(id, HIST_UNDO).to_vec();
    prefix.extend_from_slice(&page.0.to_be_bytes());
    KeyRange {
        start: undo_key(id, page, after.saturating_add(1)).to_vec(),
        end: prefix_successor(&prefix),
    }
}

/// The restore points of database `id`, by label.
pub fn pins_range(id: DbId) -> KeyRange {
    KeyRange::prefix(&history_prefix(id, HIST_PIN))
}

/// The forks made of database `id`.
pub fn children_range(id: DbId) -> KeyRange {
    KeyRange::prefix(&history_prefix(id, HIST_CHILD))
}

/// Every key of one database: all its files' metadata and chunks.
pub fn db_range(id: DbId) -> KeyRange {
    let mut prefix = [0u8; 9];
    let (tag, db) = prefix.split_at_mut(1);
    tag.copy_from_slice(&[TAG_DATA]);
    db.copy_from_slice(&id.0.to_be_bytes());
    KeyRange::prefix(&prefix)
}

/// One file: its metadata key followed by its chunks.
pub fn file_range(id: DbId, kind: FileKind) -> KeyRange {
    KeyRange::prefix(&meta_key(id, kind))
}

/// The chunks of one file from `first` on (its metadata excluded).
pub fn chunks_from(id: DbId, kind: FileKind, first: ChunkNo) -> KeyRange {
    KeyRange {
        start: chunk_key(id, kind, first).to_vec(),
        end: file_range(id, kind).end,
    }
}

/// A half-open range of keys, `start <= key < end`; an empty `end` means unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// First key in the range.
    pub start: Vec<u8>,
    /// First key past the range; empty for "no upper bound".
    pub end: Vec<u8>,
}

impl KeyRange {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange {
            start: prefix.to_vec(),
            end: prefix_successor(prefix),
        }
    }

    /// The range as bounds for ordered maps: from `start` inclusive to `end` exclusive,
    /// or unbounded above when `end` is empty.
    pub fn bounds(&self) -> (std::ops::Bound<&[u8]>, std::ops::Bound<&[u8]>) {
        use std::ops::Bound;
        let end = if self.end.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(self.end.as_slice())
        };
        (Bound::Included(self.start.as_slice()), end)
    }

    /// Whether no key can lie in the range (its end is at or before its start).
    pub fn is_empty(&self) -> bool {
        !self.end.is_empty() && self.end <= self.start
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// The smallest key greater than every key starting with `prefix` (empty if none).
fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips() {
        let keys = [
            Key::StoreVersion,
            Key::NextDbId,
            Key::Catalog(b"actor/42".to_vec()),
            Key::Catalog(Vec::new()),
            Key::Meta(DbId(7), FileKind::Main),
            Key::Meta(DbId(u64::MAX), FileKind::SuperJournal),
            Key::Chunk(DbId(7), FileKind::MainJournal, ChunkNo(0)),
            Key::Chunk(DbId(1 << 40), FileKind::Main, ChunkNo(u32::MAX)),
        ];
        for key in keys {
            assert_eq!(Key::decode(&key.encode()).unwrap(), key);
        }
    }

    #[test]
    fn malformed_keys_are_errors() {
        for bad in [
            &[][..],
            &[0x09],
            &[TAG_SYSTEM, b'x'],
            &[TAG_DATA, 0, 0, 0],
            &[TAG_DATA, 0, 0, 0, 0, 0, 0, 0, 1, 99],
            &[TAG_DATA, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1],
        ] {
            assert!(Key::decode(bad).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn one_database_is_one_contiguous_range() {
        let id = DbId(5);
        let range = db_range(id);
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for neighbour in [DbId(4), DbId(6), DbId(5 << 8), DbId(u64::MAX)] {
            keys.push(meta_key(neighbour, FileKind::Main).to_vec());
            keys.push(chunk_key(neighbour, FileKind::Main, ChunkNo(0)).to_vec());
        }
        keys.push(catalog_key(b"zzz"));
        keys.push(next_db_id_key().to_vec());
        for key in &keys {
            assert!(!range.contains(key), "{} in {id}'s range", describe(key));
        }
        for kind in FileKind::ALL {
            assert!(range.contains(&meta_key(id, kind)));
            for no in [0, 1, 255, 256, u32::MAX] {
                assert!(range.contains(&chunk_key(id, kind, ChunkNo(no))));
            }
        }
    }

    #[test]
    fn chunks_sort_by_number_after_their_metadata() {
        let id = DbId(3);
        let mut keys: Vec<Vec<u8>> = [u32::MAX, 0, 256, 1, 255, 65536]
            .iter()
            .map(|n| chunk_key(id, FileKind::Main, ChunkNo(*n)).to_vec())
            .collect();
        keys.push(meta_key(id, FileKind::Main).to_vec());
        keys.sort();
        let decoded: Vec<Key> = keys.iter().map(|k| Key::decode(k).unwrap()).collect();
        let mut expected = vec![Key::Meta(id, FileKind::Main)];
        expected.extend(
            [0, 1, 255, 256, 65536, u32::MAX].map(|n| Key::Chunk(id, FileKind::Main, ChunkNo(n))),
        );
        assert_eq!(decoded, expected);
        let file = file_range(id, FileKind::Main);
        assert!(keys.iter().all(|k| file.contains(k)));
        assert!(!file.contains(&meta_key(id, FileKind::MainJournal)));
    }

    #[test]
    fn chunks_from_excludes_earlier_chunks_and_metadata() {
        let id = DbId(9);
        let r = chunks_from(id, FileKind::MainJournal, ChunkNo(4));
        assert!(!r.contains(&meta_key(id, FileKind::MainJournal)));
        assert!(!r.contains(&chunk_key(id, FileKind::MainJournal, ChunkNo(3))));
        assert!(r.contains(&chunk_key(id, FileKind::MainJournal, ChunkNo(4))));
        assert!(r.contains(&chunk_key(id, FileKind::MainJournal, ChunkNo(u32::MAX))));
        assert!(!r.contains(&meta_key(id, FileKind::SuperJournal)));
    }

    #[test]
    fn prefix_successor_carries_over_ff() {
        assert_eq!(prefix_successor(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_successor(&[0xff, 0xff]), Vec::<u8>::new());
        assert!(KeyRange::prefix(&[0xff]).contains(&[0xff, 0xff, 0xff]));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("task-42").is_ok());
        assert!(
            validate_name("../x").is_ok(),
            "path-looking names are plain keys here"
        );
        assert!(validate_name("").is_err());
        assert!(validate_name("a\0b").is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        let err = validate_name(&"é".repeat(MAX_NAME_LEN))
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than 512"), "{err}");
    }
}
