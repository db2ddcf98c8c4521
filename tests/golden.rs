//! A store made by an earlier build, checked in under `tests/golden/store-v2/`: today's
//! code must open it and read back exactly what the script below wrote. The store of the
//! format before it (fjall 2's files, `tests/golden/store-v1/`) must be refused with an
//! error that says what made it and what to do. A change to the
//! on-disk format (keys, records, the store layout, fjall's files) fails this test; such a
//! change updates the fixture in the same commit and gives stores of the old format a
//! reader, or a clear "made by an older shoal" error.
//!
//! The fixture is made by the ignored test `regenerate_golden_store`:
//! `cargo test --test golden -- --ignored regenerate_golden_store`. It writes the store
//! with the default configuration (fjall), closes it, copies it here and checks the copy
//! as the test does. The regeneration fails if the fixture grows past 256 KiB.
#![cfg(feature = "kv-vfs")]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use shoal::{Config, Store};
use shoal_testkit::scratch::copy_dir;

/// The one actor of the fixture.
const ACTOR: &str = "golden";

/// What the fixture's actor was made with.
const SCRIPT: &str = "
    CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL, n INTEGER);
    CREATE INDEX notes_n ON notes(n);
    INSERT INTO notes(body, n) VALUES ('first', 3), ('second', 1), ('third', 2);
    INSERT INTO notes(body, n) VALUES ('a longer row, to span more than a few bytes', 5);
    DELETE FROM notes WHERE id = 2;
    INSERT INTO notes(body, n) VALUES ('after a delete', NULL);
";

/// The rows the script leaves, in id order.
const ROWS: [(i64, &str, Option<i64>); 4] = [
    (1, "first", Some(3)),
    (3, "third", Some(2)),
    (4, "a longer row, to span more than a few bytes", Some(5)),
    (5, "after a delete", None),
];

/// What every failure of the check says.
const FORMAT_CHANGED: &str = "the store in tests/golden/store-v2 no longer reads back as \
    it was written. If the on-disk format changed on purpose, update the fixture in the \
    same commit (`cargo test --test golden -- --ignored regenerate_golden_store`) and give \
    stores of the old format a reader or a clear \"made by an older shoal\" error";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/store-v2")
}

/// The store of fjall 2's format, made by shoal 0.1.
fn fjall2_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/store-v1")
}

/// Total bytes of the files under `dir`.
fn tree_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                tree_size(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

fn rows(store: &Store, sql: &str) -> Vec<(i64, String, Option<i64>)> {
    let read = store.with_actor(ACTOR, |c| -> shoal::Result<_> {
        let mut stmt = c.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    });
    read.unwrap_or_else(|e| panic!("{FORMAT_CHANGED}: {sql}: {e}"))
}

/// Opens a copy of the store in `fixture` and checks that it holds what [`SCRIPT`] wrote.
fn check(fixture: &Path) {
    // Opening writes (fjall replays and reopens its journal): open a copy.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture, dir.path()).unwrap();
    let store = Store::open(dir.path(), Config::default())
        .unwrap_or_else(|e| panic!("{FORMAT_CHANGED}: the open failed: {e}"));
    let actors = store
        .list_actors()
        .unwrap_or_else(|e| panic!("{FORMAT_CHANGED}: listing actors: {e}"));
    assert_eq!(actors, [ACTOR], "{FORMAT_CHANGED}: actors");
    let want: Vec<(i64, String, Option<i64>)> = ROWS
        .iter()
        .map(|&(id, body, n)| (id, body.to_owned(), n))
        .collect();
    assert_eq!(
        rows(&store, "SELECT id, body, n FROM notes ORDER BY id"),
        want,
        "{FORMAT_CHANGED}: rows"
    );
    // Through the index, so its pages are read too.
    let mut by_n: Vec<_> = want.iter().filter(|r| r.2.is_some()).cloned().collect();
    by_n.sort_by_key(|r| r.2);
    assert_eq!(
        rows(
            &store,
            "SELECT id, body, n FROM notes INDEXED BY notes_n WHERE n IS NOT NULL ORDER BY n"
        ),
        by_n,
        "{FORMAT_CHANGED}: rows by the index"
    );
    let check: String = store
        .with_actor(ACTOR, |c| -> shoal::Result<_> {
            Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
        })
        .unwrap_or_else(|e| panic!("{FORMAT_CHANGED}: integrity_check: {e}"));
    assert_eq!(check, "ok", "{FORMAT_CHANGED}: integrity_check");
    assert!(
        store.check_actor(ACTOR).is_ok_and(|report| report.is_ok()),
        "{FORMAT_CHANGED}: the store's own check"
    );
}

#[test]
fn todays_code_reads_the_checked_in_store() {
    check(&fixture());
}

/// A store of the format before (fjall 2's files) is refused, saying so and what to do,
/// and is left as it was.
#[test]
fn a_store_of_the_fjall_2_format_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fjall2_fixture(), dir.path()).unwrap();
    let before = tree_size(dir.path());
    let err = Store::open(dir.path(), Config::default()).unwrap_err();
    let text = err.to_string();
    for part in ["fjall 2", "shoal 0.1", "export", "version 2", "version 3"] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert_eq!(
        tree_size(dir.path()),
        before,
        "the refused store was changed"
    );
}

/// Writes `tests/golden/store-v2/` anew from [`SCRIPT`] (see the module docs).
#[test]
#[ignore = "regenerates the checked-in fixture"]
fn regenerate_golden_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Config::default()).unwrap();
        store
            .with_actor(ACTOR, |c| -> shoal::Result<_> {
                Ok(c.execute_batch(SCRIPT)?)
            })
            .unwrap();
    }
    let target = fixture();
    match std::fs::remove_dir_all(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("removing {}: {e}", target.display()),
    }
    copy_dir(dir.path(), &target).unwrap();
    let size = tree_size(&target);
    assert!(size < 256 << 10, "the fixture takes {size} bytes");
    check(&target);
}
