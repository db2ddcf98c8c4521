//! Bodies of the `vfs_file` and `sql_diff` fuzz targets (feature `fuzzing`). The
//! cargo-fuzz targets in `fuzz/` call these, and `vfs/tests/fuzz_corpus.rs` runs them on
//! stable over the checked-in seed corpus, so CI exercises them without nightly.
//!
//! Each takes arbitrary bytes, decodes a sequence of operations with `arbitrary`, runs it
//! against shoal and against a reference model, and panics on the first difference. A
//! panic is the finding; anything else (including SQL errors both sides agree on) is fine.

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
        Inode::load(kv, entry.id, kind, "fuzz", Arc::default(), true).expect("a stored file loads")
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

/// One step of the SQL workload.
#[derive(Debug, Arbitrary)]
enum SqlStep {
    Insert { a: u8, len: u16 },
    Update { a: u8, len: u16 },
    Delete { a: u8 },
    Txn { rows: Vec<(u8, u16)>, commit: bool },
    Savepoint { a: u8 },
    Bulk { n: u8 },
    Query(u8),
    Vacuum,
    Reopen,
    CacheSize(u8),
}

/// At most this many VACUUM steps run in one `sql_diff` input.
const MAX_VACUUMS: usize = 1;

const QUERIES: [&str; 4] = [
    "SELECT count(*), sum(a), sum(length(c)) FROM t",
    "SELECT id, a, hex(c) FROM t ORDER BY id",
    "SELECT a, count(*) FROM t GROUP BY a ORDER BY a",
    "SELECT x.id, y.id FROM t x JOIN t y ON x.a = y.a AND x.id < y.id ORDER BY 1, 2 LIMIT 40",
];

fn sql_for(step: &SqlStep) -> Option<String> {
    Some(match step {
        SqlStep::Insert { a, len } => format!(
            "INSERT INTO t(a, c) VALUES ({}, zeroblob({}))",
            a % 10,
            len % 4000
        ),
        SqlStep::Update { a, len } => format!(
            "UPDATE t SET c = zeroblob({}) WHERE a = {}",
            len % 6000,
            a % 10
        ),
        SqlStep::Delete { a } => format!("DELETE FROM t WHERE a = {}", a % 10),
        SqlStep::Txn { rows, commit } => {
            let mut sql = String::from("BEGIN;");
            for (a, len) in rows.iter().take(20) {
                sql += &format!(
                    "INSERT INTO t(a, c) VALUES ({}, zeroblob({}));",
                    a % 10,
                    len % 3000
                );
            }
            sql += if *commit { "COMMIT;" } else { "ROLLBACK;" };
            sql
        }
        SqlStep::Savepoint { a } => format!(
            "BEGIN; INSERT INTO t(a, c) VALUES ({}, x'01'); SAVEPOINT s; DELETE FROM t; ROLLBACK TO s; RELEASE s; COMMIT;",
            a % 10
        ),
        SqlStep::Bulk { n } => format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {})
             INSERT INTO t(a, c) SELECT i % 10, zeroblob(500 + i) FROM n",
            // At most 128 rows: a step of hundreds made VACUUM and the final checks
            // copy megabytes.
            u32::from(*n % 64) * 2
        ),
        SqlStep::Vacuum => "VACUUM".to_owned(),
        SqlStep::CacheSize(n) => format!("PRAGMA cache_size = {}", 5 + u32::from(*n) % 60),
        SqlStep::Query(_) | SqlStep::Reopen => return None,
    })
}

type Rows = Vec<Vec<rusqlite::types::Value>>;

fn query(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<Rows> {
    let mut stmt = conn.prepare(sql)?;
    let n = stmt.column_count();
    let rows = stmt.query_map([], |r| {
        (0..n)
            .map(|i| r.get::<_, rusqlite::types::Value>(i))
            .collect()
    })?;
    rows.collect()
}

/// `sql_diff`: a random SQL workload on shoal (over `MemKv`, with and without xFetch)
/// and on stock SQLite in its memdb VFS; every statement's outcome and every query's rows
/// must be identical, and the database must pass `PRAGMA integrity_check` at the end.
pub fn sql_diff(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mmap = u.arbitrary::<bool>().unwrap_or(false);
    let mut steps = Vec::new();
    let mut vacuums = 0;
    while !u.is_empty() && steps.len() < 64 {
        let Ok(step) = u.arbitrary::<SqlStep>() else {
            break;
        };
        // VACUUM rewrites the whole database on both sides, the most expensive step by
        // far: past the first, one becomes a comparison of the contents.
        let step = match step {
            SqlStep::Vacuum if vacuums >= MAX_VACUUMS => SqlStep::Query(1),
            SqlStep::Vacuum => {
                vacuums += 1;
                SqlStep::Vacuum
            }
            step => step,
        };
        steps.push(step);
    }
    let vfs = sql_diff_process();
    let open_shoal = || {
        let c = rusqlite::Connection::open_with_flags_and_vfs(
            "diff",
            rusqlite::OpenFlags::default(),
            vfs.name(),
        )
        .expect("open shoal");
        if mmap {
            c.execute_batch("PRAGMA mmap_size = 268435456")
                .expect("mmap");
        }
        c
    };
    // The reference lives in SQLite's memdb VFS: a name starting with `/` is shared by the
    // connections of the process and kept while one of them is open, so a reopen opens
    // the new connection before it drops the old one, and the last drop frees it for the
    // next input.
    let open_reference = || {
        rusqlite::Connection::open_with_flags(
            "file:/sql-diff-reference?vfs=memdb",
            rusqlite::OpenFlags::default(),
        )
        .expect("open reference")
    };
    let schema =
        "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, c BLOB); CREATE INDEX t_a ON t(a);";
    let mut shoal = open_shoal();
    let mut reference = open_reference();
    shoal.execute_batch(schema).expect("schema");
    reference.execute_batch(schema).expect("schema");
    for (i, step) in steps.iter().enumerate() {
        match step {
            SqlStep::Reopen => {
                drop(std::mem::replace(
                    &mut shoal,
                    rusqlite::Connection::open_in_memory().expect("mem"),
                ));
                shoal = open_shoal();
                drop(std::mem::replace(&mut reference, open_reference()));
            }
            SqlStep::Query(q) => {
                let sql = QUERIES[usize::from(*q) % QUERIES.len()];
                let (got, want) = (query(&shoal, sql), query(&reference, sql));
                assert_eq!(
                    got.map_err(|e| e.to_string()),
                    want.map_err(|e| e.to_string()),
                    "step {i}: {sql}"
                );
            }
            step => {
                let Some(sql) = sql_for(step) else { continue };
                let got = shoal.execute_batch(&sql).map_err(|e| e.to_string());
                let want = reference.execute_batch(&sql).map_err(|e| e.to_string());
                assert_eq!(got, want, "step {i}: {sql}");
            }
        }
    }
    let all = QUERIES[1];
    assert_eq!(
        query(&shoal, all).ok(),
        query(&reference, all).ok(),
        "final contents"
    );
    let check: String = shoal
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    drop(shoal);
    drop(reference);
    vfs.delete_database("diff").expect("delete the database");
}

/// What every [`sql_diff`] input of this process shares: one VFS over one [`MemKv`] (a
/// registration stays with SQLite for the rest of the process, so one per input would
/// pile up), in which each input creates database `diff` and deletes it at the end.
fn sql_diff_process() -> &'static crate::Vfs {
    static PROCESS: std::sync::OnceLock<crate::Vfs> = std::sync::OnceLock::new();
    PROCESS.get_or_init(|| {
        let pid = std::process::id();
        let kv = Arc::new(Kv::open(Arc::new(MemKv::new())).expect("kv"));
        crate::register(
            kv,
            crate::VfsOptions {
                name: format!("sql-diff-{pid}"),
                ..crate::VfsOptions::default()
            },
        )
        .expect("register")
    })
}
