//! SQL features that exercise unusual pager paths: rollbacks, savepoints, VACUUM, page
//! sizes, auto-vacuum, temp tables, big indexes, multi-database transactions. Each runs on
//! MemKv (the big index on SledKv) and on PgKv when `SHOAL_PG_URL` names a server.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::*;

#[test]
fn rollback_and_savepoints_restore_the_committed_state() {
    on_each_backend("rollback_and_savepoints", |vfs| {
        let conn = open(vfs, "s");
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        conn.execute_batch("BEGIN; INSERT INTO t VALUES (2); ROLLBACK;")
            .unwrap();
        assert_eq!(rows(&conn, "SELECT x FROM t"), [["1"]]);
        conn.execute_batch(
            "BEGIN;
               INSERT INTO t VALUES (2);
               SAVEPOINT a;
                 INSERT INTO t VALUES (3);
                 SAVEPOINT b;
                   INSERT INTO t VALUES (4);
                 ROLLBACK TO b;
                 INSERT INTO t VALUES (5);
               RELEASE a;
               SAVEPOINT c;
                 DELETE FROM t;
               ROLLBACK TO c;
             COMMIT;",
        )
        .unwrap();
        assert_eq!(
            rows(&conn, "SELECT x FROM t ORDER BY x"),
            [["1"], ["2"], ["3"], ["5"]]
        );
        // A rollback of a transaction big enough to have spilled pages into the database file
        // must be played back from the stored journal.
        conn.execute_batch(
            "PRAGMA cache_size = 10;
             BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 3000)
             INSERT INTO t SELECT randomblob(300) FROM n;
             UPDATE t SET x = 0 WHERE typeof(x) = 'integer';
             ROLLBACK;",
        )
        .unwrap();
        assert_eq!(
            rows(&conn, "SELECT x FROM t ORDER BY x"),
            [["1"], ["2"], ["3"], ["5"]]
        );
        assert_eq!(integrity(&conn), "ok");
    });
}

#[test]
fn every_page_size_works_including_a_change_through_vacuum() {
    on_each_backend("every_page_size", |vfs| {
        for (i, size) in [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
            .into_iter()
            .enumerate()
        {
            let name = format!("ps{size}");
            let conn = open(vfs, &name);
            conn.execute_batch(&format!(
                "PRAGMA page_size = {size};
                 CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300)
                 INSERT INTO t(v) SELECT randomblob(200 + i) FROM n;"
            ))
            .unwrap();
            let got: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap();
            assert_eq!(got, size);
            let digest = rows(
                &conn,
                "SELECT id, length(v), hex(substr(v, 1, 8)) FROM t ORDER BY id",
            );
            // Change the page size through VACUUM (to the next size, wrapping).
            let new_size = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 512][i];
            conn.execute_batch(&format!("PRAGMA page_size = {new_size}; VACUUM;"))
                .unwrap();
            let got: i64 = conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap();
            assert_eq!(got, new_size, "VACUUM changes the page size");
            assert_eq!(integrity(&conn), "ok", "page size {size} -> {new_size}");
            conn.execute("INSERT INTO t(v) VALUES (x'00')", []).unwrap();
            drop(conn);
            let conn = open(vfs, &name);
            let after = rows(
                &conn,
                "SELECT id, length(v), hex(substr(v, 1, 8)) FROM t WHERE id <= 300 ORDER BY id",
            );
            assert_eq!(after, digest);
            assert_eq!(integrity(&conn), "ok");
        }
    });
}

#[test]
fn vacuum_and_incremental_auto_vacuum_shrink_the_file() {
    on_each_backend("vacuum_and_auto_vacuum", |vfs| {
        let conn = open(vfs, "v");
        conn.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL;
             CREATE TABLE t(v BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000)
             INSERT INTO t SELECT randomblob(1000) FROM n;",
        )
        .unwrap();
        let pages = |c: &rusqlite::Connection| -> i64 {
            c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap()
        };
        let full = pages(&conn);
        conn.execute_batch("DELETE FROM t WHERE rowid <= 500;")
            .unwrap();
        let free: i64 = conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        assert!(free > 100, "{free}");
        // incremental_vacuum frees one page per step: run it to completion.
        rows(&conn, "PRAGMA incremental_vacuum(100)");
        assert_eq!(pages(&conn), full - 100);
        assert_eq!(integrity(&conn), "ok");
        conn.execute_batch("DELETE FROM t WHERE rowid % 3 = 0; VACUUM;")
            .unwrap();
        assert!(pages(&conn) < full / 2);
        assert_eq!(integrity(&conn), "ok");
        drop(conn);
        let conn = open(vfs, "v");
        assert_eq!(count(&conn, "t"), 1000 - 500 - 167);
        assert_eq!(integrity(&conn), "ok");
    });
}

#[test]
fn temp_tables_live_in_memory_and_never_reach_the_store() {
    on_each_backend("temp_tables", |vfs| {
        let conn = open(vfs, "tt");
        conn.execute_batch(
            "CREATE TABLE t(x); INSERT INTO t VALUES (1);
             CREATE TEMP TABLE scratch(y);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000)
             INSERT INTO scratch SELECT randomblob(100) FROM n;",
        )
        .unwrap();
        assert_eq!(count(&conn, "scratch"), 5000);
        let names = shoal_testkit::catalog::names(vfs.kv());
        assert_eq!(names, ["tt"]);
        // A big sort spills to temp files too.
        let sorted = rows(
            &conn,
            "SELECT count(*) FROM (SELECT y FROM scratch ORDER BY y)",
        );
        assert_eq!(sorted, [["5000"]]);
    });
}

#[test]
fn create_index_over_100_000_rows() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgSchema::new("create_index_over_100_000_rows");
    for (backend, reopen) in reopenable_backends(dir.path(), pg.as_ref()) {
        eprintln!("on {backend}");
        let vfs = reopen();
        let conn = open(&vfs, "idx");
        conn.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v INTEGER);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 100000)
             INSERT INTO t(k, v) SELECT hex(randomblob(8)), i FROM n;
             CREATE INDEX t_k ON t(k);",
        )
        .unwrap();
        assert_eq!(integrity(&conn), "ok");
        let plan = rows(&conn, "EXPLAIN QUERY PLAN SELECT v FROM t WHERE k = 'x'");
        assert!(plan.iter().flatten().any(|c| c.contains("t_k")), "{plan:?}");
        let sorted: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT k, lag(k) OVER (ORDER BY k) AS p FROM t INDEXED BY t_k) WHERE p > k",
            [],
            |r| r.get(0),
        )
        .unwrap();
        assert_eq!(sorted, 0);
        drop(conn);
        drop(vfs);
        let vfs = reopen();
        let conn = open(&vfs, "idx");
        assert_eq!(count(&conn, "t"), 100_000);
        assert_eq!(integrity(&conn), "ok");
    }
}

/// A transaction across two attached databases with stored journals (journal_mode=DELETE)
/// uses a super-journal (pager.c `sqlite3PagerCommitPhaseOne` with zSuper): both commit,
/// and nothing is left behind.
#[test]
fn attach_two_shoal_databases_and_commit_across_both() {
    on_each_backend("attach_two_databases", |vfs| {
        let conn = try_open_journaled(vfs, "left").unwrap();
        conn.execute_batch(
            "CREATE TABLE a(x);
             ATTACH 'right' AS r;
             CREATE TABLE r.b(y);
             BEGIN;
               INSERT INTO a VALUES (1);
               INSERT INTO r.b VALUES (2);
             COMMIT;
             BEGIN;
               INSERT INTO a VALUES (3);
               INSERT INTO r.b VALUES (4);
             ROLLBACK;",
        )
        .unwrap();
        let before_left = stats(vfs, "left");
        conn.execute_batch("BEGIN; INSERT INTO a VALUES (5); INSERT INTO r.b VALUES (6); COMMIT;")
            .unwrap();
        assert_eq!(
            stats(vfs, "left").journal_commits,
            before_left.journal_commits + 1
        );
        let names = shoal_testkit::catalog::names(vfs.kv());
        assert_eq!(names, ["left", "right"], "no super-journal is left behind");
        drop(conn);
        let right = open(vfs, "right");
        assert_eq!(rows(&right, "SELECT y FROM b ORDER BY y"), [["2"], ["6"]]);
        let left = open(vfs, "left");
        assert_eq!(rows(&left, "SELECT x FROM a ORDER BY x"), [["1"], ["5"]]);
        assert_eq!(integrity(&left), "ok");
        assert_eq!(integrity(&right), "ok");
    });
}
