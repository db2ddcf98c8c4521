//! The facade through its public API: actors on both backings, the awake set, the
//! isolation of actor connections, export/import/check, the store lock, what an open
//! says about a store it cannot use, read-only opens, and a full disk.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

#[path = "../kv/tests/support/tmpfs.rs"]
mod tmpfs;

use std::path::Path;

use shoal::{Backing, Config, Error, KvEngine, Store, StoreLayout};
use shoal_testkit::rows::render;

fn backings() -> Vec<Backing> {
    Backing::ALL.to_vec()
}

fn config(backing: Backing) -> Config {
    Config::default()
        .with_backing(backing)
        .with_memory_budget(64 << 20)
}

fn count(store: &Store, actor: &str) -> i64 {
    store
        .with_actor(actor, |c| -> shoal::Result<_> {
            Ok(c.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))?)
        })
        .unwrap()
}

#[test]
fn actors_persist_across_reopening_on_every_backing() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), config(backing)).unwrap();
            for name in ["a", "b"] {
                store
                    .with_actor(name, |c| -> shoal::Result<_> {
                        c.execute_batch("CREATE TABLE notes(body TEXT)")?;
                        Ok(c.execute("INSERT INTO notes VALUES (?1)", [name])?)
                    })
                    .unwrap();
            }
            let actor = store.actor("a").unwrap();
            actor
                .execute("INSERT INTO notes VALUES ('again')", [])
                .unwrap();
        }
        let store = Store::open(dir.path(), config(backing)).unwrap();
        assert_eq!(store.list_actors().unwrap(), ["a", "b"], "{backing:?}");
        assert_eq!(count(&store, "a"), 2, "{backing:?}");
        assert_eq!(count(&store, "b"), 1, "{backing:?}");
    }
}

#[test]
fn idle_actors_past_the_bound_are_put_to_sleep() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        config(Backing::default()).with_max_awake(Some(3)),
    )
    .unwrap();
    for i in 0..10 {
        store
            .with_actor(&format!("actor-{i}"), |c| -> shoal::Result<_> {
                Ok(c.execute_batch("CREATE TABLE t(x)")?)
            })
            .unwrap();
        assert!(store.awake() <= 3, "awake {} after {i}", store.awake());
    }
    assert_eq!(store.awake(), 3);
    // A put-to-sleep actor wakes on demand with its data.
    store
        .with_actor("actor-0", |c| {
            c.execute("INSERT INTO t VALUES (1)", [])
                .map_err(shoal::Error::from)
        })
        .unwrap();
    assert_eq!(store.awake(), 3);
    store.sleep_all();
    assert_eq!(store.awake(), 0);
}

#[test]
fn an_unfinished_transaction_is_rolled_back_when_the_actor_goes_idle() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(Backing::default())).unwrap();
    store
        .with_actor("t", |c| {
            c.execute_batch("CREATE TABLE notes(body)")
                .map_err(shoal::Error::from)
        })
        .unwrap();
    {
        let actor = store.actor("t").unwrap();
        actor
            .execute_batch("BEGIN; INSERT INTO notes VALUES ('half');")
            .unwrap();
    }
    assert_eq!(count(&store, "t"), 0);
}

#[test]
fn an_actor_connection_cannot_reach_another_actor() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        store
            .with_actor("victim", |c| -> shoal::Result<_> {
                Ok(c.execute_batch("CREATE TABLE secret(x); INSERT INTO secret VALUES (42);")?)
            })
            .unwrap();
        let attacker = store.actor("attacker").unwrap();
        for sql in [
            "ATTACH 'victim' AS v",
            "ATTACH 'victim.db' AS v",
            "ATTACH '../actors/victim.db' AS v",
            "VACUUM INTO 'copy'",
        ] {
            let err = attacker.execute_batch(sql).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("not authorized") || msg.contains("authorization denied"),
                "{backing:?} {sql}: {msg}"
            );
        }
        // VACUUM itself attaches a temporary database and must keep working.
        attacker
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1); VACUUM;")
            .unwrap();
        drop(attacker);
        assert_eq!(
            store.list_actors().unwrap(),
            ["attacker", "victim"],
            "{backing:?}"
        );
    }
}

#[test]
fn hostile_names_are_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(Backing::default())).unwrap();
    for bad in [
        "",
        "../x",
        "/etc/passwd",
        "a\0b",
        &"x".repeat(201),
        "x-journal",
    ] {
        assert!(
            matches!(store.actor(bad), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(store.open_actor(bad), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
        assert!(
            matches!(store.delete_actor(bad), Err(Error::InvalidName { .. })),
            "{bad:?}"
        );
    }
    assert!(store.list_actors().unwrap().is_empty());
}

#[test]
fn export_writes_a_plain_sqlite_file_and_import_reads_one_back() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        store
            .with_actor("src", |c| -> shoal::Result<_> {
                Ok(c.execute_batch(
                    "CREATE TABLE notes(body TEXT);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 500)
                     INSERT INTO notes SELECT 'note ' || i FROM n;",
                )?)
            })
            .unwrap();
        let file = out.path().join("src.db");
        store.export_actor("src", &file).unwrap();
        // A standard SQLite file, read with SQLite's own VFS.
        let plain = rusqlite::Connection::open(&file).unwrap();
        let n: i64 = plain
            .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
        drop(plain);
        assert!(matches!(
            store.export_actor("src", &file),
            Err(Error::FileExists { .. })
        ));
        assert!(matches!(
            store.export_actor("nobody", out.path().join("x.db")),
            Err(Error::NoSuchActor(_))
        ));

        store.import_actor("copy", &file).unwrap();
        assert_eq!(count(&store, "copy"), 500, "{backing:?}");
        assert!(matches!(
            store.import_actor("copy", &file),
            Err(Error::ActorExists(_))
        ));
        assert!(store.check_actor("copy").unwrap().is_ok());
    }
}

#[test]
fn import_refuses_what_is_not_a_sound_sqlite_file_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(Backing::default())).unwrap();
    let text = files.path().join("notes.txt");
    std::fs::write(&text, "just some text, long enough to hold a header\n").unwrap();
    let short = files.path().join("short.db");
    std::fs::write(&short, "SQLite").unwrap();
    let damaged = files.path().join("damaged.db");
    {
        let c = rusqlite::Connection::open(&damaged).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(5000));")
            .unwrap();
    }
    let mut bytes = std::fs::read(&damaged).unwrap();
    // Page 2's b-tree header.
    for b in bytes.iter_mut().skip(4096).take(64) {
        *b = 0xff;
    }
    std::fs::write(&damaged, bytes).unwrap();
    for (path, what) in [
        (&text, "header"),
        (&short, "shorter"),
        (&damaged, "quick_check failed"),
    ] {
        let err = store.import_actor("imported", path).unwrap_err();
        assert!(
            matches!(err, Error::NotSqlite { .. }),
            "{}: {err}",
            path.display()
        );
        assert!(err.to_string().contains(what), "{err}");
    }
    let missing = store
        .import_actor("imported", files.path().join("missing.db"))
        .unwrap_err();
    assert!(matches!(missing, Error::Io { .. }), "{missing}");
    assert!(
        store.list_actors().unwrap().is_empty(),
        "nothing is left behind"
    );
}

#[test]
fn delete_is_refused_while_in_use_and_removes_everything_after() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        store
            .with_actor("gone", |c| {
                c.execute_batch("CREATE TABLE t(x)")
                    .map_err(shoal::Error::from)
            })
            .unwrap();
        {
            let _held = store.actor("gone").unwrap();
            if backing != Backing::Files && backing != Backing::FilesTuned {
                assert!(
                    matches!(store.delete_actor("gone"), Err(Error::ActorInUse(_))),
                    "{backing:?}"
                );
            }
        }
        store.delete_actor("gone").unwrap();
        assert!(!store.actor_exists("gone").unwrap());
        assert!(matches!(
            store.delete_actor("gone"),
            Err(Error::NoSuchActor(_))
        ));
        assert!(matches!(
            store.actor_stats("gone"),
            Err(Error::NoSuchActor(_))
        ));
    }
}

/// A connection the caller kept after dropping its `Store` keeps working and keeps the
/// store's backing open; reopening the directory in this process says so (instead of
/// blaming another process), and succeeds once the connection is closed.
#[cfg(feature = "kv-vfs")]
#[test]
fn a_connection_that_outlives_its_store_is_named_when_the_store_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = Store::open(&path, config(Backing::Kv)).unwrap();
    let kept = store.open_actor("kept").unwrap();
    kept.execute_batch("CREATE TABLE notes(body); INSERT INTO notes VALUES ('one')")
        .unwrap();
    drop(store);
    kept.execute("INSERT INTO notes VALUES ('two')", [])
        .unwrap();
    let err = Store::open(&path, config(Backing::Kv)).unwrap_err();
    assert!(
        matches!(err, Error::StoreInUse { databases: 1, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("still in use in this process: 1 database connection(s)"),
        "{msg}"
    );
    drop(kept);
    let store = Store::open(&path, config(Backing::Kv)).unwrap();
    assert_eq!(count(&store, "kept"), 2);
}

#[test]
fn a_store_is_open_in_one_place_at_a_time_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = Store::open(&path, config(Backing::default())).unwrap();
    // A second open in this process is told apart from another process's (the CLI
    // test checks that one): an flock refuses both alike.
    let err = Store::open(&path, config(Backing::default())).unwrap_err();
    assert!(matches!(err, Error::StoreOpenHere { .. }), "{err}");
    assert!(
        err.to_string().contains("already open in this process"),
        "{err}"
    );
    drop(store);
    Store::open(&path, config(Backing::default())).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the store directory is owner-only");
    }
    let missing =
        Store::open_existing(dir.path().join("nothing"), config(Backing::default())).unwrap_err();
    assert!(matches!(missing, Error::NoStore { .. }));
    assert!(
        !Path::new(&dir.path().join("nothing")).exists(),
        "open_existing creates nothing"
    );
}

#[cfg(feature = "kv-vfs")]
#[test]
fn check_finds_a_damaged_page_in_the_store() {
    use shoal_kv::raw::{self, Batch, keys};
    use shoal_kv::{ChunkNo, FileKind};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(Backing::Kv)).unwrap();
    store
        .with_actor("x", |c| -> shoal::Result<_> {
            Ok(c.execute_batch("CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(9000));")?)
        })
        .unwrap();
    store.sleep_all();
    let report = store.check_actor("x").unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.audit.as_ref().unwrap().chunks >= 3);
    let kv = store.vfs().unwrap().kv();
    let id = kv.lookup("x").unwrap().unwrap().id;
    let mut b = Batch::new();
    b.put(
        keys::chunk_key(id, FileKind::Main, ChunkNo(2)).to_vec(),
        vec![0u8; 4104],
    );
    raw::of(kv).apply(b).unwrap();
    let err = store.check_actor("x").map(|r| r.is_ok());
    // Either SQLite's integrity check trips over the page (IOERR_DATA) or the audit finds it.
    assert!(!matches!(err, Ok(true)), "{err:?}");
    if let Ok(false) = err {
        let report = store.check_actor("x").unwrap();
        assert!(
            report
                .audit
                .unwrap()
                .problems
                .iter()
                .any(|p| p.contains("checksum"))
        );
    }
}

/// `Config::durability` reaches every actor connection: on the kv backing as the VFS's
/// own default (no per-connection pragma needed), on files as `synchronous`.
#[test]
fn the_configured_durability_is_what_actor_connections_use() {
    for durability in [shoal::Durability::Full, shoal::Durability::Relaxed] {
        for backing in backings() {
            let dir = tempfile::tempdir().unwrap();
            let store =
                Store::open(dir.path(), config(backing).with_durability(durability)).unwrap();
            let (pragma, want) = match (backing.is_kv(), durability) {
                (true, shoal::Durability::Full) => ("PRAGMA shoal_durability", "'full'"),
                (true, shoal::Durability::Relaxed) => ("PRAGMA shoal_durability", "'relaxed'"),
                (false, shoal::Durability::Full) => ("PRAGMA synchronous", "2"),
                (false, shoal::Durability::Relaxed) => ("PRAGMA synchronous", "1"),
            };
            let got: String = store
                .with_actor("a", |c| -> shoal::Result<_> {
                    Ok(c.query_row(pragma, [], |r| Ok(render(r.get_ref(0)?)))?)
                })
                .unwrap();
            assert_eq!(got, want, "{backing:?} {durability:?}");
        }
    }
}

/// Names SQLite would read as something else: `:memory:` (a private in-memory database)
/// and `file:` URIs (the bundled SQLite is built with SQLITE_USE_URI, so `file:foo` is
/// `foo`). Every entry point refuses them, on every backing, and nothing is created.
#[test]
fn names_sqlite_would_read_as_uris_or_memory_are_refused() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        store
            .with_actor("foo", |c| -> shoal::Result<_> {
                Ok(c.execute_batch(
                    "CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('mine');",
                )?)
            })
            .unwrap();
        let evil = files.path().join("evil.db");
        rusqlite::Connection::open(&evil)
            .unwrap()
            .execute_batch("CREATE TABLE notes(body TEXT);")
            .unwrap();
        for name in [":memory:", "file::memory:", "file:foo", "FILE:foo", ":foo"] {
            let refused = |r: Result<(), Error>| {
                assert!(
                    matches!(r, Err(Error::InvalidName { .. })),
                    "{backing:?} {name}: {r:?}"
                );
            };
            refused(store.actor(name).map(drop));
            refused(store.open_actor(name).map(drop));
            refused(store.with_actor(name, |c| {
                c.execute_batch("CREATE TABLE t(x)")
                    .map_err(shoal::Error::from)
            }));
            refused(store.actor_exists(name).map(drop));
            refused(store.import_actor(name, &evil));
            refused(store.export_actor(name, files.path().join("x.db")));
        }
        assert_eq!(store.list_actors().unwrap(), ["foo"], "{backing:?}");
        store.sleep_all();
        assert_eq!(count(&store, "foo"), 1, "{backing:?}: foo keeps its data");
    }
}

/// Every entry of `dir` with its bytes, to see that nothing was written there.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    all.sort();
    all
}

/// A WAL-mode database of 300 rows; with `frames_in_wal` the last 100 rows are only in
/// its `-wal` (SQLite is told not to checkpoint on close).
fn wal_source(path: &Path, frames_in_wal: bool) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE notes(body TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200)
         INSERT INTO notes SELECT 'note ' || i FROM n;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    if frames_in_wal {
        c.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .unwrap();
    }
    c.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 100)
         INSERT INTO notes SELECT 'late ' || i FROM n;",
    )
    .unwrap();
    drop(c);
    let header = std::fs::read(path).unwrap();
    assert_eq!(header[18..20], [2, 2], "the source is in WAL mode");
    let wal = std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
    assert_eq!(wal > 0, frames_in_wal);
}

/// A WAL-mode file imports as a rollback-journal actor that opens again after sleeping,
/// with the commits still in its -wal; no import (of WAL, rollback or refused files)
/// writes anything next to its source.
#[test]
fn import_takes_wal_files_whole_and_never_writes_beside_the_source() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        for (i, frames_in_wal) in [false, true].into_iter().enumerate() {
            let src = tempfile::tempdir().unwrap();
            let file = src.path().join("wal.db");
            wal_source(&file, frames_in_wal);
            let before = snapshot(src.path());
            let name = format!("wal-{i}");
            store.import_actor(&name, &file).unwrap();
            assert_eq!(
                snapshot(src.path()),
                before,
                "{backing:?}: the source's directory changed"
            );
            store.sleep_all();
            assert_eq!(
                count(&store, &name),
                300,
                "{backing:?} frames in wal: {frames_in_wal}"
            );
            assert!(store.check_actor(&name).unwrap().is_ok());
            let out = tempfile::tempdir().unwrap();
            let exported = out.path().join("x.db");
            store.export_actor(&name, &exported).unwrap();
            assert_eq!(
                std::fs::read(&exported).unwrap()[18..20],
                [1, 1],
                "{backing:?}: the actor is a rollback-journal database"
            );
        }
        // A rollback-journal file, and a refused one.
        let src = tempfile::tempdir().unwrap();
        let plain = src.path().join("plain.db");
        rusqlite::Connection::open(&plain)
            .unwrap()
            .execute_batch("CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('x');")
            .unwrap();
        let junk = src.path().join("junk.db");
        std::fs::write(&junk, b"SQLite format 3\0 but nothing else of a database").unwrap();
        let before = snapshot(src.path());
        store.import_actor("plain", &plain).unwrap();
        assert!(store.import_actor("junk", &junk).is_err());
        assert_eq!(snapshot(src.path()), before, "{backing:?}");
        assert_eq!(count(&store, "plain"), 1);
        assert!(!store.actor_exists("junk").unwrap());
    }
}

/// A source whose last write was interrupted (a hot journal beside it) is refused with
/// a message that says what to do, and neither it nor its journal is touched.
#[test]
fn import_refuses_a_file_with_a_hot_journal() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("hot.db");
        rusqlite::Connection::open(&file)
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        // A rollback journal's magic number, as SQLite leaves it when a write is cut off.
        let mut journal = vec![0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
        journal.resize(512, 0);
        std::fs::write(src.path().join("hot.db-journal"), &journal).unwrap();
        let before = snapshot(src.path());
        let err = store.import_actor("hot", &file).unwrap_err();
        assert!(
            matches!(err, Error::HotJournal { .. }),
            "{backing:?}: {err}"
        );
        assert!(
            err.to_string().contains("open it once with sqlite3"),
            "{err}"
        );
        assert_eq!(snapshot(src.path()), before, "{backing:?}");
        assert!(store.list_actors().unwrap().is_empty());
        // A zeroed (persisted, not hot) journal is no obstacle.
        std::fs::write(src.path().join("hot.db-journal"), vec![0u8; 512]).unwrap();
        store.import_actor("hot", &file).unwrap();
    }
}

/// Anything but a regular file is refused before it is opened: reading a FIFO would
/// wait forever for a writer.
#[cfg(unix)]
#[test]
fn import_refuses_what_is_not_a_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let fifo = src.path().join("fifo.db");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let store_dir = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let fifo_path = fifo.clone();
    std::thread::spawn(move || {
        let store = Store::open(&store_dir, config(Backing::default())).unwrap();
        let fifo = store
            .import_actor("fifo", &fifo_path)
            .map_err(|e| e.to_string());
        let directory = store
            .import_actor("dir", fifo_path.parent().unwrap())
            .map_err(|e| e.to_string());
        let _ = tx.send((fifo, directory));
    });
    // Not a timing assertion: a hang is the failure, and this turns it into a message.
    let (fifo_result, dir_result) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("import of a FIFO hangs");
    let fifo_err = fifo_result.unwrap_err();
    assert!(fifo_err.contains("not a regular file"), "{fifo_err}");
    let dir_err = dir_result.unwrap_err();
    assert!(dir_err.contains("directory"), "{dir_err}");
}

/// Export refuses a path that exists as any entry (a dangling symlink included, which a
/// plain open would follow) and leaves only the finished file in the directory.
#[cfg(unix)]
#[test]
fn export_never_follows_a_symlink_and_leaves_only_the_file() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        store
            .with_actor("a", |c| {
                c.execute_batch("CREATE TABLE notes(body TEXT);")
                    .map_err(shoal::Error::from)
            })
            .unwrap();
        let link = out.path().join("link.db");
        let aim = out.path().join("elsewhere.db");
        std::os::unix::fs::symlink(&aim, &link).unwrap();
        let err = store.export_actor("a", &link).unwrap_err();
        assert!(
            matches!(err, Error::FileExists { .. }),
            "{backing:?}: {err}"
        );
        assert!(!aim.exists(), "{backing:?}: the symlink was followed");
        std::fs::remove_file(&link).unwrap();
        store.export_actor("a", out.path().join("a.db")).unwrap();
        let names: Vec<String> = snapshot(out.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a.db"], "{backing:?}");
    }
}

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop. `None` where mounting is
/// not possible outside CI (in CI it must work, so the test fails instead).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Tmpfs { dir });
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs"
        );
        println!("skipped: cannot mount a tmpfs here (needs root)");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// An export onto a full disk fails and leaves nothing: no partial file, no journal.
#[test]
fn an_export_onto_a_full_disk_leaves_nothing_behind() {
    // Sizes at which a plain backup left `out.db-journal` behind.
    let Some(disk) = Tmpfs::mount("1m") else {
        return;
    };
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        store
            .with_actor("big", |c| -> shoal::Result<_> {
                Ok(c.execute_batch(
                    "CREATE TABLE t(v);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 400)
                     INSERT INTO t SELECT randomblob(8000) FROM n;",
                )?)
            })
            .unwrap();
        let err = store
            .export_actor("big", disk.path().join("out.db"))
            .unwrap_err();
        assert!(
            snapshot(disk.path()).is_empty(),
            "{backing:?}: {err} left {:?}",
            snapshot(disk.path())
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        );
    }
}

/// Export and check racing a delete never bring the actor back: only an explicit create
/// creates one.
#[test]
fn export_and_check_racing_delete_never_recreate_the_actor() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        for i in 0..60 {
            store
                .with_actor("victim", |c| -> shoal::Result<_> {
                    Ok(c.execute_batch("CREATE TABLE IF NOT EXISTS t(x)")?)
                })
                .unwrap();
            store.sleep_all();
            let file = out.path().join(format!("{i}.db"));
            std::thread::scope(|s| {
                s.spawn(|| {
                    let _ = store.check_actor("victim");
                    let _ = store.export_actor("victim", &file);
                });
                // Deleting may meet the check's connection (in use on the kv backing).
                while let Err(Error::ActorInUse(_)) = store.delete_actor("victim") {
                    std::thread::yield_now();
                }
            });
            store.sleep_all();
            assert!(
                !store.actor_exists("victim").unwrap(),
                "{backing:?} round {i}: the deleted actor came back"
            );
        }
    }
}

/// Whatever a checkout changes through its `&Connection`, the next one starts from the
/// actor's defaults: pragmas, durability, the busy timeout, db_config flags, TEMP
/// objects; and the authorizer still denies ATTACH.
#[test]
fn a_checkout_starts_from_the_actor_defaults() {
    fn value(c: &rusqlite::Connection, sql: &str) -> String {
        c.query_row(sql, [], |r| Ok(render(r.get_ref(0)?))).unwrap()
    }
    let probes = [
        ("PRAGMA foreign_keys", "PRAGMA foreign_keys = OFF"),
        ("PRAGMA cache_size", "PRAGMA cache_size = 7"),
        ("PRAGMA mmap_size", "PRAGMA mmap_size = 4096"),
        ("PRAGMA query_only", "PRAGMA query_only = ON"),
        (
            "PRAGMA recursive_triggers",
            "PRAGMA recursive_triggers = ON",
        ),
        ("PRAGMA temp_store", "PRAGMA temp_store = MEMORY"),
        ("PRAGMA locking_mode", "PRAGMA locking_mode = EXCLUSIVE"),
        ("PRAGMA journal_mode", "PRAGMA journal_mode = TRUNCATE"),
        ("PRAGMA busy_timeout", "PRAGMA busy_timeout = 1"),
    ];
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(backing)).unwrap();
        store
            .with_actor("a", |c| {
                c.execute_batch("CREATE TABLE t(x)")
                    .map_err(shoal::Error::from)
            })
            .unwrap();
        let durability = if backing.is_kv() {
            (
                "PRAGMA shoal_durability",
                "PRAGMA shoal_durability = relaxed",
            )
        } else {
            ("PRAGMA synchronous", "PRAGMA synchronous = OFF")
        };
        let all: Vec<_> = probes.iter().copied().chain([durability]).collect();
        let defaults: Vec<String> = {
            let actor = store.actor("a").unwrap();
            all.iter().map(|(read, _)| value(&actor, read)).collect()
        };
        let defensive = rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE;
        let defensive_default = store.actor("a").unwrap().db_config(defensive).unwrap();
        for (read, set) in &all {
            {
                let actor = store.actor("a").unwrap();
                // Through the statement cache too, which SQLite does not re-prepare.
                actor.prepare_cached(set).unwrap().raw_execute().ok();
                assert_ne!(
                    value(&actor, read),
                    defaults[all.iter().position(|(r, _)| r == read).unwrap()],
                    "{backing:?}: {set} changed nothing to test"
                );
                actor.busy_timeout(std::time::Duration::ZERO).unwrap();
                actor.set_db_config(defensive, !defensive_default).unwrap();
            }
            let actor = store.actor("a").unwrap();
            let now: Vec<String> = all.iter().map(|(read, _)| value(&actor, read)).collect();
            assert_eq!(
                now, defaults,
                "{backing:?}: {set} leaked into the next checkout"
            );
            assert_eq!(actor.db_config(defensive).unwrap(), defensive_default);
        }
        // An exclusive lock taken in locking_mode EXCLUSIVE is not kept while idle.
        store
            .with_actor("a", |c| -> shoal::Result<_> {
                Ok(c.execute_batch("PRAGMA locking_mode = EXCLUSIVE; INSERT INTO t VALUES (1);")?)
            })
            .unwrap();
        let other = store.open_actor("a").unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        other
            .execute("INSERT INTO t VALUES (2)", [])
            .unwrap_or_else(|e| panic!("{backing:?}: the idle actor kept its lock: {e}"));
        drop(other);
        // Settings the store cannot reset: the connection is replaced.
        store
            .with_actor("a", |c| -> shoal::Result<_> {
                Ok(c.execute_batch(
                    "PRAGMA case_sensitive_like = ON;
                     CREATE TEMP TABLE scratch(x);
                     CREATE TEMP TRIGGER spy AFTER INSERT ON main.t BEGIN
                       INSERT INTO scratch VALUES (new.x);
                     END;",
                )?)
            })
            .unwrap();
        store
            .with_actor("a", |c| -> shoal::Result<_> {
                c.execute("INSERT INTO t VALUES ('A')", [])?;
                let like: i64 = c.query_row("SELECT 'a' LIKE 'A'", [], |r| r.get(0))?;
                assert_eq!(like, 1, "{backing:?}: case_sensitive_like leaked");
                let temp: i64 =
                    c.query_row("SELECT count(*) FROM temp.sqlite_master", [], |r| r.get(0))?;
                assert_eq!(temp, 0, "{backing:?}: TEMP objects leaked");
                Ok(())
            })
            .unwrap();
        let actor = store.actor("a").unwrap();
        let err = actor.execute_batch("ATTACH 'other' AS o").unwrap_err();
        assert!(
            err.to_string().contains("not authorized"),
            "{backing:?}: {err}"
        );
    }
}

/// The file backings hand SQLite a path, and a relative store directory named like a URI
/// (`file:data`) made every actor path one (`file:data/actors/a.db` is `data/actors/a.db`
/// to SQLite). Run in a child process, which starts in a temp dir of its own.
#[test]
fn a_relative_store_dir_that_looks_like_a_uri_is_a_path() {
    if let Ok(backing) = std::env::var("SHOAL_URI_DIR_CHILD") {
        let backing = backing.parse::<Backing>().unwrap();
        let store = Store::open("file:data", config(backing)).unwrap();
        store
            .with_actor("a", |c| -> shoal::Result<_> {
                Ok(c.execute_batch(
                    "CREATE TABLE notes(body TEXT); INSERT INTO notes VALUES ('x');",
                )?)
            })
            .unwrap();
        let out = tempfile::tempdir().unwrap();
        store.export_actor("a", out.path().join("a.db")).unwrap();
        store.import_actor("b", out.path().join("a.db")).unwrap();
        store.sleep_all();
        assert_eq!(count(&store, "b"), 1);
        assert!(Path::new("file:data/actors/a.db").is_file(), "{backing:?}");
        assert!(
            !Path::new("data").exists(),
            "{backing:?}: SQLite read a URI"
        );
        return;
    }
    for backing in [Backing::Files, Backing::FilesTuned] {
        let cwd = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_relative_store_dir_that_looks_like_a_uri_is_a_path",
            ])
            .env("SHOAL_URI_DIR_CHILD", backing.as_str())
            .current_dir(cwd.path())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "{backing:?}: the child failed");
    }
}

/// Runs the test named `name` alone in a child process (this test binary, filtered to it)
/// and passes if it passes there: RSS is a property of a process, and the other tests of
/// this binary run beside each other in threads of this one.
#[cfg(feature = "kv-vfs")]
fn in_own_process(name: &str) -> bool {
    const CHILD: &str = "SHOAL_TEST_OWN_PROCESS";
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{name} failed in its own process:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// The budget bounds temp tables: they live in memory (the VFS keeps temp files in the
/// process), so a 300 MB `CREATE TEMP TABLE` under a 32 MiB budget must fail with
/// SQLITE_FULL naming the limit (an eighth of the budget) instead of growing the process
/// by 300 MB, while a temp table within the limit works. Measured as the kernel counts
/// it: the peak RSS of a process that does nothing else.
#[cfg(feature = "kv-vfs")]
#[test]
fn temp_tables_stay_within_the_memory_budget() {
    if in_own_process("temp_tables_stay_within_the_memory_budget") {
        return;
    }
    let budget: u64 = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(Backing::Kv).with_memory_budget(budget)).unwrap();
    let before_kb = shoal::memory::rss_kb().unwrap();
    // One checkout: temp tables are their connection's, and a checkout that made one
    // gets a fresh connection next time.
    let err = store
        .with_actor("a", |c| -> shoal::Result<_> {
            c.execute_batch(
                "CREATE TEMP TABLE small AS
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000)
                 SELECT i, randomblob(1000) AS b FROM n;",
            )?;
            let n: i64 = c.query_row("SELECT count(*) FROM small", [], |r| r.get(0))?;
            assert_eq!(n, 2000, "a temp table within the limit works");
            Ok(c.execute_batch(
                "CREATE TEMP TABLE big AS
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300000)
                 SELECT i, randomblob(1000) AS b FROM n;",
            )?)
        })
        .unwrap_err();
    let peak_kb = shoal::memory::peak_rss_kb().unwrap();
    let Error::Sqlite(rusqlite::Error::SqliteFailure(code, Some(message))) = &err else {
        panic!("not a SQLite failure with a message: {err:?}");
    };
    assert_eq!(code.code, rusqlite::ErrorCode::DiskFull, "{err}");
    let limit = budget / 8;
    assert!(
        message.contains(&format!("{limit} bytes")) && message.contains("temp"),
        "the message names the limit: {message}"
    );
    let (held, cap) = store.vfs().unwrap().temp_bytes();
    assert_eq!(cap, limit);
    assert!(held <= limit);
    let grew_kb = peak_kb.saturating_sub(before_kb);
    assert!(
        grew_kb < budget >> 10,
        "a refused temp table grew RSS by {grew_kb} KiB, past the {} KiB budget",
        budget >> 10
    );
    // The actor is fine afterwards, and the temp database's memory came back with its
    // connection (the temp database is the connection's until it closes).
    store.sleep_all();
    store
        .with_actor("a", |c| {
            c.execute_batch("SELECT 1").map_err(shoal::Error::from)
        })
        .unwrap();
    assert_eq!(store.vfs().unwrap().temp_bytes().0, 0);
}

/// A store killed while it was being created leaves its engine directory under a
/// temporary name (tests/crash.rs kills such creations); the next open removes it and
/// creates the engine afresh under its own name.
#[cfg(feature = "kv-vfs")]
#[test]
fn a_leftover_of_an_interrupted_creation_is_removed() {
    // What a kill inside each engine's first open can leave: fjall's `version` file
    // created but not yet written, sled's `conf` written without its checksum.
    let torn = [
        (shoal::KvEngine::Fjall, "kv-fjall", "version", &b""[..]),
        (
            shoal::KvEngine::Sled,
            "kv-sled",
            "conf",
            &b"segment_size: 524288\n"[..],
        ),
    ];
    for (kv_engine, engine_dir, file, bytes) in torn {
        if !KvEngine::ALL.contains(&kv_engine) {
            continue; // not in this build
        }
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(format!("{engine_dir}.creating"));
        std::fs::create_dir(&leftover).unwrap();
        std::fs::write(leftover.join(file), bytes).unwrap();
        let config = config(Backing::Kv).with_kv_engine(kv_engine);
        {
            let store = Store::open(dir.path(), config.clone()).unwrap();
            store
                .with_actor("a", |c| {
                    c.execute_batch("CREATE TABLE notes(body TEXT)")
                        .map_err(shoal::Error::from)
                })
                .unwrap();
        }
        assert!(!leftover.exists(), "{kv_engine:?}: the leftover stayed");
        assert!(dir.path().join(engine_dir).is_dir(), "{kv_engine:?}");
        let store = Store::open(dir.path(), config).unwrap();
        assert_eq!(count(&store, "a"), 0, "{kv_engine:?}");
    }
}

/// The kv engines this build can open.
fn kv_engines() -> Vec<KvEngine> {
    KvEngine::ALL.to_vec()
}

/// Every backing, with each kv engine under the kv one.
fn layouts_to_try() -> Vec<(Backing, KvEngine)> {
    backings()
        .into_iter()
        .flat_map(|b| {
            if b.is_kv() {
                kv_engines().into_iter().map(|e| (b, e)).collect()
            } else {
                vec![(b, KvEngine::Fjall)]
            }
        })
        .collect()
}

fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    names
}

fn notes(store: &Store, actor: &str, rows: i64) {
    store
        .with_actor(actor, |c| -> shoal::Result<_> {
            c.execute_batch("CREATE TABLE notes(body TEXT)")?;
            for i in 0..rows {
                c.execute("INSERT INTO notes VALUES (?1)", [format!("note {i}")])?;
            }
            Ok(())
        })
        .unwrap();
}

/// Each backing and kv engine keeps its own subdirectory; opening a store with another
/// used to start an empty store beside the actors. It is refused, naming what the store
/// holds, and creates nothing. Both file backings read the same files.
#[test]
fn a_store_opened_with_another_backing_or_engine_is_refused() {
    let layouts = |backing, kv_engine| config(backing).with_kv_engine(kv_engine);
    let cases = layouts_to_try();
    for &(backing, engine) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let made = layouts(backing, engine);
        notes(&Store::open(dir.path(), made.clone()).unwrap(), "a", 1);
        let before = entries(dir.path());
        for &(other_backing, other_engine) in &cases {
            let other = layouts(other_backing, other_engine);
            if StoreLayout::of(&other) == StoreLayout::of(&made) {
                continue;
            }
            for err in [
                Store::open(dir.path(), other.clone()).unwrap_err(),
                Store::open_existing(dir.path(), other.clone()).unwrap_err(),
                Store::open_read_only(dir.path(), other.clone()).unwrap_err(),
            ] {
                match &err {
                    Error::WrongLayout { holds, asked, .. } => {
                        assert_eq!(*holds, StoreLayout::of(&made));
                        assert_eq!(*asked, StoreLayout::of(&other));
                    }
                    other => panic!("{backing:?}/{engine:?} opened as another: {other}"),
                }
                assert!(
                    err.to_string()
                        .contains(&StoreLayout::of(&made).to_string()),
                    "{err}"
                );
            }
            assert_eq!(
                before,
                entries(dir.path()),
                "a refused open created something"
            );
        }
        let store = Store::open_existing(dir.path(), made).unwrap();
        assert_eq!(count(&store, "a"), 1);
    }
    // Both file backings are one layout.
    let dir = tempfile::tempdir().unwrap();
    notes(
        &Store::open(dir.path(), config(Backing::Files)).unwrap(),
        "a",
        2,
    );
    let tuned = Store::open(dir.path(), config(Backing::FilesTuned)).unwrap();
    assert_eq!(count(&tuned, "a"), 2);
}

/// A store directory holding more than one layout (as `shoal wake` keeps them, or as the
/// old behaviour left them) opens with any of them; `open_alongside` adds one.
#[cfg(feature = "kv-vfs")]
#[test]
fn a_store_holding_several_layouts_opens_with_each() {
    let dir = tempfile::tempdir().unwrap();
    notes(
        &Store::open(dir.path(), config(Backing::Kv)).unwrap(),
        "kv",
        1,
    );
    assert!(Store::open(dir.path(), config(Backing::Files)).is_err());
    notes(
        &Store::open_alongside(dir.path(), config(Backing::Files)).unwrap(),
        "file",
        2,
    );
    let kv = Store::open(dir.path(), config(Backing::Kv)).unwrap();
    assert_eq!(kv.list_actors().unwrap(), ["kv"]);
    drop(kv);
    let files = Store::open(dir.path(), config(Backing::Files)).unwrap();
    assert_eq!(files.list_actors().unwrap(), ["file"]);
}

/// A path that cannot be a store says why, instead of "no store at".
#[test]
fn an_unusable_store_path_says_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("store");
    std::fs::write(&file, "not a directory").unwrap();
    let inside = file.join("nested");
    for err in [
        Store::open_existing(&file, config(Backing::default())).unwrap_err(),
        Store::open_read_only(&file, config(Backing::default())).unwrap_err(),
        Store::open(&file, config(Backing::default())).unwrap_err(),
        Store::open_existing(&inside, config(Backing::default())).unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(matches!(err, Error::Io { .. }), "{text}");
        assert!(!text.contains("no store at"), "{text}");
        assert!(text.to_lowercase().contains("not a directory"), "{text}");
    }
    // Nothing there at all is still "no store".
    let err = Store::open_existing(tmp.path().join("none"), config(Backing::default()));
    assert!(matches!(err, Err(Error::NoStore { .. })));
}

/// A read-only open reads, creates nothing and refuses writes clearly, on a store that
/// could be written and on one that cannot (a tmpfs remounted read-only: root ignores
/// file permissions). The files backing reads read-only storage in place; the kv engines
/// cannot, so the store reads a private copy of their files.
#[test]
fn a_read_only_store_is_read_and_never_written() {
    for backing in backings() {
        let dir = tempfile::tempdir().unwrap();
        notes(&Store::open(dir.path(), config(backing)).unwrap(), "a", 3);
        let store = Store::open_read_only(dir.path(), config(backing)).unwrap();
        assert!(store.is_read_only());
        read_only_checks(&store, backing);
    }
    let Some(disk) = tmpfs::Tmpfs::mount(64 << 10) else {
        return;
    };
    let engines = kv_engines();
    for &backing in &backings() {
        for &engine in &engines {
            let dir = disk.path().join(format!("{backing:?}-{engine:?}"));
            let cfg = config(backing).with_kv_engine(engine);
            notes(&Store::open(&dir, cfg.clone()).unwrap(), "a", 3);
        }
        if engines.is_empty() {
            let dir = disk.path().join(format!("{backing:?}"));
            notes(&Store::open(&dir, config(backing)).unwrap(), "a", 3);
        }
    }
    disk.set_read_only(true);
    for backing in backings() {
        let cases: Vec<(std::path::PathBuf, KvEngine)> = if engines.is_empty() {
            vec![(disk.path().join(format!("{backing:?}")), KvEngine::Fjall)]
        } else {
            engines
                .iter()
                .map(|&e| (disk.path().join(format!("{backing:?}-{e:?}")), e))
                .collect()
        };
        for (dir, engine) in cases {
            let cfg = config(backing).with_kv_engine(engine);
            let writable = Store::open(&dir, cfg.clone()).unwrap_err();
            assert!(
                writable.to_string().contains("Read-only file system"),
                "{writable}"
            );
            // The kv engines cannot open read-only storage in place; the store reads a
            // private copy of their files instead.
            let store = Store::open_read_only(&dir, cfg)
                .unwrap_or_else(|e| panic!("{backing:?} {engine:?} on read-only storage: {e}"));
            read_only_checks(&store, backing);
        }
    }
    disk.set_read_only(false);
}

fn read_only_checks(store: &Store, backing: Backing) {
    assert_eq!(store.list_actors().unwrap(), ["a"], "{backing:?}");
    assert_eq!(count(store, "a"), 3, "{backing:?}");
    let write = store
        .with_actor("a", |c| {
            c.execute("INSERT INTO notes VALUES ('x')", [])
                .map_err(shoal::Error::from)
        })
        .unwrap_err();
    assert!(
        write.to_string().contains("readonly"),
        "{backing:?}: {write}"
    );
    assert!(matches!(
        store.delete_actor("a"),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(store.actor("new"), Err(Error::NoSuchActor(_))));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("a.db");
    store.export_actor("a", &out).unwrap();
    assert!(store.check_actor("a").unwrap().is_ok());
    assert!(matches!(
        store.import_actor("b", &out),
        Err(Error::ReadOnly { .. })
    ));
    assert_eq!(store.list_actors().unwrap(), ["a"], "{backing:?}");
}

/// An actor writing on a full disk (a small tmpfs) gets an error that says the disk is
/// full, within a bounded time; later writes say the store must be reopened and why; once
/// space is freed a reopened store has every committed row and takes writes again.
#[cfg(feature = "kv-vfs")]
#[test]
fn a_full_disk_says_so_and_the_store_reopens_after_space_is_freed() {
    const DISK_KIB: u64 = 24 << 10;
    let Some(disk) = tmpfs::Tmpfs::mount(DISK_KIB) else {
        return;
    };
    let dir = disk.path().join("store");
    let (tx, rx) = std::sync::mpsc::channel();
    let writer_dir = dir.clone();
    std::thread::spawn(move || {
        let store = Store::open(&writer_dir, config(Backing::Kv)).unwrap();
        store
            .with_actor("w", |c| -> shoal::Result<_> {
                Ok(c.execute_batch("CREATE TABLE blobs(n INTEGER PRIMARY KEY, b BLOB)")?)
            })
            .unwrap();
        let mut committed = 0i64;
        let failure = loop {
            // Far past the disk: it must fill long before.
            if committed > 4 * (DISK_KIB as i64) / 32 {
                break None;
            }
            let step = store.with_actor("w", |c| -> shoal::Result<_> {
                Ok(c.execute(
                    "INSERT INTO blobs VALUES (?1, randomblob(32768))",
                    [committed + 1],
                )?)
            });
            match step {
                Ok(_) => committed += 1,
                Err(e) => break Some(e),
            }
        };
        let later = store
            .with_actor("w", |c| -> shoal::Result<_> {
                Ok(c.execute("INSERT INTO blobs VALUES (-1, randomblob(100))", [])?)
            })
            .err();
        drop(store);
        let _ = tx.send((committed, failure, later));
    });
    let (committed, failure, later) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the writer hung on the full disk");
    let failure = failure.expect("the disk never filled");
    eprintln!("first failure: {failure}\nlater write: {later:?}");
    assert!(matches!(failure, Error::DiskFull(_)), "{failure}");
    assert!(
        failure.to_string().contains("the disk is full"),
        "{failure}"
    );
    let later = later.expect("a write after the failure succeeded");
    assert!(matches!(later, Error::DiskFull(_)), "{later}");
    let text = later.to_string();
    assert!(
        text.contains("reopened") && text.contains("the disk is full"),
        "{text}"
    );

    disk.resize(4 * DISK_KIB);
    let store = Store::open(&dir, config(Backing::Kv)).unwrap();
    let rows: i64 = store
        .with_actor("w", |c| -> shoal::Result<_> {
            Ok(c.query_row("SELECT count(*) FROM blobs", [], |r| r.get(0))?)
        })
        .unwrap();
    assert!(rows >= committed, "{rows} rows of {committed} committed");
    assert!(store.check_actor("w").unwrap().is_ok());
    store
        .with_actor("w", |c| -> shoal::Result<_> {
            Ok(c.execute("INSERT INTO blobs VALUES (-1, x'00')", [])?)
        })
        .unwrap();
}

/// An actor left with a hot journal (a transaction interrupted mid-way) cannot be read
/// by a read-only open, which may not roll it back: the error says so and what to do,
/// and a writable open rolls it back.
#[test]
fn a_read_only_open_names_an_interrupted_transaction_it_cannot_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    notes(
        &Store::open(dir.path(), config(Backing::Files)).unwrap(),
        "a",
        3,
    );
    let db = dir.path().join("actors").join("a.db");
    // A transaction whose pages spilled into the database file, copied with its journal
    // while it is open: the copy is what a crash at that moment leaves.
    let interrupted = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA cache_size = 1; BEGIN; \
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200) \
             INSERT INTO notes SELECT hex(randomblob(2000)) FROM c;",
        )
        .unwrap();
        for name in ["a.db", "a.db-journal"] {
            std::fs::copy(db.with_file_name(name), interrupted.path().join(name)).unwrap();
        }
    }
    for name in ["a.db", "a.db-journal"] {
        std::fs::copy(interrupted.path().join(name), db.with_file_name(name)).unwrap();
    }
    let store = Store::open_read_only(dir.path(), config(Backing::Files)).unwrap();
    let err = store
        .with_actor("a", |c| -> shoal::Result<_> {
            Ok(c.query_row("SELECT count(*) FROM notes", [], |r| r.get::<_, i64>(0))?)
        })
        .unwrap_err();
    assert!(matches!(err, Error::RollbackNeeded { .. }), "{err}");
    assert!(
        err.to_string().contains("open the store for writing"),
        "{err}"
    );
    drop(store);
    let store = Store::open(dir.path(), config(Backing::Files)).unwrap();
    assert_eq!(
        count(&store, "a"),
        3,
        "the interrupted transaction was rolled back"
    );
}

/// A rollback journal left in the actors directory under an imported actor's name (a
/// delete killed between removing a database and its journal leaves one) belongs to a
/// database that is gone: the import removes it, so SQLite does not roll it back onto the
/// imported data.
#[test]
fn an_import_is_not_rolled_back_by_a_stale_journal_beside_it() {
    for backing in [Backing::Files, Backing::FilesTuned] {
        let dir = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        // A real hot journal of another, smaller database named like the import.
        let old = files.path().join("old.db");
        let stale = {
            let c = rusqlite::Connection::open(&old).unwrap();
            c.execute_batch(
                "PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF;
                 CREATE TABLE t(v); INSERT INTO t VALUES (1);
                 BEGIN; INSERT INTO t VALUES (randomblob(20000)); UPDATE t SET v = 2;",
            )
            .unwrap();
            let journal = std::fs::read(files.path().join("old.db-journal")).unwrap();
            c.execute_batch("ROLLBACK").unwrap();
            journal
        };
        let source = files.path().join("source.db");
        {
            let c = rusqlite::Connection::open(&source).unwrap();
            c.execute_batch(
                "CREATE TABLE notes(body);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
                 INSERT INTO notes SELECT randomblob(300) FROM n;",
            )
            .unwrap();
        }
        let store = Store::open(dir.path(), config(backing)).unwrap();
        let journal = dir.path().join("actors").join("imp.db-journal");
        std::fs::write(&journal, &stale).unwrap();
        store.import_actor("imp", &source).unwrap();
        assert_eq!(count(&store, "imp"), 500, "{backing:?}");
        assert!(store.check_actor("imp").unwrap().is_ok(), "{backing:?}");
        assert!(
            !journal.exists(),
            "{backing:?}: the stale journal is still there"
        );
        assert!(
            !journal.exists(),
            "{backing:?}: the stale journal is still there"
        );
    }
}

/// A build without the sled feature still knows the engine's name and layout, and opening
/// a store on it says what is missing instead of failing to compile or opening another
/// engine. (`.ci/run` runs this in a build of the library alone, which has no sled.)
#[cfg(all(feature = "kv-vfs", not(feature = "sled")))]
#[test]
fn sled_without_its_feature_is_a_clear_error() {
    assert_eq!(KvEngine::ALL, [KvEngine::Fjall]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(Backing::Kv).with_kv_engine(KvEngine::Sled);
    let err = Store::open(dir.path(), config).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotBuilt {
                feature: "sled",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "this shoal was built without the sled feature, which the sled engine needs"
    );
    assert!(!dir.path().join("kv-sled").exists());
}

/// `with_actor` hands back the caller's own error type: the closure's domain errors come
/// back as they were, and a failure to wake the actor arrives through `From<Error>`.
#[test]
fn with_actor_returns_the_callers_error_type() {
    #[derive(Debug)]
    enum AppError {
        Store(Error),
        Sql(shoal::rusqlite::Error),
        Overdrawn { balance: i64 },
    }
    impl From<Error> for AppError {
        fn from(e: Error) -> AppError {
            AppError::Store(e)
        }
    }
    impl From<shoal::rusqlite::Error> for AppError {
        fn from(e: shoal::rusqlite::Error) -> AppError {
            AppError::Sql(e)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(Backing::default())).unwrap();
    let withdraw = |amount: i64| {
        store.with_actor("acct", |c| {
            c.execute_batch("CREATE TABLE IF NOT EXISTS t(balance INTEGER)")?;
            let balance: i64 =
                c.query_row("SELECT coalesce(sum(balance), 0) FROM t", [], |r| r.get(0))?;
            if balance < amount {
                return Err(AppError::Overdrawn { balance });
            }
            c.execute("INSERT INTO t VALUES (?1)", [-amount])?;
            Ok(balance - amount)
        })
    };
    assert!(matches!(
        withdraw(5),
        Err(AppError::Overdrawn { balance: 0 })
    ));
    let sql = store.with_actor("acct", |c| -> Result<(), AppError> {
        Ok(c.execute_batch("SELECT * FROM missing")?)
    });
    assert!(
        matches!(&sql, Err(AppError::Sql(e)) if e.to_string().contains("no such table")),
        "{sql:?}"
    );
    let woke = store.with_actor("../escape", |_| Ok::<_, AppError>(()));
    assert!(
        matches!(woke, Err(AppError::Store(Error::InvalidName { .. }))),
        "{woke:?}"
    );
}

/// The OS error behind a failure is in the error's `source()` chain, so a caller can
/// downcast it and tell a full disk (ENOSPC) from a path that cannot hold a store
/// (ENOTDIR) without reading messages.
#[test]
fn the_os_error_behind_a_failure_can_be_downcast_from_the_chain() {
    fn io_kind(err: &Error) -> Option<std::io::ErrorKind> {
        std::iter::successors(Some(err as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
    }
    // A store under a regular file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = Store::open(file.join("store"), config(Backing::Files)).unwrap_err();
    assert_eq!(
        io_kind(&err),
        Some(std::io::ErrorKind::NotADirectory),
        "{err:?}"
    );

    // An import into a store whose disk is full.
    let Some(disk) = tmpfs::Tmpfs::mount(256) else {
        return;
    };
    let source = dir.path().join("source.db");
    let conn = shoal::rusqlite::Connection::open(&source).unwrap();
    conn.execute_batch(
        "CREATE TABLE t(b);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO t SELECT randomblob(1000) FROM n;",
    )
    .unwrap();
    drop(conn);
    let store = Store::open(disk.path().join("store"), config(Backing::Files)).unwrap();
    let mut filler = std::fs::File::create(disk.path().join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0; 4096]).is_ok() {}
    let err = store.import_actor("copy", &source).unwrap_err();
    assert_eq!(
        io_kind(&err),
        Some(std::io::ErrorKind::StorageFull),
        "{err:?}"
    );
}
