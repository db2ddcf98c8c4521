//! Fixtures shared by the VFS integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::{Connection, OpenFlags};
use shoal_kv::{Kv, KvStore, MemKv, PgConfig, PgKv, SledConfig, SledKv};
use shoal_vfs::{DbStats, Vfs, VfsOptions};

pub use shoal_testkit::pg::PgSchema;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A VFS name no other test in this process uses.
/// A transaction that spills its 5-page cache onto the rollback journal (journal xOpen,
/// xAccess and xDelete): 500 rows of about 400 bytes into table `t`.
pub const SPILLING_INSERT: &str = "PRAGMA cache_size = 5;
     BEGIN;
     WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 500)
     INSERT INTO t SELECT printf('%0400d', i) FROM k;
     COMMIT;";

pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn vfs_over(backend: Arc<dyn KvStore>) -> Vfs {
    vfs_with(backend, VfsOptions::default())
}

/// A VFS over `backend` with `options` (under a name of its own).
pub fn vfs_with(backend: Arc<dyn KvStore>, options: VfsOptions) -> Vfs {
    let kv = Arc::new(Kv::open(backend).unwrap());
    shoal_vfs::register(
        kv,
        VfsOptions {
            name: unique_name("test"),
            ..options
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

/// A VFS over PostgreSQL, in `schema`. Each call opens a new store on the same table, so
/// a VFS sees what an earlier one left there. Drop it before the schema.
pub fn pg_vfs(schema: &PgSchema) -> Vfs {
    vfs_over(Arc::new(
        PgKv::open(&PgConfig::new(schema.url.as_str())).unwrap(),
    ))
}

/// Runs `body` on a fresh VFS over each backend the SQL tests cover: MemKv, then PgKv in
/// a schema of its own (skipped, with a message, when `SHOAL_PG_URL` is unset). Each run
/// is announced first, so a failure's output says which backend it was.
pub fn on_each_backend(test: &str, body: impl Fn(&Vfs)) {
    eprintln!("{test}: on MemKv");
    body(&mem_vfs());
    if let Some(schema) = PgSchema::new(test) {
        eprintln!("{test}: on PgKv, schema {}", schema.name());
        body(&pg_vfs(&schema));
    }
}

/// Opens a new VFS over one store each time it is called.
pub type Reopen<'a> = Box<dyn Fn() -> Vfs + 'a>;

/// The backends whose stores outlive their VFS, named, each with what opens a new VFS
/// over the same store: SledKv in `dir`, and PgKv in `pg` when there is one.
pub fn reopenable_backends<'a>(
    dir: &'a Path,
    pg: Option<&'a PgSchema>,
) -> Vec<(&'static str, Reopen<'a>)> {
    let mut out: Vec<(&'static str, Reopen<'a>)> =
        vec![("SledKv", Box::new(move || sled_vfs(dir)))];
    if let Some(schema) = pg {
        out.push(("PgKv", Box::new(move || pg_vfs(schema))));
    }
    out
}

/// Opens `db` through `vfs` with the default flags (creating it) and, as the facade
/// does, `journal_mode = MEMORY`.
pub fn try_open(vfs: &Vfs, db: &str) -> rusqlite::Result<Connection> {
    let conn = try_open_journaled(vfs, db)?;
    conn.query_row("PRAGMA journal_mode = MEMORY", [], |_| Ok(()))?;
    Ok(conn)
}

/// Opens `db` through `vfs` with SQLite's default journal mode (DELETE: a rollback
/// journal stored in the kv).
pub fn try_open_journaled(vfs: &Vfs, db: &str) -> rusqlite::Result<Connection> {
    Connection::open_with_flags_and_vfs(db, OpenFlags::default(), vfs.name())
}

pub fn open(vfs: &Vfs, db: &str) -> Connection {
    try_open(vfs, db).unwrap()
}

/// The extended result code of an SQLite failure (panics on any other error).
pub fn extended_code(err: &rusqlite::Error) -> i32 {
    match err {
        rusqlite::Error::SqliteFailure(e, _) => e.extended_code,
        other => panic!("not an SQLite failure: {other:?}"),
    }
}

/// The primary result code (the low byte of the extended one).
pub fn primary_code(err: &rusqlite::Error) -> i32 {
    extended_code(err) & 0xff
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

#[allow(unused_imports)]
pub use shoal_testkit::rows::{rows, try_rows};

/// The whole logical content of a database: its schema (without root page numbers,
/// which depend on page allocation, not on content) and every table's rows in rowid
/// order, for comparing two databases exactly.
pub fn dump(conn: &Connection) -> Vec<(String, Vec<Vec<String>>)> {
    let schema = try_rows(
        conn,
        "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name",
    )
    .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = vec![("sqlite_schema".to_owned(), schema)];
    for t in tables {
        let contents = try_rows(conn, &format!("SELECT * FROM \"{t}\" ORDER BY rowid")).unwrap();
        out.push((t, contents));
    }
    out
}

/// Where two [`dump`]s first differ, described briefly (values cut to 80 characters);
/// `None` if they are equal.
pub fn first_difference(
    got: &[(String, Vec<Vec<String>>)],
    want: &[(String, Vec<Vec<String>>)],
) -> Option<String> {
    let cut = |row: Option<&Vec<String>>| -> String {
        match row {
            None => "no row".to_owned(),
            Some(r) => r
                .iter()
                .map(|v| v.chars().take(80).collect::<String>())
                .collect::<Vec<_>>()
                .join(" | "),
        }
    };
    let names =
        |d: &[(String, Vec<Vec<String>>)]| d.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
    if names(got) != names(want) {
        return Some(format!(
            "tables {:?} where {:?} were expected",
            names(got),
            names(want)
        ));
    }
    for ((table, g), (_, w)) in got.iter().zip(want) {
        if g == w {
            continue;
        }
        let at = (0..g.len().max(w.len()))
            .find(|&i| g.get(i) != w.get(i))
            .unwrap_or(0);
        return Some(format!(
            "table {table}: {} rows where {} were expected; first difference at row {at}: \
             got [{}], expected [{}]",
            g.len(),
            w.len(),
            cut(g.get(at)),
            cut(w.get(at))
        ));
    }
    None
}
