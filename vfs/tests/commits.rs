//! How commits travel: every transaction is one atomic kv batch at SQLITE_FCNTL_SYNC,
//! whatever the SQLite build, journal mode or `synchronous` setting; one larger than its
//! memory share stages its pages in the kv first; durability goes through the group
//! committer.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::*;
use rusqlite::{Connection, ErrorCode};

#[test]
fn sql_round_trips_on_every_backend_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgSchema::new("sql_round_trips_on_every_backend");
    let stores = reopenable_backends(dir.path(), pg.as_ref());
    for vfs in [mem_vfs()]
        .into_iter()
        .chain(stores.iter().map(|(_, open)| open()))
    {
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
    // The sled and PostgreSQL stores from the loop above are closed; reopen each in a new
    // VFS.
    for (backend, reopen) in &stores {
        let vfs = reopen();
        let conn = open(&vfs, "actor");
        assert_eq!(
            rows(&conn, "SELECT body FROM msg ORDER BY id"),
            [["'hello'"], ["'world'"]],
            "{backend}"
        );
        conn.execute("INSERT INTO msg(body) VALUES ('again')", [])
            .unwrap();
        drop(conn);
        drop(vfs);
        let vfs = reopen();
        assert_eq!(count(&open(&vfs, "actor"), "msg"), 3, "{backend}");
    }
}

/// Nothing a transaction writes reaches the kv before SQLITE_FCNTL_SYNC (pager.c
/// `sqlite3PagerSync`, sent by `pager_commit_phase_one` right before xSync): every
/// transaction, the first of an empty database included, is exactly one kv batch, and
/// with journal_mode=MEMORY none opens a journal.
#[test]
fn ordinary_transactions_are_one_kv_batch_each_and_never_touch_a_journal() {
    let vfs = mem_vfs();
    let conn = open(&vfs, "a");
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE INDEX tv ON t(v);")
        .unwrap();
    let before = stats(&vfs, "a");
    assert_eq!(
        (
            before.batch_commits,
            before.kv_batches,
            before.journal_opens
        ),
        (2, 2, 0),
        "two transactions (the first of an empty database among them), two batches: {before}"
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
    assert_eq!(after.journal_commits, 0, "no journal commits");
    assert_eq!(after.journal_opens, 0, "no journal opened");
    assert_eq!(after.durable_syncs - before.durable_syncs, 1000);
    assert_eq!(integrity(&conn), "ok");
}

/// A transaction that spills the page cache writes pages before its commit
/// (pager.c `pagerStress`); they stay in the VFS's overlay, so it is still one batch.
#[test]
fn a_transaction_larger_than_the_page_cache_is_still_one_batch() {
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
    assert_eq!(after.batch_commits - before.batch_commits, 1);
    assert_eq!(after.kv_batches - before.kv_batches, 1);
    assert_eq!((after.journal_opens, after.staged_commits), (0, 0));
    assert_eq!(integrity(&conn), "ok");
    assert_eq!(count(&conn, "t"), 2001);
    drop(conn);
    drop(vfs);
    let vfs = sled_vfs(dir.path());
    let conn = open(&vfs, "big");
    assert_eq!(count(&conn, "t"), 2001);
    assert_eq!(integrity(&conn), "ok");
}

/// Keys of database `name`'s staging area.
fn staged_keys(vfs: &shoal_vfs::Vfs, name: &str) -> usize {
    let id = vfs.kv().lookup(name).unwrap().unwrap().id;
    shoal_kv::raw::of(vfs.kv())
        .scan(shoal_kv::raw::keys::file_range(
            id,
            shoal_kv::FileKind::Staged,
        ))
        .unwrap()
        .count()
}

/// A transaction larger than its memory share ([`VfsOptions::overlay_limit`]) moves
/// its pages to the kv's staging area as it goes, so memory stays bounded: the overlay
/// never holds much more than the limit. Its commit makes them visible at once; a
/// rollback removes them; readers never see them.
#[test]
fn a_transaction_larger_than_its_memory_share_is_staged_and_commits_atomically() {
    let limit = 256 << 10;
    let vfs = vfs_with(
        std::sync::Arc::new(shoal_kv::MemKv::new()),
        shoal_vfs::VfsOptions {
            overlay_limit: limit,
            ..Default::default()
        },
    );
    let conn = open(&vfs, "huge");
    conn.execute_batch("CREATE TABLE t(x BLOB); INSERT INTO t VALUES (zeroblob(10));")
        .unwrap();
    let insert = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 8000)
                  INSERT INTO t SELECT randomblob(500) FROM n;";
    // Rolled back: nothing stays staged, nothing changed.
    conn.execute_batch(&format!("BEGIN; {insert}")).unwrap();
    let (held, _) = vfs.overlay_bytes();
    assert!(held <= limit + 65536, "the overlay holds {held} bytes");
    assert!(staged_keys(&vfs, "huge") > 0, "pages were staged");
    conn.execute_batch("ROLLBACK").unwrap();
    assert_eq!(staged_keys(&vfs, "huge"), 0);
    assert_eq!(vfs.overlay_bytes().0, 0);
    assert_eq!(count(&conn, "t"), 1);
    assert_eq!(integrity(&conn), "ok");
    // SQLite rolls a spilled transaction back by writing the original pages over the
    // spilled ones and syncing (pager.c `pager_playback` -> `sqlite3PagerSync`): the VFS
    // commits that, a transaction that changes nothing.
    let s = stats(&vfs, "huge");

    // Committed: one commit, about 4 MB through a 256 KiB share.
    conn.execute_batch(&format!("BEGIN; {insert} COMMIT;"))
        .unwrap();
    let after = stats(&vfs, "huge");
    assert_eq!(after.staged_commits - s.staged_commits, 1, "{after}");
    let s = after;
    assert!(s.pages_staged > 900, "{s}");
    assert_eq!(staged_keys(&vfs, "huge"), 0);
    assert_eq!(count(&conn, "t"), 8001);
    assert_eq!(integrity(&conn), "ok");
    drop(conn);
    assert_eq!(
        vfs.audit("huge").unwrap().unwrap().problems,
        Vec::<String>::new()
    );
}

/// Only WAL is refused (it needs shared memory). OFF and MEMORY keep every commit one
/// batch; `synchronous=OFF` is accepted and means relaxed durability.
#[test]
fn only_journal_mode_wal_is_refused() {
    let vfs = mem_vfs();
    let conn = open(&vfs, "p");
    conn.execute_batch("CREATE TABLE t(x)").unwrap();
    for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA journal_mode = w"] {
        let err = conn.execute_batch(pragma).unwrap_err();
        assert!(err.to_string().contains("shoal refuses"), "{pragma}: {err}");
        assert_eq!(
            err.sqlite_error_code(),
            Some(ErrorCode::Unknown),
            "{pragma}"
        );
    }
    for mode in ["truncate", "persist", "delete", "off", "memory"] {
        let got: String = conn
            .query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(got, mode);
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    }
    assert_eq!(count(&conn, "t"), 5);
    let durability = |c: &Connection| -> String {
        c.query_row("PRAGMA shoal_durability", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(durability(&conn), "full");
    conn.execute_batch("PRAGMA synchronous = OFF").unwrap();
    assert_eq!(durability(&conn), "relaxed", "synchronous=OFF skips xSync");
    let before = stats(&vfs, "p");
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    let after = stats(&vfs, "p");
    assert_eq!(after.batch_commits - before.batch_commits, 1);
    assert_eq!(
        after.durable_syncs, before.durable_syncs,
        "no flush waited for"
    );
    conn.execute_batch("PRAGMA synchronous = NORMAL").unwrap();
    assert_eq!(durability(&conn), "full");
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    assert_eq!(stats(&vfs, "p").durable_syncs, after.durable_syncs + 1);
}

/// Whatever the spelling (numbers SQLite reads with `sqlite3Atoi`, hex, a `+` sign, the
/// call form, a schema prefix, prefixes of journal mode names), shoal refuses a pragma
/// exactly when stock SQLite, given the same statement, applies journal_mode=WAL; where
/// it accepts, SQLite applies the same setting; and `shoal_durability` reports relaxed
/// exactly where SQLite applied synchronous=OFF.
#[test]
fn pragmas_are_judged_by_what_sqlite_applies_not_by_spelling() {
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
        "aux.journal_mode=w",
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
            match conn.execute_batch(&sql) {
                Err(e) => {
                    assert_eq!(
                        applied, "Text(\"wal\")",
                        "{sql}: refused ({e}) though SQLite applies {applied}"
                    );
                    assert!(e.to_string().contains("shoal refuses"), "{sql}: {e}");
                }
                Ok(()) => {
                    assert_ne!(applied, "Text(\"wal\")", "{sql}: accepted");
                    assert_eq!(read(&conn, &check), applied, "{sql}");
                    if query == "synchronous" {
                        let durability = read(&conn, &format!("PRAGMA {schema}.shoal_durability"));
                        let relaxed = applied == "Integer(0)";
                        assert_eq!(
                            durability == "Text(\"relaxed\")",
                            relaxed,
                            "{sql}: SQLite applies {applied}, shoal says {durability}"
                        );
                    }
                }
            }
        }
    }
    conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    let s = stats(&vfs, "spellings");
    assert!(s.durable_syncs > 0, "{s}");
}

/// An unqualified `PRAGMA journal_mode` reaches only the main database's VFS but applies
/// to every attached database, so a shoal database attached to a plain one gets
/// journal_mode=OFF or MEMORY without shoal seeing the pragma. Nothing depends on it
/// any more: small and spilling transactions commit as one batch, and a ROLLBACK after
/// a spill (OFF cannot roll back in SQLite itself: `sqlite3PagerRollback` puts the pager
/// in the error state) leaves the database as it was, because nothing it wrote ever
/// reached the kv.
#[test]
fn journal_modes_off_and_memory_commit_atomically_and_roll_back() {
    let vfs = mem_vfs();
    open(&vfs, "attached")
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES ('first');")
        .unwrap();
    let big = "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 500)
         INSERT INTO aux.t SELECT printf('%0400d', i) FROM k;";
    for mode in ["off", "memory"] {
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
        assert_eq!(applied, mode, "SQLite applied the mode to the attached db");
        let n = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM aux.t", [], |r| r.get(0))
                .unwrap()
        };
        let before = n(&conn);
        conn.execute("INSERT INTO aux.t VALUES ('small')", [])
            .unwrap();
        // A spilling transaction rolled back.
        conn.execute_batch(&format!("BEGIN; {big}")).unwrap();
        let _ = conn.execute_batch("ROLLBACK");
        drop(conn);
        let check = open(&vfs, "attached");
        assert_eq!(integrity(&check), "ok", "{mode}");
        assert_eq!(
            count(&check, "t"),
            before + 1,
            "{mode}: the rollback left it whole"
        );
        drop(check);
        // And committed.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "ATTACH 'file:attached?vfs={}' AS aux; PRAGMA aux.cache_size = 5;
             PRAGMA journal_mode = {mode}; BEGIN; {big} COMMIT;",
            vfs.name()
        ))
        .unwrap();
        assert_eq!(n(&conn), before + 501, "{mode}");
    }
    let s = stats(&vfs, "attached");
    assert_eq!(s.journal_opens, 0, "{s}");
    // journal_mode=OFF's rollback drops the overlay at the unlock; MEMORY's plays the
    // original pages back and syncs them, a commit that changes nothing.
    assert!(s.rollbacks >= 1, "{s}");
}

/// In exclusive locking mode SQLite never unlocks between transactions, so the end of a
/// transaction is never an unlock: a rollback after a spill must still leave nothing
/// behind (pager.c `pager_playback` restores the pages and syncs), and later
/// transactions commit as usual.
#[test]
fn exclusive_locking_mode_commits_and_rolls_back() {
    let vfs = mem_vfs();
    let conn = open(&vfs, "x");
    conn.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE; PRAGMA cache_size = 5;
         CREATE TABLE t(x); INSERT INTO t VALUES ('first');",
    )
    .unwrap();
    let big = "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 500)
         INSERT INTO t SELECT printf('%0400d', i) FROM k;";
    conn.execute_batch(&format!("BEGIN; {big} ROLLBACK;"))
        .unwrap();
    assert_eq!(count(&conn, "t"), 1);
    conn.execute_batch(&format!("BEGIN; {big} COMMIT;"))
        .unwrap();
    assert_eq!(count(&conn, "t"), 501);
    conn.execute_batch("PRAGMA journal_mode = OFF").unwrap();
    conn.execute_batch(&format!("BEGIN; {big}")).unwrap();
    // journal_mode=OFF cannot roll back: SQLite's pager enters its error state
    // (SQLITE_ABORT) and re-reads the database, which must be the committed one.
    let _ = conn.execute_batch("ROLLBACK");
    assert_eq!(count(&conn, "t"), 501);
    assert_eq!(integrity(&conn), "ok");
    drop(conn);
    let check = open(&vfs, "x");
    assert_eq!(count(&check, "t"), 501);
    assert_eq!(integrity(&check), "ok");
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
}

/// A write far past the end of a database fills the gap with zero chunks at once, more
/// than one kv batch may carry: they go to the staging area in batches within the limits
/// (a single batch of them was refused with LimitExceeded), and the file reads back.
#[test]
fn a_write_far_past_the_end_stages_in_batches_within_the_limits() {
    use rusqlite::ffi;
    use shoal_vfs::contract::Probe;
    let vfs = common::mem_vfs();
    let flags = ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_CREATE | ffi::SQLITE_OPEN_READWRITE;
    let (mut file, rc) = Probe::open(vfs.name(), Some("gap"), flags).unwrap();
    assert_eq!(rc, ffi::SQLITE_OK);
    assert_eq!(file.lock(ffi::SQLITE_LOCK_SHARED), ffi::SQLITE_OK);
    assert_eq!(file.lock(ffi::SQLITE_LOCK_RESERVED), ffi::SQLITE_OK);
    assert_eq!(file.lock(ffi::SQLITE_LOCK_EXCLUSIVE), ffi::SQLITE_OK);
    let page = vec![7u8; 4096];
    assert_eq!(file.write(&page, 0), ffi::SQLITE_OK);
    // 100 MiB on: about 25,600 chunks of 4 KiB, two and a half times a batch's 10,000 keys.
    let far = 100i64 << 20;
    assert_eq!(file.write(&page, far), ffi::SQLITE_OK, "{}", vfs_reason());
    assert_eq!(file.file_size(), (ffi::SQLITE_OK, far + 4096));
    let mut back = vec![0u8; 4096];
    assert_eq!(file.read(&mut back, far), ffi::SQLITE_OK);
    assert_eq!(back, page);
    assert_eq!(file.read(&mut back, far / 2), ffi::SQLITE_OK);
    assert_eq!(back, vec![0u8; 4096]);
    assert_eq!(file.close(), ffi::SQLITE_OK);
}

fn vfs_reason() -> String {
    shoal_vfs::take_last_failure().map_or_else(String::new, |(_, reason)| reason)
}
