//! Layouts of the small records the store keeps beside chunks: file metadata and
//! catalog entries. Each starts with [`FORMAT_VERSION`] and is sealed with the checksum
//! trailer of [`crate::checksum`], so a damaged or foreign record is an error, never a
//! wrong size or a wrong database. Only this crate encodes and decodes them ([`crate::raw`]
//! lends the functions to tests and tools); `kv/tests/golden/records.hex` pins their bytes.

use bytes::Bytes;

use crate::checksum;
use crate::error::{Error, Result};
use crate::keys::{self, DbId, FORMAT_VERSION, FileKind, OLDEST_STORE_VERSION, STORE_VERSION};

/// The metadata of one stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Bytes per chunk; 0 until the first write fixes it (the main database's page size).
    pub chunk_size: u32,
    /// Logical file size in bytes.
    pub size: u64,
    /// Incremented by every write of this record; guards against a stale writer.
    pub generation: u64,
}

const META_LEN: usize = 1 + 4 + 8 + 8;

impl FileMeta {
    /// An empty file whose chunk size is not yet known.
    pub const EMPTY: FileMeta = FileMeta {
        chunk_size: 0,
        size: 0,
        generation: 0,
    };

    /// The sealed value stored under `meta_key(id, kind)`.
    pub(crate) fn encode(&self, id: DbId, kind: FileKind) -> Bytes {
        let mut v = Vec::with_capacity(META_LEN + checksum::TRAILER_LEN);
        v.push(FORMAT_VERSION);
        v.extend_from_slice(&self.chunk_size.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.generation.to_be_bytes());
        checksum::seal(&keys::meta_key(id, kind), v)
    }

    /// The fields after a record's version byte (and state byte, for a staging record):
    /// chunk size, size, generation, and nothing after them.
    fn decode_fields(rest: &[u8], corrupt: impl Fn(String) -> Error) -> Result<FileMeta> {
        let (chunk_size, rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("short record".into()))?;
        let (size, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("short record".into()))?;
        let (generation, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("short record".into()))?;
        if !rest.is_empty() {
            return Err(corrupt(format!("{} trailing bytes", rest.len())));
        }
        Ok(FileMeta {
            chunk_size: u32::from_be_bytes(*chunk_size),
            size: u64::from_be_bytes(*size),
            generation: u64::from_be_bytes(*generation),
        })
    }

    /// Verifies and parses a value read under `meta_key(id, kind)`.
    pub(crate) fn decode(id: DbId, kind: FileKind, value: Bytes) -> Result<FileMeta> {
        let key = keys::meta_key(id, kind);
        let rest = open_record(&key, value)?;
        FileMeta::decode_fields(&rest, |reason| corrupt(&key, reason))
    }
}

/// The record of a database's staging area, stored under the metadata key of
/// [`FileKind::Staged`]. Its layout is `[FORMAT_VERSION][state u8][FileMeta fields]`:
/// state 0 is [`StageRecord::Staging`] (the meta fields zero), 1 is
/// [`StageRecord::Committed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageRecord {
    /// A transaction is staging pages and has not committed: the staged chunks are
    /// garbage once the transaction ends or the process dies.
    Staging,
    /// The transaction committed: the main file is this metadata once every staged chunk
    /// has been moved into place (until then no reader may look at the file).
    Committed(FileMeta),
}

impl StageRecord {
    /// The sealed value stored under `meta_key(id, FileKind::Staged)`.
    pub(crate) fn encode(&self, id: DbId) -> Bytes {
        let (state, meta) = match self {
            StageRecord::Staging => (0u8, FileMeta::EMPTY),
            StageRecord::Committed(m) => (1u8, *m),
        };
        let mut v = Vec::with_capacity(1 + META_LEN + checksum::TRAILER_LEN);
        v.push(FORMAT_VERSION);
        v.push(state);
        v.extend_from_slice(&meta.chunk_size.to_be_bytes());
        v.extend_from_slice(&meta.size.to_be_bytes());
        v.extend_from_slice(&meta.generation.to_be_bytes());
        checksum::seal(&keys::meta_key(id, FileKind::Staged), v)
    }

    /// Verifies and parses a value read under `meta_key(id, FileKind::Staged)`.
    pub(crate) fn decode(id: DbId, value: Bytes) -> Result<StageRecord> {
        let key = keys::meta_key(id, FileKind::Staged);
        let payload = checksum::open(&key, value)?;
        let corrupt = |reason: String| Error::Corrupt {
            what: keys::describe(&key),
            reason,
        };
        let [version, state, rest @ ..] = &payload[..] else {
            return Err(corrupt("short record".into()));
        };
        check_version(*version, &key)?;
        let meta = FileMeta::decode_fields(rest, corrupt)?;
        match state {
            0 if meta == FileMeta::EMPTY => Ok(StageRecord::Staging),
            1 => Ok(StageRecord::Committed(meta)),
            other => Err(corrupt(format!("unknown staging state {other}"))),
        }
    }
}

/// Encodes a staging record (for tests and tools).
pub fn encode_stage_record(record: &StageRecord, id: DbId) -> Bytes {
    record.encode(id)
}

/// Decodes a staging record (for tests and tools).
pub fn decode_stage_record(id: DbId, value: Bytes) -> Result<StageRecord> {
    StageRecord::decode(id, value)
}

/// What a catalog name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// A database (its files are `FileKind::Main` and `FileKind::MainJournal`).
    Database = 0,
    /// A super-journal of a multi-database commit (`FileKind::SuperJournal`).
    SuperJournal = 1,
}

impl EntryKind {
    /// The file kind holding this entry's primary file.
    pub fn primary_file(self) -> FileKind {
        match self {
            EntryKind::Database => FileKind::Main,
            EntryKind::SuperJournal => FileKind::SuperJournal,
        }
    }
}

/// One catalog entry: the id a name maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The id of the named database.
    pub id: DbId,
    /// What the name refers to.
    pub kind: EntryKind,
}

const ENTRY_LEN: usize = 1 + 8 + 1;

impl CatalogEntry {
    /// The sealed value stored under `catalog_key(name)`.
    pub(crate) fn encode(&self, name: &[u8]) -> Bytes {
        let mut v = Vec::with_capacity(ENTRY_LEN + checksum::TRAILER_LEN);
        v.push(FORMAT_VERSION);
        v.extend_from_slice(&self.id.0.to_be_bytes());
        v.push(self.kind as u8);
        checksum::seal(&keys::catalog_key(name), v)
    }

    /// Verifies and parses a value read under `catalog_key(name)`.
    pub(crate) fn decode(name: &[u8], value: Bytes) -> Result<CatalogEntry> {
        let key = keys::catalog_key(name);
        let rest = open_record(&key, value)?;
        let corrupt = |reason: &str| corrupt(&key, reason);
        let (id, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("short record"))?;
        let kind = match rest {
            [0] => EntryKind::Database,
            [1] => EntryKind::SuperJournal,
            [_] => return Err(corrupt("unknown entry kind")),
            _ => return Err(corrupt("wrong record length")),
        };
        Ok(CatalogEntry {
            id: DbId(u64::from_be_bytes(*id)),
            kind,
        })
    }
}

/// The lease of one database: which host may write it, under which generation, until when.
/// The default is a lease never taken (released, generation 0).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// The holder's host id (empty: released).
    pub owner: String,
    /// Incremented by every acquisition; a commit is fenced by the exact record.
    pub generation: u64,
    /// When the lease runs out, in milliseconds since the Unix epoch on the store's clock
    /// (0: released).
    pub expires_ms: u64,
}

impl LeaseRecord {
    /// The sealed value stored under `lease_key(id)`.
    pub(crate) fn encode(&self, id: DbId) -> Bytes {
        let owner = self.owner.as_bytes();
        let mut v = Vec::with_capacity(1 + 8 + 8 + 2 + owner.len() + checksum::TRAILER_LEN);
        v.push(FORMAT_VERSION);
        v.extend_from_slice(&self.generation.to_be_bytes());
        v.extend_from_slice(&self.expires_ms.to_be_bytes());
        let len = u16::try_from(owner.len()).unwrap_or(u16::MAX);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(owner.get(..usize::from(len)).unwrap_or(owner));
        checksum::seal(&keys::lease_key(id), v)
    }

    /// Verifies and parses a value read under `lease_key(id)`.
    pub(crate) fn decode(id: DbId, value: Bytes) -> Result<LeaseRecord> {
        let key = keys::lease_key(id);
        let rest = open_record(&key, value)?;
        let corrupt = |reason: &str| corrupt(&key, reason);
        let (generation, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("short record"))?;
        let (expires, rest) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("short record"))?;
        let (len, owner) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| corrupt("short record"))?;
        if owner.len() != usize::from(u16::from_be_bytes(*len)) {
            return Err(corrupt("wrong owner length"));
        }
        let owner = std::str::from_utf8(owner)
            .map_err(|_| corrupt("owner is not UTF-8"))?
            .to_owned();
        Ok(LeaseRecord {
            owner,
            generation: u64::from_be_bytes(*generation),
            expires_ms: u64::from_be_bytes(*expires),
        })
    }
}

/// One commit in a database's history, stored under `commit_key(id, version)`: when it
/// was applied and the main file's shape after it. Layout
/// `[FORMAT_VERSION][time_ms u64][size u64][chunk_size u32]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitRecord {
    /// When the commit was applied, in milliseconds since the Unix epoch (this host's
    /// clock).
    pub time_ms: u64,
    /// The main file's size in bytes after the commit.
    pub size: u64,
    /// Its chunk size after the commit.
    pub chunk_size: u32,
}

impl CommitRecord {
    /// The sealed value stored under `commit_key(id, version)`.
    pub(crate) fn encode(&self, id: DbId, version: u64) -> Bytes {
        let mut v = Vec::with_capacity(1 + 8 + 8 + 4 + checksum::TRAILER_LEN);
        v.push(FORMAT_VERSION);
        v.extend_from_slice(&self.time_ms.to_be_bytes());
        v.extend_from_slice(&self.size.to_be_bytes());
        v.extend_from_slice(&self.chunk_size.to_be_bytes());
        checksum::seal(&keys::commit_key(id, version), v)
    }

    /// Verifies and parses a value read under `commit_key(id, version)`.
    pub(crate) fn decode(id: DbId, version: u64, value: Bytes) -> Result<CommitRecord> {
        let key = keys::commit_key(id, version);
        let rest = open_record(&key, value)?;
        let short = || corrupt(&key, "short record");
        let (time_ms, rest) = rest.split_first_chunk::<8>().ok_or_else(short)?;
        let (size, rest) = rest.split_first_chunk::<8>().ok_or_else(short)?;
        let (chunk_size, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        if !rest.is_empty() {
            return Err(corrupt(&key, format!("{} trailing bytes", rest.len())));
        }
        Ok(CommitRecord {
            time_ms: u64::from_be_bytes(*time_ms),
            size: u64::from_be_bytes(*size),
            chunk_size: u32::from_be_bytes(*chunk_size),
        })
    }
}

/// Where a fork's pages come from, stored under `origin_key(id)`: the database it was
/// forked from and the commit it was forked at. A page the fork never wrote is that
/// database's page as of that commit. Layout `[FORMAT_VERSION][parent u64][version u64]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginRecord {
    /// The database forked.
    pub parent: DbId,
    /// The commit of it the fork started from.
    pub version: u64,
}

impl OriginRecord {
    /// The sealed value stored under `origin_key(id)`.
    pub(crate) fn encode(&self, id: DbId) -> Bytes {
        let mut v = Vec::with_capacity(1 + 16 + checksum::TRAILER_LEN);
        v.push(FORMAT_VERSION);
        v.extend_from_slice(&self.parent.0.to_be_bytes());
        v.extend_from_slice(&self.version.to_be_bytes());
        checksum::seal(&keys::origin_key(id), v)
    }

    /// Verifies and parses a value read under `origin_key(id)`.
    pub(crate) fn decode(id: DbId, value: Bytes) -> Result<OriginRecord> {
        let key = keys::origin_key(id);
        let rest = open_record(&key, value)?;
        let fields: [u8; 16] = rest[..]
            .try_into()
            .map_err(|_| corrupt(&key, "wrong record length"))?;
        let (parent, version) = fields.split_at(8);
        let be = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
        Ok(OriginRecord {
            parent: DbId(be(parent)),
            version: be(version),
        })
    }
}

/// The sealed commit record (for [`crate::raw`]).
pub fn encode_commit(record: &CommitRecord, id: DbId, version: u64) -> Bytes {
    record.encode(id, version)
}

/// Verifies and parses a commit record read under `commit_key(id, version)`.
pub fn decode_commit(id: DbId, version: u64, value: Bytes) -> Result<CommitRecord> {
    CommitRecord::decode(id, version, value)
}

/// The sealed origin record of fork `id` (for [`crate::raw`]).
pub fn encode_origin(record: &OriginRecord, id: DbId) -> Bytes {
    record.encode(id)
}

/// Verifies and parses an origin record read under `origin_key(id)`.
pub fn decode_origin(id: DbId, value: Bytes) -> Result<OriginRecord> {
    OriginRecord::decode(id, value)
}

/// The sealed value of a replaced page under `key` (`undo_key`): `[0][page]`, or `[1][lz4 block with its length]`
/// when that is shorter (a page is mostly free space more often than not).
pub fn seal_undo(key: &[u8], page: &[u8]) -> Bytes {
    let packed = lz4_flex::block::compress_prepend_size(page);
    let mut v;
    if packed.len() < page.len() {
        v = Vec::with_capacity(1 + packed.len() + checksum::TRAILER_LEN);
        v.push(1);
        v.extend_from_slice(&packed);
    } else {
        v = Vec::with_capacity(1 + page.len() + checksum::TRAILER_LEN);
        v.push(0);
        v.extend_from_slice(page);
    }
    checksum::seal(key, v)
}

/// The page a replaced-page record under `key` holds, verified.
pub fn open_undo(key: &[u8], value: Bytes) -> Result<Bytes> {
    let payload = checksum::open(key, value)?;
    let corrupt = |reason: String| Error::Corrupt {
        what: keys::describe(key),
        reason,
    };
    match payload.first() {
        Some(0) => Ok(payload.slice(1..)),
        Some(1) => lz4_flex::block::decompress_size_prepended(payload.get(1..).unwrap_or_default())
            .map(Bytes::from)
            .map_err(|e| corrupt(format!("its compressed page does not decompress: {e}"))),
        Some(other) => Err(corrupt(format!("unknown page encoding {other}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// Verifies a record read under `key` (its checksum, then its layout version) and
/// returns what follows the version byte.
fn open_record(key: &[u8], value: Bytes) -> Result<Bytes> {
    let payload = checksum::open(key, value)?;
    let Some(&version) = payload.first() else {
        return Err(corrupt(key, "empty record"));
    };
    check_version(version, key)?;
    Ok(payload.slice(1..))
}

/// The error for a malformed record under `key`.
fn corrupt(key: &[u8], reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: keys::describe(key),
        reason: reason.into(),
    }
}

/// The sealed lease record of database `id` (for [`crate::raw`]).
pub fn encode_lease(lease: &LeaseRecord, id: DbId) -> Bytes {
    lease.encode(id)
}

/// Verifies and parses a lease record read under `lease_key(id)`.
pub fn decode_lease(id: DbId, value: Bytes) -> Result<LeaseRecord> {
    LeaseRecord::decode(id, value)
}

/// The length chunk `c` of a file of `size` bytes stored in chunks of `cs` bytes must
/// have: every chunk is whole but the last, which holds the rest (and chunks past the
/// end are empty).
pub fn chunk_len(size: u64, cs: u64, c: u64) -> u64 {
    size.saturating_sub(c.saturating_mul(cs)).min(cs)
}

/// The sealed metadata record of file `kind` of database `id` (for [`crate::raw`]).
pub fn encode_meta(meta: &FileMeta, id: DbId, kind: FileKind) -> Bytes {
    meta.encode(id, kind)
}

/// Verifies and parses a metadata record read under `meta_key(id, kind)`.
pub fn decode_meta(id: DbId, kind: FileKind, value: Bytes) -> Result<FileMeta> {
    FileMeta::decode(id, kind, value)
}

/// The sealed catalog record of `entry` under name `name` (for [`crate::raw`]).
pub fn encode_entry(entry: &CatalogEntry, name: &[u8]) -> Bytes {
    entry.encode(name)
}

/// Verifies and parses a catalog record read under `catalog_key(name)`.
pub fn decode_entry(name: &[u8], value: Bytes) -> Result<CatalogEntry> {
    CatalogEntry::decode(name, value)
}

/// The sealed value of a `u64` record (the DbId counter) stored under `key`.
pub fn encode_u64(key: &[u8], n: u64) -> Bytes {
    checksum::seal_copy(key, &n.to_be_bytes())
}

/// Verifies and parses a `u64` record.
pub fn decode_u64(key: &[u8], value: Bytes) -> Result<u64> {
    let payload = checksum::open(key, value)?;
    let bytes: [u8; 8] = payload[..].try_into().map_err(|_| Error::Corrupt {
        what: keys::describe(key),
        reason: format!("{} bytes where 8 were expected", payload.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The sealed store-version record.
pub fn encode_store_version() -> Bytes {
    checksum::seal_copy(&keys::store_version_key(), &[STORE_VERSION])
}

/// Verifies the store-version record and returns the version: one this build reads
/// ([`OLDEST_STORE_VERSION`] to [`STORE_VERSION`]).
pub fn check_store_version(value: Bytes) -> Result<u8> {
    let key = keys::store_version_key();
    let payload = checksum::open(&key, value)?;
    match payload[..] {
        [v] if (OLDEST_STORE_VERSION..=STORE_VERSION).contains(&v) => Ok(v),
        [v] => Err(Error::UnsupportedFormat {
            what: keys::describe(&key),
            found: v,
            supported: STORE_VERSION,
        }),
        _ => Err(Error::Corrupt {
            what: keys::describe(&key),
            reason: "wrong record length".into(),
        }),
    }
}

/// Accepts only the version this build writes.
pub(crate) fn check_version(found: u8, key: &[u8]) -> Result<()> {
    if found == FORMAT_VERSION {
        Ok(())
    } else {
        Err(Error::UnsupportedFormat {
            what: keys::describe(key),
            found,
            supported: FORMAT_VERSION,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_is_bound_to_its_key() {
        let meta = FileMeta {
            chunk_size: 4096,
            size: 1 << 33,
            generation: 17,
        };
        let v = meta.encode(DbId(3), FileKind::Main);
        assert_eq!(
            FileMeta::decode(DbId(3), FileKind::Main, v.clone()).unwrap(),
            meta
        );
        assert!(FileMeta::decode(DbId(4), FileKind::Main, v.clone()).is_err());
        assert!(FileMeta::decode(DbId(3), FileKind::MainJournal, v).is_err());
    }

    #[test]
    fn unknown_versions_are_named() {
        let key = keys::meta_key(DbId(1), FileKind::Main);
        let mut payload = vec![9u8];
        payload.extend_from_slice(&[0; META_LEN - 1]);
        let err =
            FileMeta::decode(DbId(1), FileKind::Main, checksum::seal(&key, payload)).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedFormat { found: 9, .. }),
            "{err}"
        );

        let ckey = keys::catalog_key(b"a");
        let err = CatalogEntry::decode(b"a", checksum::seal(&ckey, vec![2, 0, 0])).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedFormat { found: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn catalog_entries_round_trip() {
        for kind in [EntryKind::Database, EntryKind::SuperJournal] {
            let e = CatalogEntry { id: DbId(99), kind };
            assert_eq!(CatalogEntry::decode(b"n", e.encode(b"n")).unwrap(), e);
            assert!(CatalogEntry::decode(b"m", e.encode(b"n")).is_err());
        }
    }

    #[test]
    fn wrong_lengths_are_corrupt() {
        let key = keys::meta_key(DbId(1), FileKind::Main);
        for len in 0..META_LEN + 3 {
            if len == META_LEN {
                continue;
            }
            let mut payload = vec![FORMAT_VERSION];
            payload.resize(len.max(1), 0);
            let r = FileMeta::decode(DbId(1), FileKind::Main, checksum::seal(&key, payload));
            assert!(r.is_err(), "length {len} accepted");
        }
    }
}
