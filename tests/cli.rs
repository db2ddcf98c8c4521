//! The `shoal` command as a user runs it: housekeeping commands, `wake --json`, and
//! every bad-input case giving one line on stderr, a non-zero exit, and no writes.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::{Command, Output};

fn shoal(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = shoal(store, args);
    assert!(
        out.status.success(),
        "shoal {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A failure: non-zero exit, exactly one line on stderr naming the problem, nothing on
/// stdout.
fn fails(store: &Path, args: &[&str], expect: &str) {
    let out = shoal(store, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "shoal {args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "shoal {args:?}: {stderr}");
    assert!(stderr.starts_with("shoal: "), "{stderr}");
    assert!(
        stderr.contains(expect),
        "shoal {args:?}: expected {expect:?} in {stderr}"
    );
    assert!(out.stdout.is_empty(), "shoal {args:?} wrote to stdout");
}

fn sqlite_file(path: &Path, rows: i64) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        .unwrap();
    for i in 0..rows {
        c.execute("INSERT INTO notes(body) VALUES (?1)", [format!("note {i}")])
            .unwrap();
    }
}

#[test]
fn housekeeping_commands_round_trip_an_actor() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("in.db");
    sqlite_file(&src, 3);
    ok(&store, &["import", src.to_str().unwrap(), "alice"]);
    assert_eq!(ok(&store, &["ls"]), "alice\n");
    assert_eq!(
        ok(
            &store,
            &[
                "sql",
                "alice",
                "INSERT INTO notes(body) VALUES ('hi'); SELECT id, body FROM notes ORDER BY id"
            ]
        ),
        "1\tnote 0\n2\tnote 1\n3\tnote 2\n4\thi\n"
    );
    let stats = ok(&store, &["stats", "alice"]);
    assert!(stats.contains("actor\talice"), "{stats}");
    let store_stats = ok(&store, &["stats"]);
    assert!(store_stats.contains("actors\t1"), "{store_stats}");
    assert!(ok(&store, &["check"]).starts_with("alice: ok"));
    let out = tmp.path().join("out.db");
    ok(&store, &["export", "alice", out.to_str().unwrap()]);
    let n: i64 = rusqlite::Connection::open(&out)
        .unwrap()
        .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 4);
    ok(&store, &["rm", "alice"]);
    assert_eq!(ok(&store, &["ls"]), "");
}

#[test]
fn bad_input_is_one_line_a_failure_and_no_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // No store yet: read-only commands refuse and create nothing.
    fails(&store, &["ls"], "no store at");
    fails(&store, &["sql", "x", "SELECT 1"], "no store at");
    assert!(!store.exists(), "a refused command created the store");

    let good = tmp.path().join("good.db");
    sqlite_file(&good, 1);
    ok(&store, &["import", good.to_str().unwrap(), "alice"]);

    // An unknown actor.
    for args in [
        &["sql", "bob", "CREATE TABLE t(x)"][..],
        &["stats", "bob"],
        &["rm", "bob"],
        &["check", "bob"],
        &["export", "bob", tmp.path().join("bob.db").to_str().unwrap()],
    ] {
        fails(&store, args, "no actor named \"bob\"");
    }
    assert!(!tmp.path().join("bob.db").exists());

    // Files that cannot be imported.
    let text = tmp.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, just a long enough line of text",
    )
    .unwrap();
    fails(
        &store,
        &["import", text.to_str().unwrap(), "carol"],
        "not a SQLite database",
    );
    fails(
        &store,
        &[
            "import",
            tmp.path().join("missing.db").to_str().unwrap(),
            "carol",
        ],
        "cannot read",
    );
    fails(
        &store,
        &["import", tmp.path().to_str().unwrap(), "carol"],
        "cannot read",
    );
    fails(
        &store,
        &["import", good.to_str().unwrap(), "alice"],
        "already exists",
    );
    // Export never overwrites.
    fails(
        &store,
        &["export", "alice", good.to_str().unwrap()],
        "already exists",
    );

    // Invalid names.
    for name in ["../x", "/etc/passwd", "", "a b", "x-journal"] {
        fails(
            &store,
            &["import", good.to_str().unwrap(), name],
            "invalid actor name",
        );
        fails(&store, &["sql", name, "SELECT 1"], "invalid actor name");
    }
    assert_eq!(
        ok(&store, &["ls"]),
        "alice\n",
        "nothing was written by the refused commands"
    );

    // A store open elsewhere (here, in this test process).
    let held = shoal::Store::open(&store, shoal::Config::default()).unwrap();
    fails(&store, &["ls"], "already open in another process");
    fails(
        &store,
        &["import", good.to_str().unwrap(), "dave"],
        "already open in another process",
    );
    drop(held);
    assert_eq!(ok(&store, &["ls"]), "alice\n");
}

#[test]
fn wake_prints_one_json_object_with_the_promised_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let plot = tmp.path().join("rss.svg");
    let out = ok(
        &store,
        &[
            "wake",
            "--actors",
            "30",
            "--warmup",
            "5",
            "--messages",
            "20",
            "--concurrency",
            "4",
            "--json",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in [
        "backing",
        "actors",
        "baseline_rss_kb",
        "peak_rss_kb",
        "post_sleep_rss_kb",
        "per_actor_kb",
        "wake_p50_us",
        "wake_p99_us",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(json["actors"], 30);
    assert_eq!(json["awake_at_spike"], 30);
    assert!(json["peak_rss_kb"].as_u64().unwrap() >= json["baseline_rss_kb"].as_u64().unwrap());
    assert!(json["wake_p99_us"].as_u64().unwrap() >= json["wake_p50_us"].as_u64().unwrap());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("RSS"),
        "the plot is an SVG chart"
    );
    // The populated actors are real: 35 of them (30 woken, 5 for warm-up), each sound.
    assert_eq!(ok(&store, &["ls"]).lines().count(), 35);
    let n = ok(
        &store,
        &["sql", "actor-00003", "SELECT count(*) FROM messages"],
    );
    assert_eq!(n, "20\n");
    assert!(ok(&store, &["check", "actor-00003"]).starts_with("actor-00003: ok"));

    // The file backings run the same way.
    let out = ok(
        &store,
        &[
            "--backing",
            "files-tuned",
            "wake",
            "--actors",
            "10",
            "--warmup",
            "2",
            "--messages",
            "10",
            "--json",
        ],
    );
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(json["backing"], "files-tuned");
}
