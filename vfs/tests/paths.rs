//! One database, one name: through the VFS (as a loadable extension would be used), a
//! database opened as `test.db`, `./test.db` or `sub/../test.db` is the same database, and
//! a relative path is joined to the working directory as SQLite's unix VFS does
//! (`unixFullPathname`). An absolute path keeps its absolute name, so its name does not
//! depend on the working directory. Names without a `/`, which every actor name of the
//! facade is, stay exactly as given in the catalog.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::*;
use rusqlite::ffi;
use shoal_vfs::Vfs;

fn catalog(vfs: &Vfs) -> Vec<String> {
    shoal_testkit::catalog::names(vfs.kv())
}

fn cwd() -> String {
    std::env::current_dir()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn one_database_has_one_name_whatever_path_opens_it() {
    let vfs = mem_vfs();
    let first = open(&vfs, "test.db");
    first
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (0);")
        .unwrap();
    drop(first);
    let absolute = format!("{}/test.db", cwd());
    // Out of the working directory by `..` and back in by its own name.
    let climbed = format!(
        "../{}/test.db",
        std::path::Path::new(&cwd())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    );
    let spellings = [
        "./test.db",
        "sub/../test.db",
        ".//test.db",
        climbed.as_str(),
    ];
    for (i, name) in spellings.into_iter().enumerate() {
        let conn = open(&vfs, name);
        assert_eq!(conn.path(), Some("test.db"), "{name}");
        assert_eq!(count(&conn, "t"), i as i64 + 1, "{name}");
        conn.execute("INSERT INTO t VALUES (?1)", [i as i64 + 1])
            .unwrap();
    }
    // A transaction with a stored rollback journal (journal_mode=DELETE), through a
    // path: the journal is the one database's journal.
    let conn = try_open_journaled(&vfs, "./test.db").unwrap();
    let before = stats(&vfs, "test.db").journal_commits;
    conn.execute_batch(SPILLING_INSERT).unwrap();
    assert_eq!(stats(&vfs, "./test.db").journal_commits, before + 1);
    assert!(vfs.is_open("sub/../test.db").unwrap());
    drop(conn);
    assert_eq!(catalog(&vfs), ["test.db"]);

    // The absolute path of a file in the working directory is a database of its own,
    // named by that path: the name another process with another working directory gives
    // the same path.
    let conn = open(&vfs, &absolute);
    assert_eq!(conn.path(), Some(absolute.as_str()));
    conn.execute_batch("CREATE TABLE a(x)").unwrap();
    drop(conn);
    let mut names = catalog(&vfs);
    names.sort();
    assert_eq!(names, [absolute.clone(), "test.db".to_owned()]);

    // A file outside the working directory keeps its absolute path as its name.
    let nested = format!("{}/sub/x.db", cwd());
    open(&vfs, "sub/x.db")
        .execute_batch("CREATE TABLE n(x)")
        .unwrap();
    open(&vfs, &nested)
        .execute_batch("INSERT INTO n VALUES (1)")
        .unwrap();
    assert_eq!(count(&open(&vfs, "./sub/./x.db"), "n"), 1);
    let mut names = catalog(&vfs);
    names.sort();
    let mut want = [absolute, nested, "test.db".to_owned()];
    want.sort();
    assert_eq!(names, want);

    // The root directory is not a database file (unix refuses it too).
    let err = try_open(&vfs, "/..").unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_CANTOPEN, "{err}");
}

#[test]
fn names_without_a_slash_are_catalog_names_exactly_as_given() {
    let vfs = mem_vfs();
    let names = [
        "task-42",
        "user@team:7",
        "a.b_c+d=e",
        ".hidden",
        "..",
        "...",
    ];
    for name in names {
        let conn = open(&vfs, name);
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        assert_eq!(conn.path(), Some(name));
    }
    let mut want = names.map(str::to_owned).to_vec();
    want.sort();
    let mut got = catalog(&vfs);
    got.sort();
    assert_eq!(got, want);
}
