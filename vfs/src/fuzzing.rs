//! Body of the `vfs_file` fuzz target (feature `fuzzing`), and its file-op language. The
//! cargo-fuzz target in `fuzz/` calls it, and `vfs/tests/fuzz_corpus.rs` runs it on stable
//! over the checked-in seed corpus, so CI exercises it without nightly.
//!
//! It stays in the crate because it drives what only the crate can reach: one stored file
//! (`Inode`) below the SQLite boundary, and the lock table. The other fuzz bodies (and the
//! `sql_diff` SQL workload, which needs only the public API) live in `shoal-testkit`.
//!
//! It takes arbitrary bytes, decodes a sequence of operations with `arbitrary`, runs it
//! against the file and against a byte vector, and panics on the first difference. A
//! panic is the finding.

// A fuzz body's panics are its findings, and indexing here is over small fixed arrays.
#![allow(clippy::indexing_slicing)]

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use shoal_kv::{EntryKind, FaultOp, FaultyKv, FileKind, Kv, MemKv};

use crate::file::Inode;
use crate::lock::{LockLevel, LockTable};

/// One step on a stored file.
#[derive(Debug, Arbitrary)]
enum FileOp {
    Write {
        offset: u16,
        len: u16,
        byte: u8,
    },
    Read {
        offset: u16,
        len: u16,
    },
    Truncate {
        size: u16,
    },
    Sync,
    BeginBatch,
    CommitBatch,
    RollbackBatch,
    /// Make the next kv batch fail (a failed flush returns the file to its last
    /// persisted state).
    FailNextBatch,
    /// Drop the inode and load the file from the kv again, as after a crash: anything
    /// not flushed is gone.
    Reopen,
    Lock {
        handle: u8,
        level: u8,
    },
    Unlock {
        handle: u8,
        shared: bool,
    },
}

/// Byte offsets are scaled so that a few steps cross chunk boundaries of every size, and
/// bounded so that a file stays under about 64 KiB (two journal chunks): a file of the
/// full `u16 * 13` range grew to 850 KB, and checksumming its chunks on every flush was
/// most of a run.
fn scale(n: u16) -> u64 {
    u64::from(n % 4096) * 13
}

/// At most this many steps of one `vfs_file` input run; the rest are ignored.
const MAX_FILE_OPS: usize = 256;

/// `vfs_file`: read / write / truncate / sync / batch / lock sequences on one stored file,
/// against a byte vector (and lock invariants against the rules of `lock.rs`).
pub fn vfs_file(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let kind = if u.arbitrary::<bool>().unwrap_or(false) {
        FileKind::Main
    } else {
        FileKind::MainJournal
    };
    let (backend, kv) = vfs_file_process();
    backend.clear();
    let entry = kv
        .create("fuzz", EntryKind::Database)
        .expect("the last input dropped its file");
    let load = |kv: &Kv| {
        Inode::load(
            kv,
            entry.id,
            kind,
            "fuzz",
            Arc::default(),
            crate::file::OverlayBudget::new(1 << 20),
            true,
        )
        .expect("a stored file loads")
    };
    let mut file = load(kv);
    // The model: what SQLite would read now, and what a crash would leave.
    let mut current: Vec<u8> = Vec::new();
    let mut persisted: Vec<u8> = Vec::new();
    let mut in_batch = false;
    let mut locks = LockTable::default();
    let mut held = [LockLevel::None; 3];

    // Plain `arbitrary` goes on producing zeroed values once the input runs out, so the
    // loop stops on an empty input, not on an error.
    let mut ops = 0;
    while !u.is_empty() && ops < MAX_FILE_OPS {
        let Ok(op) = u.arbitrary::<FileOp>() else {
            break;
        };
        ops += 1;
        match op {
            FileOp::Write { offset, len, byte } => {
                let (offset, len) = (scale(offset), usize::from(len % 9000));
                let bytes = vec![byte; len];
                match file.write(kv, &bytes, offset) {
                    Ok(()) => {
                        let end = usize::try_from(offset).unwrap_or(usize::MAX) + len;
                        if current.len() < end {
                            current.resize(end, 0);
                        }
                        if let Some(dst) = current.get_mut(end - len..end) {
                            dst.copy_from_slice(&bytes);
                        }
                    }
                    // A write-back flush (past 8 MiB) could fail; the sizes here never
                    // reach it, so any error is a finding.
                    Err(e) => panic!("write failed: {e}"),
                }
            }
            FileOp::Read { offset, len } => {
                let offset = scale(offset);
                let mut buf = vec![0xAA; usize::from(len % 9000)];
                let n = file.read(kv, &mut buf, offset).expect("read");
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(current.len());
                let expected = current.get(start..).unwrap_or_default();
                let expected = expected
                    .get(..buf.len().min(expected.len()))
                    .unwrap_or_default();
                assert_eq!(n, expected.len(), "read length at {offset}");
                assert_eq!(buf.get(..n), Some(expected), "read bytes at {offset}");
            }
            FileOp::Truncate { size } => {
                let size = scale(size);
                file.truncate(kv, size).expect("truncate");
                current.resize(usize::try_from(size).unwrap_or(usize::MAX), 0);
            }
            FileOp::Sync if !in_batch => match file.flush(kv) {
                Ok(_) => persisted.clone_from(&current),
                Err(_) => current.clone_from(&persisted),
            },
            FileOp::BeginBatch if !in_batch => match file.begin_batch(kv) {
                Ok(()) => {
                    persisted.clone_from(&current);
                    in_batch = true;
                }
                Err(_) => current.clone_from(&persisted),
            },
            FileOp::CommitBatch if in_batch => {
                in_batch = false;
                match file.commit_batch(kv) {
                    Ok(_) => persisted.clone_from(&current),
                    Err(_) => current.clone_from(&persisted),
                }
            }
            FileOp::RollbackBatch if in_batch => {
                in_batch = false;
                file.rollback_batch();
                current.clone_from(&persisted);
            }
            FileOp::FailNextBatch => backend.fail_nth(FaultOp::Batch, 1),
            FileOp::Reopen if !in_batch => {
                backend.clear();
                drop(file);
                file = load(kv);
                current.clone_from(&persisted);
            }
            FileOp::Lock { handle, level } => {
                let h = usize::from(handle % 3);
                let want = [LockLevel::Shared, LockLevel::Reserved, LockLevel::Exclusive]
                    [usize::from(level % 3)];
                // SQLite only asks for RESERVED or EXCLUSIVE while holding SHARED.
                if want > LockLevel::Shared && held[h] == LockLevel::None {
                    continue;
                }
                let mut level = held[h];
                locks.lock(&mut level, want);
                held[h] = level;
                check_lock_invariants(&held, &locks);
            }
            FileOp::Unlock { handle, shared } => {
                let h = usize::from(handle % 3);
                let mut level = held[h];
                locks.unlock(
                    &mut level,
                    if shared {
                        LockLevel::Shared
                    } else {
                        LockLevel::None
                    },
                );
                held[h] = level;
                check_lock_invariants(&held, &locks);
            }
            _ => {}
        }
        assert_eq!(file.size(), current.len() as u64, "file size");
    }
    drop(file);
    backend.clear();
    kv.drop_entry("fuzz").expect("drop the file");
}

/// The store every [`vfs_file`] input of this process uses, one after another: each
/// creates its file in it and drops it at the end, so no input pays for opening a [`Kv`]
/// (and starting its group committer).
fn vfs_file_process() -> &'static (Arc<FaultyKv<MemKv>>, Kv) {
    static PROCESS: std::sync::OnceLock<(Arc<FaultyKv<MemKv>>, Kv)> = std::sync::OnceLock::new();
    PROCESS.get_or_init(|| {
        let backend = Arc::new(FaultyKv::new(MemKv::new()));
        let kv = Kv::open(backend.clone()).expect("a kv over an empty MemKv opens");
        (backend, kv)
    })
}

fn check_lock_invariants(held: &[LockLevel; 3], table: &LockTable) {
    let writers = held.iter().filter(|l| **l >= LockLevel::Reserved).count();
    assert!(writers <= 1, "two handles past SHARED: {held:?}");
    if held.contains(&LockLevel::Exclusive) {
        let others = held.iter().filter(|l| **l != LockLevel::None).count();
        assert_eq!(others, 1, "EXCLUSIVE beside another lock: {held:?}");
    }
    assert_eq!(
        table.reserved(),
        writers == 1,
        "check-reserved disagrees: {held:?}"
    );
}
