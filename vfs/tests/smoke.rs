#![allow(clippy::unwrap_used, clippy::indexing_slicing)]
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};
use shoal_kv::{Kv, MemKv};
use shoal_vfs::{VfsOptions, register};

#[test]
fn round_trip() {
    let kv = Arc::new(Kv::open(Arc::new(MemKv::new())).unwrap());
    let vfs = register(
        kv,
        VfsOptions {
            name: "smoke".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let conn = Connection::open_with_flags_and_vfs("a", OpenFlags::default(), vfs.name()).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1),(2),(3);")
        .unwrap();
    for i in 0..10 {
        conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 13);
    let s: String = conn
        .query_row("PRAGMA shoal_stats", [], |r| r.get(0))
        .unwrap();
    println!("{s}");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    println!("{:?}", vfs.stats("a").unwrap());
}
