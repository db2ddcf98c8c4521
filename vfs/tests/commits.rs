//! How commits travel: one atomic kv batch for ordinary transactions, the stored rollback
//! journal for the cases SQLite sends there, and durability through the group committer.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::*;
use rusqlite::{Connection, ErrorCode, ffi};

#[test]
fn sql_round_trips_on_both_backends_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    for vfs in [mem_vfs(), sled_vfs(dir.path())] {
        let conn = open(&vfs, "actor");
        conn.execute_batch(
            "CREATE TABLE msg(id INTEGER PRIMARY KEY, body TEXT);
             INSERT INTO msg(body) VALUES ('hello'), ('world');",
        )
        .unwrap();
        assert_eq!(
            rows(&conn, "SELECT body FROM msg ORDER BY id"),
            [["'hello'"], ["'world'"]]
        );
        assert_eq!(integrity(&conn), "ok");
    }
    // The sled store from the loop above is closed; reopen it in a new VFS.
    let vfs = sled_vfs(dir.path());
    let conn = open(&vfs, "actor");
    assert_eq!(
        rows(&conn, "SELECT body FROM msg ORDER BY id"),
        [["'hello'"], ["'world'"]]
    );
    conn.execute("INSERT INTO msg(body) VALUES ('again')", [])
        .unwrap();
    drop(conn);
    drop(vfs);
    let vfs = sled_vfs(dir.path());
    assert_eq!(count(&open(&vfs, "actor"), "msg"), 3);
}

/// SQLite takes the batch path whenever the journal would have stayed in memory
/// (pager.c, `jrnlBufferSize` and `pager_commit_phase_one`): every ordinary transaction
/// after the first must be exactly one kv batch and open no journal.
#[test]
fn ordinary_transactions_are_one_kv_batch_each_and_never_touch_a_journal() {
    let vfs = mem_vfs();
    let conn = open(&vfs, "a");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX tv ON t(v);")
        .unwrap();
    let before = stats(&vfs, "a");
    assert_eq!(
        before.journal_commits, 1,
        "the first transaction of an empty database is journaled"
    );
    for i in 0..1000 {
        match i % 3 {
            0 => conn
                .execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
                .unwrap(),
            1 => conn
                .execute(
                    "UPDATE t SET v = v || '!' WHERE id = (SELECT max(id) FROM t)",
                    [],
                )
                .unwrap(),
            _ => conn
                .execute("DELETE FROM t WHERE id = (SELECT min(id) FROM t)", [])
                .unwrap(),
        };
    }
    let after = stats(&vfs, "a");
    assert_eq!(after.batch_commits - before.batch_commits, 1000);
    assert_eq!(
        after.kv_batches - before.kv_batches,
        1000,
        "exactly one kv batch per transaction"
    );
    assert_eq!(
        after.journal_commits, before.journal_commits,
        "no journal commits"
    );
    assert_eq!(
        after.journal_opens, before.journal_opens,
        "no journal opened"
    );
    assert_eq!(after.durable_syncs - before.durable_syncs, 1000);
    assert_eq!(integrity(&conn), "ok");
}

/// A transaction that spills the page cache must write pages before commit, so SQLite
/// creates a real journal (pager.c `pagerStress` -> `sqlite3JournalCreate`).
#[test]
fn a_transaction_larger_than_the_page_cache_commits_through_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = sled_vfs(dir.path());
    let conn = open(&vfs, "big");
    conn.execute_batch("PRAGMA cache_size = 20; CREATE TABLE t(x BLOB);")
        .unwrap();
    conn.execute("INSERT INTO t VALUES (zeroblob(10))", [])
        .unwrap();
    let before = stats(&vfs, "big");
    conn.execute_batch(
        "BEGIN; WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
         INSERT INTO t SELECT randomblob(500) FROM n; COMMIT;",
    )
    .unwrap();
    let after = stats(&vfs, "big");
    assert_eq!(after.journal_commits - before.journal_commits, 1);
    assert!(after.journal_opens > before.journal_opens);
    assert_eq!(after.batch_commits, before.batch_commits);
    assert_eq!(integrity(&conn), "ok");
    assert_eq!(count(&conn, "t"), 2001);
    drop(conn);
    drop(vfs);
    let vfs = sled_vfs(dir.path());
    let conn = open(&vfs, "big");
    assert_eq!(count(&conn, "t"), 2001);
    assert_eq!(integrity(&conn), "ok");
    // No journal is left behind after a committed journal-path transaction.
    let id = vfs.kv().lookup("big").unwrap().unwrap().id;
    let journal = vfs
        .kv()
        .read_meta(id, shoal_kv::FileKind::MainJournal)
        .unwrap();
    assert!(journal.is_none(), "{journal:?}");
}

#[test]
fn pragmas_that_would_break_atomic_commits_are_refused() {
    let vfs = mem_vfs();
    let conn = open(&vfs, "p");
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    for pragma in [
        "PRAGMA synchronous = OFF",
        "PRAGMA synchronous = 0",
        "PRAGMA main.synchronous = off",
        "PRAGMA journal_mode = WAL",
        "PRAGMA journal_mode = OFF",
        "PRAGMA journal_mode = MEMORY",
    ] {
        let err = conn.execute_batch(pragma).unwrap_err();
        assert!(err.to_string().contains("shoal refuses"), "{pragma}: {err}");
        assert_eq!(
            err.sqlite_error_code(),
            Some(ErrorCode::Unknown),
            "{pragma}"
        );
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let sync: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "synchronous stays FULL");
    // The modes that keep commits atomic are still allowed.
    for mode in ["truncate", "persist", "delete"] {
        let got: String = conn
            .query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(got, mode);
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    assert_eq!(count(&conn, "t"), 4);
}

/// Whatever the spelling (numbers SQLite reads with `sqlite3Atoi`, hex, a `+` sign, the
/// call form, a schema prefix, prefixes of journal mode names), shoal refuses a pragma
/// exactly when stock SQLite, given the same statement, applies synchronous=OFF or
/// journal_mode=WAL|OFF|MEMORY; and where it accepts, SQLite applies the same setting.
#[test]
fn pragmas_are_refused_by_what_sqlite_applies_not_by_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Connection::open(dir.path().join("plain.db")).unwrap();
    plain.execute_batch("CREATE TABLE t(x)").unwrap();
    let vfs = mem_vfs();
    let conn = open(&vfs, "spellings");
    conn.execute_batch("CREATE TABLE t(x); ATTACH 'spellings-aux' AS aux")
        .unwrap();
    plain
        .execute_batch(&format!(
            "ATTACH '{}' AS aux",
            dir.path().join("aux.db").display()
        ))
        .unwrap();
    let read = |c: &Connection, sql: &str| -> String {
        c.query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    let synchronous = [
        "synchronous=8",
        "synchronous=7",
        "synchronous=0x0",
        "synchronous=0x8",
        "synchronous=0.5",
        "synchronous=+8",
        "synchronous=15",
        "synchronous='0 '",
        "synchronous=99999999999",
        "synchronous=no",
        "synchronous=FALSE",
        "synchronous(8)",
        "main.synchronous=7",
        "main.synchronous(0x8)",
        "\"main\".synchronous='0x0'",
        "aux.synchronous=8",
        "synchronous=1",
        "synchronous=9",
        "synchronous=-1",
        "synchronous=-8",
        "synchronous=normal",
        "synchronous=full",
        "synchronous=extra",
        "synchronous=3",
        "synchronous=10",
        "synchronous=0x2",
        "synchronous='off '",
        "aux.synchronous=1",
    ];
    let journal_mode = [
        "journal_mode=w",
        "journal_mode=W",
        "journal_mode=wa",
        "journal_mode=M",
        "journal_mode=me",
        "journal_mode=of",
        "journal_mode=O",
        "journal_mode('memo')",
        "main.journal_mode=wa",
        "aux.journal_mode=o",
        "journal_mode=t",
        "journal_mode=p",
        "journal_mode=d",
        "journal_mode=''",
        "journal_mode=trunc",
        "journal_mode=walx",
        "journal_mode=normal",
        "aux.journal_mode=persist",
    ];
    for (pragmas, reset, query) in [
        (
            &synchronous[..],
            "synchronous=FULL; PRAGMA aux.synchronous=FULL",
            "synchronous",
        ),
        (&journal_mode[..], "journal_mode=delete", "journal_mode"),
    ] {
        for pragma in pragmas {
            let sql = format!("PRAGMA {pragma}");
            let schema = if pragma.starts_with("aux.") {
                "aux"
            } else {
                "main"
            };
            let check = format!("PRAGMA {schema}.{query}");
            plain.execute_batch(&format!("PRAGMA {reset}")).unwrap();
            conn.execute_batch(&format!("PRAGMA {reset}")).unwrap();
            plain.execute_batch(&sql).unwrap();
            let applied = read(&plain, &check);
            let breaks = [
                "Integer(0)",
                "Text(\"wal\")",
                "Text(\"off\")",
                "Text(\"memory\")",
            ]
            .contains(&applied.as_str());
            match conn.execute_batch(&sql) {
                Err(e) => {
                    assert!(
                        breaks,
                        "{sql}: refused ({e}) though SQLite applies {applied}"
                    );
                    assert!(e.to_string().contains("shoal refuses"), "{sql}: {e}");
                }
                Ok(()) => {
                    assert!(!breaks, "{sql}: accepted though SQLite applies {applied}");
                    assert_eq!(read(&conn, &check), applied, "{sql}");
                }
            }
        }
    }
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    let s = stats(&vfs, "spellings");
    assert!(s.durable_syncs > 0, "{s}");
}

/// An unqualified `PRAGMA journal_mode` reaches only the main database's VFS (pragma.c
/// sends SQLITE_FCNTL_PRAGMA to the named schema, main by default) but applies to every
/// attached database, so a shoal database attached to a plain one ends up with
/// journal_mode=OFF or MEMORY without shoal seeing the pragma. The VFS then refuses the
/// writes that could tear it (outside a batch, no journal) with an IOERR, and the
/// database stays whole; what SQLite can still commit as one atomic batch goes through.
#[test]
fn a_database_without_a_journal_is_never_written_outside_a_batch() {
    let vfs = mem_vfs();
    open(&vfs, "attached")
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES ('first');")
        .unwrap();
    let big = "BEGIN;
         WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 500)
         INSERT INTO aux.t SELECT printf('%0400d', i) FROM k;
         COMMIT;";
    for (mode, small_commits) in [("off", false), ("memory", true)] {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "ATTACH 'file:attached?vfs={}' AS aux; PRAGMA aux.cache_size = 5;",
            vfs.name()
        ))
        .unwrap();
        conn.execute_batch(&format!("PRAGMA journal_mode = {mode}"))
            .unwrap();
        let applied: String = conn
            .query_row("PRAGMA aux.journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            applied, mode,
            "SQLite applied the mode to the attached database"
        );
        let small = conn.execute("INSERT INTO aux.t VALUES ('small')", []);
        assert_eq!(small.is_ok(), small_commits, "{mode}: {small:?}");
        let err = conn.execute_batch(big).unwrap_err();
        assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{mode}: {err}");
        let _ = conn.execute_batch("ROLLBACK");
        drop(conn);
        let check = open(&vfs, "attached");
        assert_eq!(integrity(&check), "ok", "{mode}");
        assert_eq!(count(&check, "t"), 1 + i64::from(small_commits), "{mode}");
    }
    let s = stats(&vfs, "attached");
    assert!(s.batch_commits >= 1, "{s}");
}

/// A `journal_mode=PERSIST` journal stays stored after its commit, not empty but with its
/// header zeroed: it can roll nothing back. SQLite deletes it only when the same pager
/// leaves PERSIST, so a later unqualified `journal_mode = MEMORY` sent through another
/// database leaves it in place. Counting it as a journal let a spilling transaction write
/// pages straight into the store, and the overlay past its writeback limit reached the kv
/// mid-transaction: part of an uncommitted transaction durable. Those writes are refused.
#[test]
fn a_finished_persist_journal_does_not_count_as_a_journal() {
    let vfs = mem_vfs();
    let rows = |n: u32, size: u32| {
        format!(
            "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < {n})
             INSERT INTO t SELECT printf('%0{size}d', i) FROM k;"
        )
    };
    let persist = open(&vfs, "attached");
    persist
        .execute_batch(&format!(
            "PRAGMA journal_mode = PERSIST; PRAGMA cache_size = 5;
             CREATE TABLE t(x); INSERT INTO t VALUES ('first');
             BEGIN; {} COMMIT;",
            rows(500, 4000)
        ))
        .unwrap();
    assert!(
        stats(&vfs, "attached").journal_commits >= 1,
        "the transaction spilled through the journal"
    );
    drop(persist);

    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(&format!(
        "ATTACH 'file:attached?vfs={}' AS aux; PRAGMA aux.cache_size = 5;
         PRAGMA journal_mode = MEMORY;",
        vfs.name()
    ))
    .unwrap();
    let applied: String = conn
        .query_row("PRAGMA aux.journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(applied, "memory");
    let err = conn
        .execute_batch(&format!(
            "BEGIN; {}",
            rows(3000, 4000).replace("INTO t", "INTO aux.t")
        ))
        .unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{err}");
    let _ = conn.execute_batch("ROLLBACK");
    drop(conn);
    let check = open(&vfs, "attached");
    assert_eq!(integrity(&check), "ok");
    assert_eq!(count(&check, "t"), 501);
}

#[test]
fn relaxed_durability_skips_the_flush_wait_after_a_batch() {
    let vfs = mem_vfs();
    let conn = open(&vfs, "r");
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    let mode: String = conn
        .query_row("PRAGMA shoal_durability", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "full");
    let mode: String = conn
        .query_row("PRAGMA shoal_durability = relaxed", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "relaxed");
    let before = stats(&vfs, "r");
    let flushes_before = vfs.kv().commit_stats().flushes;
    for i in 0..50 {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    let after = stats(&vfs, "r");
    assert_eq!(after.relaxed_syncs - before.relaxed_syncs, 50);
    assert_eq!(after.durable_syncs, before.durable_syncs);
    assert_eq!(vfs.kv().commit_stats().flushes, flushes_before);
    assert!(
        conn.execute_batch("PRAGMA shoal_durability = sometimes")
            .is_err()
    );
    let line: String = conn
        .query_row("PRAGMA shoal_stats", [], |r| r.get(0))
        .unwrap();
    assert!(line.contains("relaxed_syncs=50"), "{line}");
}

#[test]
fn registration_is_refused_twice_under_one_name_or_over_one_store() {
    let vfs = mem_vfs();
    let other = std::sync::Arc::new(
        shoal_kv::Kv::open(std::sync::Arc::new(shoal_kv::MemKv::new())).unwrap(),
    );
    let err = shoal_vfs::register(
        other,
        shoal_vfs::VfsOptions {
            name: vfs.name().to_owned(),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, shoal_vfs::Error::AlreadyRegistered(_)),
        "{err}"
    );
    // A second VFS over the same store would keep its own view of sizes and pages.
    let err = shoal_vfs::register(
        vfs.kv().clone(),
        shoal_vfs::VfsOptions {
            name: unique_name("second"),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, shoal_vfs::Error::KvInUse), "{err}");
    // Once the first is gone, the store can be served again.
    let kv = vfs.kv().clone();
    drop(vfs);
    shoal_vfs::register(
        kv,
        shoal_vfs::VfsOptions {
            name: unique_name("third"),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(shoal_vfs::sqlite_has_batch_atomic_write());
}
