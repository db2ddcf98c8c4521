//! The facade through its public API: actors on both backings, the awake set, the
//! isolation of actor connections, export/import/check, and the store lock.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;

use shoal::{Backing, Config, Error, Store};

fn backings() -> Vec<Backing> {
    let mut all = Vec::new();
    #[cfg(feature = "kv-vfs")]
    all.push(Backing::Kv);
    all.extend([Backing::Files, Backing::FilesTuned]);
    all
}

fn config(backing: Backing) -> Config {
    Config {
        backing,
        memory_budget: 64 << 20,
        ..Config::default()
    }
}

fn count(store: &Store, actor: &str) -> i64 {
    store
        .with_actor(actor, |c| {
            c.query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
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
                    .with_actor(name, |c| {
                        c.execute_batch("CREATE TABLE notes(body TEXT)")?;
                        c.execute("INSERT INTO notes VALUES (?1)", [name])
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
        Config {
            max_awake: Some(3),
            ..config(Backing::default())
        },
    )
    .unwrap();
    for i in 0..10 {
        store
            .with_actor(&format!("actor-{i}"), |c| {
                c.execute_batch("CREATE TABLE t(x)")
            })
            .unwrap();
        assert!(store.awake() <= 3, "awake {} after {i}", store.awake());
    }
    assert_eq!(store.awake(), 3);
    // A put-to-sleep actor wakes on demand with its data.
    store
        .with_actor("actor-0", |c| c.execute("INSERT INTO t VALUES (1)", []))
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
        .with_actor("t", |c| c.execute_batch("CREATE TABLE notes(body)"))
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
            .with_actor("victim", |c| {
                c.execute_batch("CREATE TABLE secret(x); INSERT INTO secret VALUES (42);")
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
            .with_actor("src", |c| {
                c.execute_batch(
                    "CREATE TABLE notes(body TEXT);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 500)
                     INSERT INTO notes SELECT 'note ' || i FROM n;",
                )
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

        store.import_actor(&file, "copy").unwrap();
        assert_eq!(count(&store, "copy"), 500, "{backing:?}");
        assert!(matches!(
            store.import_actor(&file, "copy"),
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
        let err = store.import_actor(path, "imported").unwrap_err();
        assert!(
            matches!(err, Error::NotSqlite { .. }),
            "{}: {err}",
            path.display()
        );
        assert!(err.to_string().contains(what), "{err}");
    }
    let missing = store
        .import_actor(files.path().join("missing.db"), "imported")
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
            .with_actor("gone", |c| c.execute_batch("CREATE TABLE t(x)"))
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

#[test]
fn a_store_is_open_in_one_place_at_a_time_and_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = Store::open(&path, config(Backing::default())).unwrap();
    let err = Store::open(&path, config(Backing::default())).unwrap_err();
    assert!(matches!(err, Error::StoreLocked { .. }), "{err}");
    assert!(err.to_string().contains("already open"), "{err}");
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
    use shoal_kv::{Batch, ChunkNo, FileKind, keys};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(Backing::Kv)).unwrap();
    store
        .with_actor("x", |c| {
            c.execute_batch("CREATE TABLE t(v); INSERT INTO t VALUES (randomblob(9000));")
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
    kv.apply(b).unwrap();
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
            let store = Store::open(
                dir.path(),
                Config {
                    durability,
                    ..config(backing)
                },
            )
            .unwrap();
            let (pragma, want) = match (backing.is_kv(), durability) {
                (true, shoal::Durability::Full) => ("PRAGMA shoal_durability", "full"),
                (true, shoal::Durability::Relaxed) => ("PRAGMA shoal_durability", "relaxed"),
                (false, shoal::Durability::Full) => ("PRAGMA synchronous", "2"),
                (false, shoal::Durability::Relaxed) => ("PRAGMA synchronous", "1"),
            };
            let got: String = store
                .with_actor("a", |c| {
                    c.query_row(pragma, [], |r| {
                        r.get::<_, rusqlite::types::Value>(0).map(|v| match v {
                            rusqlite::types::Value::Integer(i) => i.to_string(),
                            rusqlite::types::Value::Text(t) => t,
                            other => format!("{other:?}"),
                        })
                    })
                })
                .unwrap();
            assert_eq!(got, want, "{backing:?} {durability:?}");
        }
    }
}
