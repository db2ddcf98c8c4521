//! Connections and databases do not see what they should not: locking between two
//! connections of one database, independence of many databases in one store.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use rusqlite::ErrorCode;
use shoal_kv::raw::{self, keys};

/// The unix VFS's rules (os_unix.c `unixLock`): a reader never sees a transaction that
/// has not committed, a second writer gets SQLITE_BUSY, and a busy timeout waits it out.
#[test]
fn two_connections_see_only_committed_data_and_busy_resolves() {
    let vfs = mem_vfs();
    let writer = open(&vfs, "shared");
    writer
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let reader = open(&vfs, "shared");

    writer
        .execute_batch("BEGIN; INSERT INTO t VALUES (2);")
        .unwrap();
    assert_eq!(count(&reader, "t"), 1, "uncommitted rows are invisible");
    // The reader's own write transaction cannot start while the writer holds RESERVED.
    let err = reader.execute("INSERT INTO t VALUES (99)", []).unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    writer.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&reader, "t"), 2);

    // A reader in the middle of a read transaction blocks the writer's commit (it holds
    // SHARED, the writer needs EXCLUSIVE): BUSY, and the writer keeps its changes.
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    let _ = count(&reader, "t");
    writer
        .execute_batch("BEGIN; INSERT INTO t VALUES (3);")
        .unwrap();
    let err = writer.execute_batch("COMMIT").unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    assert_eq!(count(&reader, "t"), 2);
    reader.execute_batch("COMMIT").unwrap();
    writer.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&reader, "t"), 3);
}

#[test]
fn busy_timeout_resolves_contention_between_threads() {
    let vfs = Arc::new(mem_vfs());
    open(&vfs, "contended")
        .execute_batch("CREATE TABLE t(who, n)")
        .unwrap();
    let threads: i64 = 4;
    let per_thread: i64 = 200;
    let start = Arc::new(Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|who| {
            let vfs = Arc::clone(&vfs);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let conn = open(&vfs, "contended");
                conn.busy_timeout(Duration::from_secs(30)).unwrap();
                start.wait();
                for n in 0..per_thread {
                    conn.execute_batch(&format!(
                        "BEGIN IMMEDIATE; INSERT INTO t VALUES ({who}, {n}); COMMIT;"
                    ))
                    .unwrap();
                    // Readers interleave with writers.
                    let seen: i64 = conn
                        .query_row("SELECT count(*) FROM t WHERE who = ?1", [who], |r| r.get(0))
                        .unwrap();
                    assert_eq!(seen, n + 1);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let conn = open(&vfs, "contended");
    assert_eq!(count(&conn, "t"), threads * per_thread);
    assert_eq!(integrity(&conn), "ok");
}

#[test]
fn a_thousand_databases_are_independent_and_deleting_one_removes_all_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = sled_vfs(dir.path());
    for i in 0..1000 {
        let conn = open(&vfs, &format!("actor-{i}"));
        conn.execute_batch("CREATE TABLE t(i, pad)").unwrap();
        conn.execute("INSERT INTO t VALUES (?1, randomblob(3000))", [i])
            .unwrap();
    }
    let victim = vfs.kv().lookup("actor-500").unwrap().unwrap();
    let victim_keys = raw::of(vfs.kv())
        .scan(keys::db_range(victim.id))
        .unwrap()
        .count();
    assert!(victim_keys >= 3, "meta plus pages: {victim_keys}");
    let victim_history = raw::of(vfs.kv())
        .scan(keys::history_range(victim.id))
        .unwrap()
        .count();
    let total_before = vfs.kv().stats().unwrap().keys;

    let conn = open(&vfs, "actor-500");
    assert!(matches!(
        vfs.delete_database("actor-500"),
        Err(shoal_vfs::Error::InUse(_))
    ));
    drop(conn);
    vfs.delete_database("actor-500").unwrap();

    assert_eq!(
        raw::of(vfs.kv())
            .scan(keys::db_range(victim.id))
            .unwrap()
            .count(),
        0
    );
    assert!(vfs.kv().lookup("actor-500").unwrap().is_none());
    assert_eq!(
        raw::of(vfs.kv())
            .scan(keys::history_range(victim.id))
            .unwrap()
            .count(),
        0
    );
    // Its catalog entry plus every key of its range and of its history, and nothing else.
    assert_eq!(
        vfs.kv().stats().unwrap().keys,
        total_before - victim_keys as u64 - victim_history as u64 - 1
    );
    for i in (0..1000).step_by(37).chain([499, 501]) {
        let conn = open(&vfs, &format!("actor-{i}"));
        assert_eq!(
            rows(&conn, "SELECT i, length(pad) FROM t"),
            [[i.to_string(), "3000".into()]]
        );
    }
    // Opening the deleted name again creates a new, empty database with a new id.
    let conn = open(&vfs, "actor-500");
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0);
    assert_ne!(vfs.kv().lookup("actor-500").unwrap().unwrap().id, victim.id);
}

/// SQLite names a database's journal `<name>-journal` and super-journals
/// `<name>-mjXXXXXX9XX`; a database may not take such a name, so no file is ambiguous.
#[test]
fn names_reserved_for_sqlite_files_cannot_be_databases() {
    let vfs = mem_vfs();
    for name in ["x-journal", "x-wal", "x-shm", "x-mj0A1B2C9D3"] {
        let err = try_open(&vfs, name).unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(ErrorCode::CannotOpen),
            "{name}"
        );
    }
    let err = rusqlite::Connection::open_with_flags_and_vfs(
        "missing",
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        vfs.name(),
    )
    .unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::CannotOpen));
}

/// What the facade asks of the catalog: databases are listed and exist, a super-journal
/// left by a multi-database commit does not count as one, and a rename keeps the pages
/// (the same id) but is refused while the database is open or the new name is taken.
#[test]
fn the_catalog_calls_see_databases_only_and_a_rename_keeps_the_pages() {
    let vfs = mem_vfs();
    for name in ["b", ".staging-1", "a"] {
        let conn = open(&vfs, name);
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    vfs.kv()
        .create("a-mj01", shoal_kv::EntryKind::SuperJournal)
        .unwrap();
    assert_eq!(vfs.list().unwrap(), [".staging-1", "a", "b"]);
    assert_eq!(vfs.list_prefix(".st").unwrap(), [".staging-1"]);
    let catalog: Vec<String> = vfs.catalog().unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(catalog, [".staging-1", "a", "a-mj01", "b"]);
    assert!(vfs.exists("a").unwrap());
    assert!(
        !vfs.exists("a-mj01").unwrap(),
        "a super-journal is no database"
    );
    assert!(!vfs.exists("c").unwrap());

    let held = open(&vfs, ".staging-1");
    let err = vfs.rename_database(".staging-1", "c").unwrap_err();
    assert!(matches!(err, shoal_vfs::Error::InUse(_)), "{err}");
    drop(held);
    let err = vfs.rename_database(".staging-1", "a").unwrap_err();
    assert!(
        matches!(err, shoal_vfs::Error::Kv(shoal_kv::Error::AlreadyExists(_))),
        "{err}"
    );
    vfs.rename_database(".staging-1", "c").unwrap();
    assert_eq!(vfs.list().unwrap(), ["a", "b", "c"]);
    assert_eq!(
        count(&open(&vfs, "c"), "t"),
        1,
        "the pages moved with the name"
    );
}
