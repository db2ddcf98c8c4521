//! Differential test: one random SQL workload on shoal and on SQLite's own unix VFS (a
//! file in a temp dir) must give identical results, statement by statement, including
//! after reopening and at the end (full contents and integrity).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::*;
use proptest::prelude::*;
use rusqlite::Connection;

#[derive(Debug, Clone)]
enum Step {
    Insert {
        a: i64,
        b: String,
        len: usize,
    },
    Update {
        a: i64,
        len: usize,
    },
    Delete {
        a: i64,
    },
    /// Several rows in one explicit transaction, committed or rolled back.
    Txn {
        rows: Vec<(i64, usize)>,
        commit: bool,
    },
    /// A statement rolled back to a savepoint inside a committed transaction.
    Savepoint {
        a: i64,
    },
    /// Enough rows to spill a small page cache (the journal path).
    Bulk {
        n: usize,
    },
    Query(usize),
    Vacuum,
    Reopen,
}

const QUERIES: [&str; 5] = [
    "SELECT count(*), sum(a), sum(length(c)) FROM t",
    "SELECT id, a, b, hex(c) FROM t ORDER BY id",
    "SELECT a, count(*) FROM t GROUP BY a ORDER BY a",
    "SELECT id FROM t WHERE a BETWEEN 3 AND 6 ORDER BY b, id",
    "SELECT x.id, y.id FROM t x JOIN t y ON x.a = y.a AND x.id < y.id ORDER BY 1, 2 LIMIT 50",
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..10i64, "[a-z]{0,12}", 0..3000usize).prop_map(|(a, b, len)| Step::Insert { a, b, len }),
        2 => (0..10i64, 0..5000usize).prop_map(|(a, len)| Step::Update { a, len }),
        1 => (0..10i64).prop_map(|a| Step::Delete { a }),
        2 => (prop::collection::vec((0..10i64, 0..2000usize), 1..8), any::<bool>())
            .prop_map(|(rows, commit)| Step::Txn { rows, commit }),
        1 => (0..10i64).prop_map(|a| Step::Savepoint { a }),
        1 => (50..400usize).prop_map(|n| Step::Bulk { n }),
        3 => (0..QUERIES.len()).prop_map(Step::Query),
        1 => Just(Step::Vacuum),
        1 => Just(Step::Reopen),
    ]
}

fn setup(conn: &Connection, mmap: bool) {
    conn.execute_batch("PRAGMA cache_size = 16;").unwrap();
    if mmap {
        conn.execute_batch("PRAGMA mmap_size = 268435456;").unwrap();
    }
}

/// Runs one step; the result is rendered so both sides can be compared.
fn run(conn: &Connection, step: &Step) -> Result<Vec<Vec<String>>, String> {
    let exec = |sql: &str| {
        conn.execute_batch(sql)
            .map_err(|e| e.to_string())
            .map(|()| Vec::new())
    };
    match step {
        Step::Insert { a, b, len } => exec(&format!(
            "INSERT INTO t(a, b, c) VALUES ({a}, '{b}', zeroblob({len}))"
        )),
        Step::Update { a, len } => exec(&format!(
            "UPDATE t SET c = zeroblob({len}), b = b || 'u' WHERE a = {a}"
        )),
        Step::Delete { a } => exec(&format!("DELETE FROM t WHERE a = {a}")),
        Step::Txn { rows, commit } => {
            let mut sql = String::from("BEGIN;");
            for (a, len) in rows {
                sql += &format!("INSERT INTO t(a, b, c) VALUES ({a}, 'tx', zeroblob({len}));");
            }
            sql += if *commit { "COMMIT;" } else { "ROLLBACK;" };
            exec(&sql)
        }
        Step::Savepoint { a } => exec(&format!(
            "BEGIN; INSERT INTO t(a, b, c) VALUES ({a}, 'kept', x'01');
             SAVEPOINT s; DELETE FROM t; ROLLBACK TO s; RELEASE s; COMMIT;"
        )),
        Step::Bulk { n } => exec(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {n})
             INSERT INTO t(a, b, c) SELECT i % 10, 'bulk' || i, zeroblob(700 + i) FROM n"
        )),
        Step::Query(q) => Ok(rows(conn, QUERIES[*q])),
        Step::Vacuum => exec("VACUUM"),
        Step::Reopen => Ok(Vec::new()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn shoal_matches_the_unix_vfs(steps in prop::collection::vec(step(), 1..40), mmap in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reference.db");
        let vfs = mem_vfs();
        let schema = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c BLOB);
                      CREATE INDEX t_a ON t(a);";
        let mut reference = Connection::open(&path).unwrap();
        let mut shoal = open(&vfs, "diff");
        setup(&reference, false);
        setup(&shoal, mmap);
        reference.execute_batch(schema).unwrap();
        shoal.execute_batch(schema).unwrap();
        for (i, step) in steps.iter().enumerate() {
            if let Step::Reopen = step {
                // Each closes before it is opened again.
                drop(reference);
                reference = Connection::open(&path).unwrap();
                drop(shoal);
                shoal = open(&vfs, "diff");
                setup(&reference, false);
                setup(&shoal, mmap);
                continue;
            }
            let expected = run(&reference, step);
            let got = run(&shoal, step);
            prop_assert_eq!(&got, &expected, "step {} {:?}", i, step);
        }
        prop_assert_eq!(rows(&shoal, QUERIES[1]), rows(&reference, QUERIES[1]));
        prop_assert_eq!(integrity(&shoal), "ok");
    }
}
