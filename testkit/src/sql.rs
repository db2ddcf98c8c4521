//! The SQL step language, shared by the `sql_diff` fuzz target ([`sql_diff`]) and the
//! stable differential test (`vfs/tests/differential.rs`, which feeds proptest's bytes to
//! the same `arbitrary` decoder), and the body of `sql_diff`. It reaches shoal only
//! through shoal-vfs's public API.
//!
//! A workload runs on table [`SCHEMA`]: inserts, updates and deletes of rows with blobs of
//! up to a few KiB (overflow pages), transactions committed or rolled back, a savepoint
//! rolled back inside a committed transaction, bulk inserts that spill a small page cache
//! onto the journal, `VACUUM`, page-cache resizes, the [`QUERIES`], and reopens.

// A fuzz body's panics are its findings.
#![allow(clippy::indexing_slicing)]

use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use rusqlite::{Connection, OpenFlags};
use shoal_kv::{Kv, MemKv};
use shoal_vfs::{Vfs, VfsOptions};

use crate::rows::try_rows;

/// Steps one input may run.
pub const MAX_STEPS: usize = 64;

/// The table every workload runs on.
pub const SCHEMA: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, c BLOB); CREATE INDEX t_a ON t(a);";

/// What [`SqlStep::Query`] runs; [`FULL_CONTENTS`] is one of them.
pub const QUERIES: [&str; 4] = [
    "SELECT count(*), sum(a), sum(length(c)) FROM t",
    FULL_CONTENTS,
    "SELECT a, count(*) FROM t GROUP BY a ORDER BY a",
    "SELECT x.id, y.id FROM t x JOIN t y ON x.a = y.a AND x.id < y.id ORDER BY 1, 2 LIMIT 40",
];

/// Every row of the table, blobs included, for the comparison at the end.
pub const FULL_CONTENTS: &str = "SELECT id, a, hex(c) FROM t ORDER BY id";

/// One step of the SQL workload.
#[derive(Debug, Clone, Arbitrary)]
pub enum SqlStep {
    Insert {
        a: u8,
        len: u16,
    },
    Update {
        a: u8,
        len: u16,
    },
    Delete {
        a: u8,
    },
    /// Several rows in one explicit transaction, committed or rolled back.
    Txn {
        rows: Vec<(u8, u16)>,
        commit: bool,
    },
    /// A statement rolled back to a savepoint inside a committed transaction.
    Savepoint {
        a: u8,
    },
    /// Enough rows to spill a small page cache (the journal path).
    Bulk {
        n: u8,
    },
    Query(u8),
    Vacuum,
    /// Close both connections and open them again.
    Reopen,
    CacheSize(u8),
}

/// What a step asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run these statements on both sides; the outcomes must agree.
    Exec(String),
    /// Run this query on both sides; the rows (or errors) must agree.
    Query(&'static str),
    /// Reopen both sides.
    Reopen,
}

impl SqlStep {
    /// What the step runs.
    pub fn action(&self) -> Action {
        Action::Exec(match self {
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
            SqlStep::Query(q) => return Action::Query(QUERIES[usize::from(*q) % QUERIES.len()]),
            SqlStep::Reopen => return Action::Reopen,
        })
    }
}

/// Decodes up to [`MAX_STEPS`] steps from `u`.
pub fn steps(u: &mut Unstructured<'_>) -> Vec<SqlStep> {
    let mut steps = Vec::new();
    // Plain `arbitrary` goes on producing zeroed values once the input runs out, so the
    // loop stops on an empty input, not on an error.
    while !u.is_empty() && steps.len() < MAX_STEPS {
        let Ok(step) = u.arbitrary::<SqlStep>() else {
            break;
        };
        steps.push(step);
    }
    steps
}

/// At most this many VACUUM steps run in one `sql_diff` input.
const MAX_VACUUMS: usize = 1;

/// `sql_diff`: a random SQL workload on shoal (over `MemKv`, with and without xFetch)
/// and on stock SQLite in its memdb VFS; every statement's outcome and every query's rows
/// must be identical, and the database must pass `PRAGMA integrity_check` at the end.
pub fn sql_diff(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mmap = u.arbitrary::<bool>().unwrap_or(false);
    let steps = steps(&mut u);
    let vfs = sql_diff_process();
    let open_shoal = || {
        let c = Connection::open_with_flags_and_vfs("diff", OpenFlags::default(), vfs.name())
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
        Connection::open_with_flags("file:/sql-diff-reference?vfs=memdb", OpenFlags::default())
            .expect("open reference")
    };
    let mut shoal = open_shoal();
    let mut reference = open_reference();
    shoal.execute_batch(SCHEMA).expect("schema");
    reference.execute_batch(SCHEMA).expect("schema");
    let mut vacuums = 0;
    for (i, step) in steps.iter().enumerate() {
        // VACUUM rewrites the whole database on both sides, the most expensive step by
        // far: past the first, one becomes a comparison of the contents.
        let step = match step {
            SqlStep::Vacuum if vacuums >= MAX_VACUUMS => &SqlStep::Query(1),
            SqlStep::Vacuum => {
                vacuums += 1;
                step
            }
            step => step,
        };
        match step.action() {
            Action::Reopen => {
                drop(std::mem::replace(
                    &mut shoal,
                    Connection::open_in_memory().expect("mem"),
                ));
                shoal = open_shoal();
                drop(std::mem::replace(&mut reference, open_reference()));
            }
            Action::Query(sql) => {
                let (got, want) = (try_rows(&shoal, sql), try_rows(&reference, sql));
                assert_eq!(
                    got.map_err(|e| e.to_string()),
                    want.map_err(|e| e.to_string()),
                    "step {i}: {sql}"
                );
            }
            Action::Exec(sql) => {
                let got = shoal.execute_batch(&sql).map_err(|e| e.to_string());
                let want = reference.execute_batch(&sql).map_err(|e| e.to_string());
                assert_eq!(got, want, "step {i}: {sql}");
            }
        }
    }
    assert_eq!(
        try_rows(&shoal, FULL_CONTENTS).ok(),
        try_rows(&reference, FULL_CONTENTS).ok(),
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
fn sql_diff_process() -> &'static Vfs {
    static PROCESS: OnceLock<Vfs> = OnceLock::new();
    PROCESS.get_or_init(|| {
        let pid = std::process::id();
        let kv = Arc::new(Kv::open(Arc::new(MemKv::new())).expect("kv"));
        shoal_vfs::register(
            kv,
            VfsOptions {
                name: format!("sql-diff-{pid}"),
                ..VfsOptions::default()
            },
        )
        .expect("register")
    })
}
