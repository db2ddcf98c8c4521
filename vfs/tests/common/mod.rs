//! Fixtures shared by the VFS integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::{Connection, OpenFlags};
use shoal_kv::{Kv, KvStore, MemKv, SledConfig, SledKv};
use shoal_vfs::{DbStats, Vfs, VfsOptions};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A VFS name no other test in this process uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn vfs_over(backend: Arc<dyn KvStore>) -> Vfs {
    let kv = Arc::new(Kv::open(backend).unwrap());
    shoal_vfs::register(
        kv,
        VfsOptions {
            name: unique_name("test"),
            ..VfsOptions::default()
        },
    )
    .unwrap()
}

pub fn mem_vfs() -> Vfs {
    vfs_over(Arc::new(MemKv::new()))
}

pub fn sled_vfs(dir: &Path) -> Vfs {
    let mut config = SledConfig::new(dir);
    config.cache_capacity = 16 << 20;
    vfs_over(Arc::new(SledKv::open(&config).unwrap()))
}

pub fn open(vfs: &Vfs, db: &str) -> Connection {
    Connection::open_with_flags_and_vfs(db, OpenFlags::default(), vfs.name()).unwrap()
}

pub fn stats(vfs: &Vfs, db: &str) -> DbStats {
    vfs.stats(db).unwrap().unwrap()
}

pub fn integrity(conn: &Connection) -> String {
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

pub fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Every row of a query, each column rendered as text, for comparisons.
pub fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => format!("{v:?}"),
                    rusqlite::types::ValueRef::Text(t) => {
                        format!("'{}'", String::from_utf8_lossy(t))
                    }
                    rusqlite::types::ValueRef::Blob(b) => format!("x{}", b.len()),
                })
            })
            .collect::<rusqlite::Result<Vec<_>>>()
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}
