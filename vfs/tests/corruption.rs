//! Damaged data is an error, never a panic and never a wrong page handed to SQLite.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use rusqlite::ffi;
use shoal_kv::raw::{self, Batch, keys};
use shoal_kv::{ChunkNo, FaultOp, FaultyKv, FileKind, KvStore, MemKv};

/// A database of a few pages, closed; returns the backend and the database's id.
fn populated() -> (Arc<MemKv>, shoal_vfs::Vfs, shoal_kv::DbId) {
    let backend = Arc::new(MemKv::new());
    let vfs = vfs_over(backend.clone());
    let conn = open(&vfs, "victim");
    conn.execute_batch(
        "CREATE TABLE t(v);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 50)
         INSERT INTO t SELECT randomblob(500) FROM n;",
    )
    .unwrap();
    drop(conn);
    let id = vfs.kv().lookup("victim").unwrap().unwrap().id;
    (backend, vfs, id)
}

fn overwrite(backend: &MemKv, key: &[u8], value: Bytes) {
    let mut b = Batch::new();
    b.put(key.to_vec(), value);
    backend.apply(b).unwrap();
}

fn scan_all(vfs: &shoal_vfs::Vfs) -> rusqlite::Result<i64> {
    try_open(vfs, "victim")?.query_row("SELECT count(*) FROM t WHERE length(v) = 500", [], |r| {
        r.get(0)
    })
}

#[test]
fn a_flipped_bit_in_a_page_is_ioerr_data() {
    let (backend, vfs, id) = populated();
    let key = keys::chunk_key(id, FileKind::Main, ChunkNo(3));
    let mut value = backend.get(&key).unwrap().unwrap().to_vec();
    value[100] ^= 0x10;
    overwrite(&backend, &key, value.into());
    let err = scan_all(&vfs).unwrap_err();
    assert_eq!(extended_code(&err), ffi::SQLITE_IOERR_DATA, "{err}");
}

#[test]
fn a_page_copied_from_another_position_is_detected() {
    let (backend, vfs, id) = populated();
    let other = backend
        .get(&keys::chunk_key(id, FileKind::Main, ChunkNo(4)))
        .unwrap()
        .unwrap();
    overwrite(
        &backend,
        &keys::chunk_key(id, FileKind::Main, ChunkNo(3)),
        other,
    );
    let err = scan_all(&vfs).unwrap_err();
    assert_eq!(extended_code(&err), ffi::SQLITE_IOERR_DATA, "{err}");
}

#[test]
fn a_truncated_or_missing_page_is_corrupt() {
    let (backend, vfs, id) = populated();
    let key = keys::chunk_key(id, FileKind::Main, ChunkNo(3));
    let original = backend.get(&key).unwrap().unwrap();
    overwrite(&backend, &key, original.slice(..original.len() - 1));
    assert!(
        scan_all(&vfs).is_err(),
        "a truncated value must not be read"
    );
    // A validly sealed page of the wrong length.
    let mut short = Batch::new();
    raw::put_chunk(&mut short, id, FileKind::Main, ChunkNo(3), vec![0; 100]);
    backend.apply(short).unwrap();
    assert_eq!(
        primary_code(&scan_all(&vfs).unwrap_err()),
        ffi::SQLITE_CORRUPT
    );
    let mut delete = Batch::new();
    delete.delete(key.to_vec());
    backend.apply(delete).unwrap();
    assert_eq!(
        primary_code(&scan_all(&vfs).unwrap_err()),
        ffi::SQLITE_CORRUPT
    );
}

#[test]
fn missing_or_garbage_metadata_refuses_to_open() {
    let (backend, vfs, id) = populated();
    let meta = keys::meta_key(id, FileKind::Main);
    overwrite(&backend, &meta, Bytes::from_static(b"garbage"));
    let err = scan_all(&vfs).unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_CORRUPT, "{err}");
    let mut delete = Batch::new();
    delete.delete(meta.to_vec());
    backend.apply(delete).unwrap();
    let err = scan_all(&vfs).unwrap_err();
    assert_eq!(
        primary_code(&err),
        ffi::SQLITE_CORRUPT,
        "a catalog entry pointing at nothing: {err}"
    );
}

#[test]
fn a_panicking_backend_is_an_ioerr_not_an_abort() {
    let backend = Arc::new(FaultyKv::new(MemKv::new()));
    let vfs = vfs_over(backend.clone());
    let conn = open(&vfs, "p");
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    // One panicking batch: the atomic commit fails with an IOERR and poisons the
    // database (the panic may have left its shared state half-updated), so SQLite's
    // fallback to its rollback journal fails too, and so does every later call.
    backend.panic_nth(FaultOp::Batch, 1);
    let err = conn.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{err}");
    let err = conn.execute("INSERT INTO t VALUES (3)", []).unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{err}");
    drop(conn);
    let err = try_open(&vfs, "p")
        .and_then(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
        .unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{err}");
    assert_eq!(vfs.open_files(), 0);
    drop(vfs);
    // Reopened: the panicking batch applied nothing.
    let vfs = vfs_over(backend.clone());
    let conn = open(&vfs, "p");
    assert_eq!(rows(&conn, "SELECT x FROM t"), [["1"]]);
    conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
    // A panicking read while opening: an IOERR (or CANTOPEN from xOpen), no abort.
    backend.panic_nth(FaultOp::Read, 1);
    drop(conn);
    let err = try_open(&vfs, "p")
        .and_then(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
        .unwrap_err();
    assert!(
        matches!(primary_code(&err), ffi::SQLITE_IOERR | ffi::SQLITE_CANTOPEN),
        "{err}"
    );
    backend.clear();
    drop(vfs);
    let vfs = vfs_over(backend.clone());
    let conn = open(&vfs, "p");
    assert_eq!(rows(&conn, "SELECT x FROM t"), [["1"], ["2"]]);
    assert_eq!(integrity(&conn), "ok");
}
