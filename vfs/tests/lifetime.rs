//! The life of a registered VFS: dropping a `Vfs` while other threads are inside its
//! methods is safe (its SQLite table is never freed), connections that outlive it go on
//! working, new ones are refused with SQLITE_CANTOPEN, and its name can be registered
//! again once nothing uses it.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use rusqlite::{Connection, OpenFlags, ffi};
use shoal_kv::{Kv, MemKv};
use shoal_vfs::{Vfs, VfsOptions};

fn register(kv: &Arc<Kv>, name: &str) -> shoal_vfs::Result<Vfs> {
    shoal_vfs::register(
        Arc::clone(kv),
        VfsOptions {
            name: name.to_owned(),
            ..VfsOptions::default()
        },
    )
}

fn open_by_name(db: &str, vfs_name: &str) -> rusqlite::Result<Connection> {
    Connection::open_with_flags_and_vfs(db, OpenFlags::default(), vfs_name)
}

/// Threads open connections (xFullPathname, xOpen) and run read transactions on them
/// (xAccess of the journal at each one) in a loop while the main thread drops the `Vfs`
/// under them, a hundred times over one name. Every call either works or fails cleanly
/// (SQLITE_CANTOPEN once the store is closed); none may touch freed memory. Run it under
/// AddressSanitizer to see the difference.
#[test]
fn dropping_a_vfs_while_other_threads_open_connections_is_safe() {
    let kv = Arc::new(Kv::open(Arc::new(MemKv::new())).unwrap());
    let name = unique_name("dropped");
    {
        let vfs = register(&kv, &name).unwrap();
        for t in 0..3 {
            open(&vfs, &format!("db-{t}"))
                .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
                .unwrap();
        }
    }
    for round in 0..100 {
        let vfs = register(&kv, &name).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let opened = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..3 {
                let (name, opened) = (&name, &opened);
                s.spawn(move || {
                    let db = format!("db-{t}");
                    for _ in 0..10_000 {
                        let conn = match open_by_name(&db, name) {
                            Ok(conn) => conn,
                            Err(e) => {
                                assert_eq!(primary_code(&e), ffi::SQLITE_CANTOPEN, "{e}");
                                return;
                            }
                        };
                        // The connection outlives the Vfs at times: it must go on working.
                        for _ in 0..5 {
                            let n: i64 = conn
                                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                                .unwrap_or_else(|e| panic!("round {round}, {db}: {e}"));
                            assert_eq!(n, 1);
                        }
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                    panic!("round {round}: the dropped VFS still opens connections");
                });
            }
            while opened.load(Ordering::SeqCst) < 3 {
                std::thread::yield_now();
            }
            drop(vfs);
        });
    }
}

#[test]
fn a_connection_outliving_its_vfs_goes_on_and_new_ones_are_refused() {
    let kv = Arc::new(Kv::open(Arc::new(MemKv::new())).unwrap());
    let name = unique_name("outlived");
    let vfs = register(&kv, &name).unwrap();
    let usage = vfs.usage();
    let kept = open(&vfs, "kept");
    kept.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(vfs);
    assert!(usage.in_use());
    assert_eq!(usage.open_databases(), 1);

    // Big enough to spill onto the rollback journal: journal xOpen, xAccess, xDelete.
    kept.execute_batch(SPILLING_INSERT).unwrap();
    assert_eq!(count(&kept, "t"), 501);

    let err = open_by_name("kept", &name).unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_CANTOPEN, "{err}");
    let err = open_by_name("other", &name).unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_CANTOPEN, "{err}");
    // The name is not free while the store behind it is still in use.
    let other = Arc::new(Kv::open(Arc::new(MemKv::new())).unwrap());
    let err = register(&other, &name).unwrap_err();
    assert!(
        matches!(err, shoal_vfs::Error::AlreadyRegistered(_)),
        "{err}"
    );

    drop(kept);
    assert!(!usage.in_use(), "the last connection released the store");
    assert_eq!(usage.open_databases(), 0);
    let vfs = register(&kv, &name).unwrap();
    assert_eq!(count(&open(&vfs, "kept"), "t"), 501);
}
