//! History through the facade: restore to every bookmark of a random workload against a
//! replay on stock SQLite, forks independent of their source, collection (measured, with
//! pinned points and forks surviving it), the pragmas, and clear errors for bad input.
#![cfg(feature = "kv-vfs")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::{Duration, UNIX_EPOCH};

use shoal::{Bookmark, Config, Error, PointInTime, Store};
use shoal_testkit::rows::rows;

fn config() -> Config {
    Config::default().with_memory_budget(64 << 20)
}

fn sql(store: &Store, actor: &str, statements: &str) {
    store
        .with_actor(actor, |c| -> shoal::Result<_> {
            c.execute_batch(statements)?;
            Ok(())
        })
        .unwrap();
}

/// Everything a state is: the schema and every row.
fn dump_conn(c: &rusqlite::Connection) -> Vec<Vec<String>> {
    let mut out = rows(c, "SELECT type, name, sql FROM sqlite_master ORDER BY name");
    if out.iter().any(|r| r[1] == "t") {
        out.extend(rows(c, "SELECT id, v, hex(b) FROM t ORDER BY id"));
    }
    out
}

fn dump(store: &Store, actor: &str) -> Vec<Vec<String>> {
    store
        .with_actor(actor, |c| -> shoal::Result<_> {
            let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            assert_eq!(ok, "ok");
            Ok(dump_conn(c))
        })
        .unwrap()
}

/// Creates table `t` in `actor` with `rows` rows of `v` and a `blob`-byte blob each.
fn seed(store: &Store, actor: &str, rows: usize, v: &str, blob: usize) {
    sql(
        store,
        actor,
        &format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {rows})
             INSERT INTO t(v, b) SELECT '{v}', zeroblob({blob}) FROM n;"
        ),
    );
}

fn bookmark(store: &Store, actor: &str) -> Bookmark {
    let text = store
        .with_actor(actor, |c| -> shoal::Result<String> {
            Ok(c.query_row("PRAGMA shoal_bookmark", [], |r| r.get(0))?)
        })
        .unwrap();
    Bookmark::parse(&text).unwrap()
}

/// A random workload of single-statement transactions: inserts small and large,
/// updates, deletes, an index, and VACUUMs that shrink the file.
fn workload(seed: u64, steps: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = vec!["CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)".to_owned()];
    for step in 0..steps {
        let x = rng.u32(..1_000_000);
        out.push(match rng.u8(..10) {
            0..=2 => format!(
                "INSERT INTO t(v, b) VALUES ('{x}', zeroblob({}))",
                rng.usize(..3000)
            ),
            3 => format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {}) \
                 INSERT INTO t(v, b) SELECT '{x}-' || i, zeroblob(1500) FROM n",
                rng.usize(20..200)
            ),
            4 | 5 => format!(
                "UPDATE t SET v = v || '{x}' WHERE id % {} = 0",
                rng.u8(2..9)
            ),
            6 => format!(
                "DELETE FROM t WHERE id % {} = {}",
                rng.u8(3..7),
                rng.u8(0..3)
            ),
            7 => format!("CREATE INDEX IF NOT EXISTS i{} ON t(v)", step % 3),
            8 => "DELETE FROM t WHERE id % 2 = 0".to_owned(),
            _ => "VACUUM".to_owned(),
        });
    }
    out
}

#[test]
fn restoring_to_every_bookmark_gives_exactly_that_state() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), config()).unwrap();
    let statements = workload(0x5eed, 40);
    let stock = rusqlite::Connection::open_in_memory().unwrap();
    let mut points = Vec::new();
    for s in &statements {
        sql(&store, "a", s);
        stock.execute_batch(s).unwrap();
        points.push((bookmark(&store, "a"), dump_conn(&stock)));
    }
    let last = points.last().unwrap().clone();
    assert_eq!(dump(&store, "a"), last.1);
    // Every bookmark, in a shuffled order, each restored from wherever the last left it.
    let mut order: Vec<usize> = (0..points.len()).collect();
    fastrand::Rng::with_seed(7).shuffle(&mut order);
    for i in order {
        let (b, want) = &points[i];
        store
            .restore_actor("a", &PointInTime::Bookmark(*b))
            .unwrap();
        assert_eq!(&dump(&store, "a"), want, "restored to {b} (statement {i})");
    }
    // The restores are commits too: restore to the state just before the first of them.
    store
        .restore_actor("a", &PointInTime::Bookmark(last.0))
        .unwrap();
    assert_eq!(dump(&store, "a"), last.1);
    assert!(store.check_actor("a").unwrap().is_ok());
    // The history lists every commit, oldest first, each bookmark sorting after the last.
    let history = store.actor_history("a").unwrap();
    assert!(history.windows(2).all(|w| w[0].bookmark < w[1].bookmark));
    assert!(history.len() > points.len());
    // Restore by time: the last commit at or before it.
    let at = history[history.len() / 2].clone();
    let after = store
        .restore_actor(
            "a",
            &PointInTime::Time(at.time + Duration::from_micros(500)),
        )
        .unwrap();
    assert!(after.0 > history.last().unwrap().bookmark.0);
}

#[test]
fn a_fork_is_independent_of_its_source_and_outlives_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), config()).unwrap();
    seed(&store, "src", 500, "one", 2000);
    let early = bookmark(&store, "src");
    let at_early = dump(&store, "src");
    sql(&store, "src", "UPDATE t SET v = 'two' WHERE id % 2 = 0");
    let now = dump(&store, "src");

    assert_eq!(
        store.fork_actor("src", None, "now").unwrap().0,
        bookmark(&store, "src").0
    );
    store
        .fork_actor("src", Some(&PointInTime::Bookmark(early)), "early")
        .unwrap();
    assert_eq!(dump(&store, "now"), now);
    assert_eq!(dump(&store, "early"), at_early);
    // No page was copied: the forks hold only what they wrote (nothing yet).
    let kv = store.vfs().unwrap().kv();
    for fork in ["now", "early"] {
        assert_eq!(store.actor_history_usage(fork).unwrap().pages, 0);
        assert_eq!(kv.audit(fork).unwrap().unwrap().chunks, 0, "{fork}");
    }

    // Writes on each side leave the others unchanged.
    sql(
        &store,
        "src",
        "DELETE FROM t WHERE id < 100; UPDATE t SET v = 'src'",
    );
    let src_after = dump(&store, "src");
    assert_eq!(dump(&store, "now"), now);
    assert_eq!(dump(&store, "early"), at_early);
    sql(
        &store,
        "now",
        "INSERT INTO t(v) VALUES ('fork'); DELETE FROM t WHERE id > 400",
    );
    sql(&store, "early", "VACUUM");
    assert_eq!(dump(&store, "src"), src_after);
    assert_eq!(dump(&store, "early"), at_early);
    let now_after = dump(&store, "now");
    // A fork of a fork, then the source goes: each fork keeps its pages.
    store.fork_actor("now", None, "grandchild").unwrap();
    store.delete_actor("src").unwrap();
    assert_eq!(dump(&store, "now"), now_after);
    assert_eq!(dump(&store, "early"), at_early);
    assert_eq!(dump(&store, "grandchild"), now_after);
    store.delete_actor("now").unwrap();
    assert_eq!(dump(&store, "grandchild"), now_after);
    for a in ["early", "grandchild"] {
        assert!(store.check_actor(a).unwrap().is_ok(), "{a}");
    }
    drop(store);
    // And after a reopen.
    let store = Store::open(tmp.path(), config()).unwrap();
    assert_eq!(dump(&store, "grandchild"), now_after);
}

#[test]
fn collection_removes_expired_history_but_not_pins_or_shared_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 256 << 10;
    let store = Store::open(
        tmp.path(),
        config().with_history(Some(Duration::from_secs(3600)), budget),
    )
    .unwrap();
    seed(&store, "a", 300, "x", 1000);
    let pinned = dump(&store, "a");
    store.pin_actor("a", "seeded", None).unwrap();
    sql(&store, "a", "UPDATE t SET v = 'forked'");
    store.fork_actor("a", None, "f").unwrap();
    let forked = dump(&store, "f");
    for i in 0..150 {
        sql(
            &store,
            "a",
            &format!("UPDATE t SET v = '{i}' WHERE id % 3 = {}", i % 3),
        );
    }
    let before = store.actor_history_usage("a").unwrap();
    let kv_before = store.vfs().unwrap().kv().stats().unwrap();
    assert!(before.bytes > 4 * budget, "{before:?}");
    let collected = store.collect_history().unwrap();
    let after = store.actor_history_usage("a").unwrap();
    let kv_after = store.vfs().unwrap().kv().stats().unwrap();
    println!(
        "history of a: {} -> {} bytes, {} -> {} commits; store keys {} -> {}, logical bytes {} -> {}",
        before.bytes,
        after.bytes,
        before.commits,
        after.commits,
        kv_before.keys,
        kv_after.keys,
        kv_before.logical_bytes,
        kv_after.logical_bytes
    );
    assert!(collected.pages > 0 && collected.bytes > 0);
    assert!(kv_after.logical_bytes < kv_before.logical_bytes);
    // The pin and the fork hold everything after the pinned point: nothing newer went.
    assert_eq!(after.commits, before.commits - collected.commits);
    assert_eq!(dump(&store, "f"), forked);
    let current = dump(&store, "a");
    store
        .restore_actor("a", &PointInTime::Label("seeded".into()))
        .unwrap();
    assert_eq!(dump(&store, "a"), pinned);
    // Without the pin and the fork, the byte budget holds.
    store.unpin_actor("a", "seeded").unwrap();
    store.delete_actor("f").unwrap();
    store.collect_history().unwrap();
    let last = store.actor_history_usage("a").unwrap();
    let kv_last = store.vfs().unwrap().kv().stats().unwrap();
    println!(
        "without the pin and the fork: history of a {} bytes in {} commits; store logical bytes {}",
        last.bytes, last.commits, kv_last.logical_bytes
    );
    assert!(kv_last.logical_bytes < kv_after.logical_bytes);
    assert!(last.bytes <= budget, "{last:?}");
    assert!(last.commits >= 1);
    // The current state is untouched by collection, and the oldest kept point restores.
    store
        .restore_actor("a", &PointInTime::Label("seeded".into()))
        .unwrap_err();
    let oldest = store.actor_history("a").unwrap()[0].bookmark;
    store
        .restore_actor("a", &PointInTime::Bookmark(oldest))
        .unwrap();
    assert!(store.check_actor("a").unwrap().is_ok());
    drop(current);
}

#[test]
fn history_off_costs_no_history_and_forks_still_work() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), config().with_history(None, 0)).unwrap();
    sql(
        &store,
        "a",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); INSERT INTO t(v) VALUES ('1')",
    );
    assert_eq!(store.actor_history_usage("a").unwrap().commits, 0);
    store.fork_actor("a", None, "b").unwrap();
    let forked = dump(&store, "b");
    // With a fork reading from it, the source's commits keep what they replace.
    sql(&store, "a", "UPDATE t SET v = '2'");
    assert_eq!(dump(&store, "b"), forked);
    assert!(store.actor_history_usage("a").unwrap().pages > 0);
    store.delete_actor("b").unwrap();
    store.collect_history().unwrap();
    assert_eq!(store.actor_history_usage("a").unwrap().pages, 0);
}

#[test]
fn the_pragmas_pin_fork_and_restore_under_an_open_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), config()).unwrap();
    sql(
        &store,
        "a",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); INSERT INTO t(v) VALUES ('1')",
    );
    let conn = store.open_actor("a").unwrap();
    let text = |sql: &str| -> String { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let first = text("PRAGMA shoal_bookmark");
    assert_eq!(text("PRAGMA shoal_pin = 'one'"), first);
    conn.execute_batch("INSERT INTO t(v) VALUES ('2')").unwrap();
    let second = text("PRAGMA shoal_bookmark");
    assert!(second > first);
    assert_eq!(text("PRAGMA shoal_fork = 'copy'"), second);
    let history = text("PRAGMA shoal_history");
    assert!(
        history
            .lines()
            .any(|l| l.starts_with(&format!("{first}\t"))),
        "{history}"
    );
    // Restore under this connection (and a second one that has read the table): both
    // see the restored state at their next statement.
    let other = store.open_actor("a").unwrap();
    let count = |c: &rusqlite::Connection| -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&other), 2);
    let restored = text("PRAGMA shoal_restore = 'one'");
    assert!(restored > second);
    assert_eq!(count(&conn), 1);
    assert_eq!(count(&other), 1);
    text(&format!("PRAGMA shoal_restore = '{second}'"));
    assert_eq!(count(&other), 2);
    // Refused inside a transaction: the connection holds a lock.
    conn.execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    let err = other
        .query_row(&format!("PRAGMA shoal_restore = '{first}'"), [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_err();
    assert!(err.to_string().contains("locked"), "{err}");
    conn.execute_batch("COMMIT").unwrap();
    drop((conn, other));
    assert_eq!(
        store
            .with_actor("copy", |c| -> shoal::Result<i64> {
                Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?)
            })
            .unwrap(),
        2
    );
}

#[test]
fn bad_points_labels_and_names_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), config()).unwrap();
    sql(&store, "a", "CREATE TABLE t(x)");
    sql(&store, "b", "CREATE TABLE t(x)");
    let message = |e: Error| e.to_string();
    let unknown = store
        .restore_actor("a", &PointInTime::Bookmark(Bookmark(0xfffff)))
        .unwrap_err();
    assert!(message(unknown).contains("no commit has bookmark 00000000000fffff"));
    let early = store
        .restore_actor("a", &PointInTime::Time(UNIX_EPOCH + Duration::from_secs(1)))
        .unwrap_err();
    assert!(message(early).contains("1970-01-01T00:00:01.000Z is before the history kept"));
    let label = store
        .restore_actor("a", &PointInTime::Label("never".into()))
        .unwrap_err();
    assert!(message(label).contains("no restore point is labelled \"never\""));
    assert!(matches!(
        store.fork_actor("a", None, "b").unwrap_err(),
        Error::ActorExists(_)
    ));
    assert!(matches!(
        store.fork_actor("nobody", None, "c").unwrap_err(),
        Error::NoSuchActor(_)
    ));
    for bad in [
        "",
        "has space",
        "semi;colon",
        &"x".repeat(200),
        "0123456789abcdef",
    ] {
        let err = store.pin_actor("a", bad, None).unwrap_err();
        assert!(message(err).contains("label"), "{bad:?}");
    }
    store.pin_actor("a", "ok-label", None).unwrap();
    assert!(
        message(store.pin_actor("a", "ok-label", None).unwrap_err()).contains("exists already")
    );
    assert!(matches!(
        store
            .restore_actor("nobody", &PointInTime::Label("x".into()))
            .unwrap_err(),
        Error::NoSuchActor(_)
    ));
}
