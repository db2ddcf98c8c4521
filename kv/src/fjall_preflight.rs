//! What `FjallKv::open` checks in a store's fjall files before fjall reads them: damage
//! that makes fjall 3.1 (lsm-tree 3.1, sfa 1.0) abort the process or load the wrong
//! files, found by flipping every bit of a store's small metadata files (docs/design.md,
//! "What `FjallKv` relies on in fjall"). Each check reads only what fjall itself reads at
//! open, and a store that passes is one fjall opens as it would have.
//!
//! - A keyspace's `current` file names its version file (`v<id>`) and holds the xxh3-128
//!   of it, which lsm-tree never checks (a TODO in `version/recovery.rs`). A damaged
//!   version file made lsm-tree allocate gigabytes from a count (an abort), panic with
//!   fjall's keyspace lock held (an abort too, when the half-built database's drop finds
//!   the lock poisoned), load another table than the one listed, or skip journal batches
//!   as already flushed. The checksum is checked here, for fjall's own keyspace and ours.
//! - Every table and blob file the version lists ends in an sfa trailer that locates its
//!   table of contents, whose entry count sfa allocates for before it checks the
//!   contents' checksum (`toc/reader.rs`): the location must lie inside the file and the
//!   checksum match. Files the version does not list (a flush cut short by a crash) are
//!   fjall's to delete, and are not read.
//!
//! Not covered, and why that is safe for shoal: a damaged blob record header can make
//! lsm-tree return a value with the wrong bytes (its checksum leaves the length out), and
//! every value shoal stores carries its own checksum, checked on each read. A damaged
//! journal is cut at the first bad entry and the rest dropped without an error (fjall
//! cannot tell that from the torn tail of a crash, and neither can a check here without
//! knowing what was synced): bit rot in a journal loses the batches after it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128;

/// fjall's directory of keyspaces (`file::KEYSPACES_FOLDER`).
const KEYSPACES: &str = "keyspaces";

/// A keyspace's pointer to its version file: the version id (u64), the xxh3-128 of the
/// file (u128), the checksum type (0 for xxh3), all little-endian.
const CURRENT: &str = "current";
const CURRENT_LEN: usize = 8 + 16 + 1;

/// sfa's trailer: magic, version 1, checksum type 0, the xxh3-128 of the table of
/// contents, its position and its length.
const TRAILER_MAGIC: &[u8; 4] = b"SFA!";
const TRAILER_LEN: u64 = 4 + 1 + 1 + 16 + 8 + 8;

/// The size of one table in a version file's `tables` section (id, checksum type,
/// checksum, global sequence number) and of one blob file in `blob_files` (no seqno).
const TABLE_ENTRY: usize = 8 + 1 + 16 + 8;
const BLOB_ENTRY: usize = 8 + 1 + 16;

/// What is wrong, and in which file.
pub(crate) struct Damage {
    pub file: PathBuf,
    pub reason: String,
}

fn damage(file: &Path, reason: impl Into<String>) -> Damage {
    Damage {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Checks every keyspace of the fjall directory `dir` (see the module docs). A store
/// fjall has not created yet (no keyspaces directory) passes.
pub(crate) fn preflight(dir: &Path) -> Result<(), Damage> {
    let root = dir.join(KEYSPACES);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(damage(&root, e.to_string())),
    };
    for entry in entries {
        let keyspace = entry.map_err(|e| damage(&root, e.to_string()))?.path();
        if keyspace.is_dir() {
            check_keyspace(&keyspace)?;
        }
    }
    Ok(())
}

fn check_keyspace(keyspace: &Path) -> Result<(), Damage> {
    let current_path = keyspace.join(CURRENT);
    let current = match std::fs::read(&current_path) {
        Ok(bytes) => bytes,
        // A keyspace whose creation was cut short has no version yet: fjall's to handle.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(damage(&current_path, e.to_string())),
    };
    let (Some(id), Some(checksum), Some(0)) = (
        le_u64(&current, 0),
        le_u128(&current, 8),
        current.get(24).copied(),
    ) else {
        return Err(damage(&current_path, "it does not parse"));
    };
    if current.len() != CURRENT_LEN {
        return Err(damage(&current_path, "it has the wrong length"));
    }
    let version_path = keyspace.join(format!("v{id}"));
    let version = std::fs::read(&version_path).map_err(|e| damage(&version_path, e.to_string()))?;
    if xxh3_128(&version) != checksum {
        return Err(damage(
            &version_path,
            "its checksum does not match the one in `current`",
        ));
    }
    // Trusted from here on: it is the file lsm-tree wrote.
    let reader =
        sfa::Reader::new(&version_path).map_err(|e| damage(&version_path, format!("{e:?}")))?;
    let toc = reader.toc();
    let section = |name: &[u8]| -> Result<&[u8], Damage> {
        let entry = toc
            .section(name)
            .ok_or_else(|| damage(&version_path, "a section is missing"))?;
        usize::try_from(entry.pos())
            .ok()
            .zip(usize::try_from(entry.len()).ok())
            .and_then(|(pos, len)| version.get(pos..pos.checked_add(len)?))
            .ok_or_else(|| damage(&version_path, "a section lies outside the file"))
    };
    for table in listed_tables(section(b"tables")?)
        .ok_or_else(|| damage(&version_path, "its table list does not parse"))?
    {
        check_sfa(&keyspace.join("tables").join(table.to_string()))?;
    }
    if let Ok(blobs) = section(b"blob_files") {
        let listed = listed_blob_files(blobs)
            .ok_or_else(|| damage(&version_path, "its blob file list does not parse"))?;
        for blob in listed {
            check_sfa(&keyspace.join("blobs").join(blob.to_string()))?;
        }
    }
    Ok(())
}

/// The ids in a version's `tables` section: a level count (u8), per level a run count
/// (u8), per run a table count (u32) and the tables.
fn listed_tables(section: &[u8]) -> Option<Vec<u64>> {
    let mut ids = Vec::new();
    let (&levels, mut rest) = section.split_first()?;
    for _ in 0..levels {
        let (&runs, after) = rest.split_first()?;
        rest = after;
        for _ in 0..runs {
            let count = le_u32(rest, 0)?;
            rest = rest.get(4..)?;
            for _ in 0..count {
                ids.push(le_u64(rest, 0)?);
                rest = rest.get(TABLE_ENTRY..)?;
            }
        }
    }
    Some(ids)
}

/// The ids in a version's `blob_files` section: a count (u32), then the files.
fn listed_blob_files(section: &[u8]) -> Option<Vec<u64>> {
    let count = le_u32(section, 0)?;
    let mut rest = section.get(4..)?;
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(le_u64(rest, 0)?);
        rest = rest.get(BLOB_ENTRY..)?;
    }
    Some(ids)
}

/// Checks the sfa trailer of `file` and the checksum of the table of contents it points
/// to, reading only those. A listed file that is missing is lsm-tree's to report.
fn check_sfa(file: &Path) -> Result<(), Damage> {
    let io = |e: std::io::Error| damage(file, e.to_string());
    let mut f = match File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let len = f.metadata().map_err(io)?.len();
    let Some(trailer_at) = len.checked_sub(TRAILER_LEN) else {
        return Err(damage(file, "it is too short to hold its trailer"));
    };
    let mut trailer = [0u8; TRAILER_LEN as usize];
    f.seek(SeekFrom::Start(trailer_at)).map_err(io)?;
    f.read_exact(&mut trailer).map_err(io)?;
    let (Some(magic), Some(1), Some(0), Some(checksum), Some(pos), Some(toc_len)) = (
        trailer.get(..4),
        trailer.get(4).copied(),
        trailer.get(5).copied(),
        le_u128(&trailer, 6),
        le_u64(&trailer, 22),
        le_u64(&trailer, 30),
    ) else {
        return Err(damage(file, "its trailer does not parse"));
    };
    if magic != TRAILER_MAGIC {
        return Err(damage(file, "its trailer is not sfa's"));
    }
    if pos.checked_add(toc_len).is_none_or(|end| end > trailer_at) {
        return Err(damage(file, "its table of contents lies outside the file"));
    }
    let mut toc = vec![0u8; usize::try_from(toc_len).map_err(|_| damage(file, "too large"))?];
    f.seek(SeekFrom::Start(pos)).map_err(io)?;
    f.read_exact(&mut toc).map_err(io)?;
    if xxh3_128(&toc) != checksum {
        return Err(damage(
            file,
            "the checksum of its table of contents does not match",
        ));
    }
    Ok(())
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn le_u128(bytes: &[u8], at: usize) -> Option<u128> {
    Some(u128::from_le_bytes(
        bytes.get(at..at + 16)?.try_into().ok()?,
    ))
}
