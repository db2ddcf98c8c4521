//! Crash harness: a child process runs random transactions over 100 actors and reports
//! each acknowledged commit on its stdout; the parent kills it with SIGKILL at a random
//! moment, reopens the store and checks that
//! - every actor passes `PRAGMA integrity_check` and the checksum audit of every stored
//!   record;
//! - no transaction is partly visible (each writes a marker row with its row count plus
//!   that many data rows, or deletes both an old marker and its rows);
//! - with full durability, every acknowledged commit is there (the one transaction in
//!   flight at the kill may or may not be);
//! - with relaxed durability, what survived is a prefix of each actor's acknowledged
//!   commits (acknowledged but unflushed commits may be lost, never torn, never reordered).
//!
//! A second child imports a file over and over (and deletes the actor again); after each
//! kill the actor must be absent or whole, no staging leftover may remain, and a retried
//! import must work, on the kv backing and on files.
//!
//! A third child creates a store and writes one actor, killed while it does; the store
//! must open afterwards (`killed_creation`).
//!
//! Each child is this same binary, run again as `<binary> child <which>` (its directory and
//! settings in `SHOAL_CRASH_*` variables), so the binary has no test harness
//! (`harness = false`): `main` runs a child when asked to, and the tests otherwise (see
//! [`main`]). CI runs 50 kill cycles per durability mode; `SHOAL_CRASH_CYCLES=1000 cargo
//! test --release --test crash` is the long mode (docs/BENCHMARKS.md records a run).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::panic::catch_unwind;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal::{Backing, Config, Durability, KvEngine, Store};

/// The tests, run by [`main`].
fn tests() -> Vec<(&'static str, fn())> {
    vec![
        ("crash_cycles_full_durability", crash_cycles_full_durability),
        (
            "crash_cycles_relaxed_durability",
            crash_cycles_relaxed_durability,
        ),
        #[cfg(feature = "sled")]
        (
            "crash_cycles_full_durability_on_sled",
            crash_cycles_full_durability_on_sled,
        ),
        ("crash_during_import_kv", crash_during_import_kv),
        (
            "the_linked_sqlite_is_the_build_asked_for",
            the_linked_sqlite_is_the_build_asked_for,
        ),
        ("crash_during_import_files", crash_during_import_files),
        (
            "crash_during_restore_fork_and_collection",
            crash_during_restore_fork_and_collection,
        ),
        (
            "killed_creation_leaves_a_store_that_opens",
            killed_creation_leaves_a_store_that_opens,
        ),
        #[cfg(feature = "sled")]
        (
            "killed_creation_leaves_a_store_that_opens_on_sled",
            killed_creation_leaves_a_store_that_opens_on_sled,
        ),
    ]
}

/// The children, by the name after `child` on the command line.
const CHILDREN: [(&str, fn()); 4] = [
    ("cycles", crash_child),
    ("import", crash_import_child),
    ("history", history_child),
    ("creation", creation_child),
];

/// Runs a child (`<binary> child <which>`), or the tests whose names contain the filter
/// argument (all without one; `--exact` wants the whole name), as many at once as there are
/// cores, like the standard harness; `--list` lists them. Other flags of the standard
/// harness are accepted and ignored. A failed test makes the exit status 101.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        let which = args.get(1).map(String::as_str).unwrap_or_default();
        let Some((_, child)) = CHILDREN.iter().find(|(name, _)| *name == which) else {
            panic!(
                "no child {which:?}; the children are {:?}",
                CHILDREN.map(|c| c.0)
            );
        };
        return child();
    }
    let mut filter = None;
    let (mut exact, mut list, mut ignored) = (false, false, false);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--exact" => exact = true,
            "--list" => list = true,
            "--ignored" => ignored = true,
            // Flags of the standard harness that take a value.
            "--test-threads" | "--format" | "--color" | "--skip" | "-Z" => {
                rest.next();
            }
            flag if flag.starts_with('-') => {}
            name => filter = Some(name.to_owned()),
        }
    }
    let chosen: Vec<(&str, fn())> = tests()
        .into_iter()
        // None of the tests is ignored.
        .filter(|_| !ignored)
        .filter(|(name, _)| match &filter {
            None => true,
            Some(f) if exact => name == f,
            Some(f) => name.contains(f.as_str()),
        })
        .collect();
    if list {
        for (name, _) in &chosen {
            println!("{name}: test");
        }
        return;
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    println!("\nrunning {} tests", chosen.len());
    std::thread::scope(|scope| {
        for _ in 0..workers.min(chosen.len()) {
            scope.spawn(|| {
                while let Some((name, test)) = chosen.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let ok = catch_unwind(test).is_ok();
                    println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
                    if !ok {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner();
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        chosen.len() - failed
    );
    if failed > 0 {
        std::process::exit(101);
    }
}

const ACTORS: usize = 100;
/// Transactions an actor keeps before the child deletes its oldest.
const MAX_KEPT: i64 = 24;

fn actor(i: usize) -> String {
    format!("a{i:03}")
}

fn engine(name: &str) -> KvEngine {
    name.parse::<KvEngine>().unwrap()
}

/// The budget of the crash child: 16 MiB, so that its open transactions share 1 MiB
/// ([`Config::overlay_limit`]) and its large transactions stage their pages.
fn config(durability: Durability, kv_engine: KvEngine) -> Config {
    Config::default()
        .with_durability(durability)
        .with_kv_engine(kv_engine)
        .with_memory_budget(16 << 20)
        .with_max_awake(Some(ACTORS))
}

fn durability_from_env() -> Durability {
    match std::env::var("SHOAL_CRASH_DURABILITY").as_deref() {
        Ok("relaxed") => Durability::Relaxed,
        _ => Durability::Full,
    }
}

/// The child: random transactions until killed, one stdout line per acknowledged commit:
/// `ins <actor> <txid> <path>` or `del <actor> <txid> <path>` (path: `b` one batch, `s`
/// staged: larger than the memory share, its pages staged in the kv before the commit).
fn crash_child() {
    let dir = std::env::var("SHOAL_CRASH_CHILD").unwrap();
    let base: i64 = std::env::var("SHOAL_CRASH_BASE").unwrap().parse().unwrap();
    let seed: u64 = std::env::var("SHOAL_CRASH_SEED").unwrap().parse().unwrap();
    let kv = engine(&std::env::var("SHOAL_CRASH_KV").unwrap());
    let store = Store::open(&dir, config(durability_from_env(), kv)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..ACTORS {
        store
            .with_actor(&actor(i), |c| -> shoal::Result<_> {
                Ok(c.execute_batch(
                    "CREATE TABLE IF NOT EXISTS txlog(txid INTEGER PRIMARY KEY, n INTEGER NOT NULL);
                     CREATE TABLE IF NOT EXISTS data(txid INTEGER NOT NULL, k INTEGER NOT NULL, v BLOB);
                     CREATE INDEX IF NOT EXISTS data_by_txid ON data(txid);",
                )?)
            })
            .unwrap();
    }
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut rng = fastrand::Rng::with_seed(seed);
    let vfs = store
        .vfs()
        .expect("the crash harness runs on the kv backing");
    for txid in base.. {
        let i = rng.usize(0..ACTORS);
        let name = actor(i);
        let staged_before = vfs.stats(&name).unwrap().unwrap_or_default().staged_commits;
        let conn = store.actor(&name).unwrap();
        let roll = rng.u32(0..100);
        // Deletes keep each actor at about MAX_KEPT transactions, so a long run's data
        // (and the parent's checks after each kill) stay bounded.
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM txlog", [], |r| r.get(0))
            .unwrap();
        let line = if roll < 12 || kept > MAX_KEPT {
            // Delete the oldest transaction: its marker and all its rows, atomically.
            let oldest: Option<i64> = conn
                .query_row("SELECT min(txid) FROM txlog", [], |r| r.get(0))
                .unwrap();
            let Some(old) = oldest else { continue };
            conn.execute_batch(&format!(
                "BEGIN; DELETE FROM data WHERE txid = {old}; DELETE FROM txlog WHERE txid = {old}; COMMIT;"
            ))
            .unwrap();
            format!("del {i} {old}")
        } else {
            // Small transactions are one batch; one in ten writes ~1.3 MB, more than the
            // page cache and the 1 MiB memory share hold, and is staged.
            let (n, size) = if roll < 22 {
                (1200, 1000)
            } else {
                (rng.usize(1..6), 100)
            };
            let tx = conn.unchecked_transaction().unwrap();
            tx.execute("INSERT INTO txlog VALUES (?1, ?2)", (txid, n as i64))
                .unwrap();
            for k in 0..n {
                tx.execute(
                    "INSERT INTO data VALUES (?1, ?2, randomblob(?3))",
                    (txid, k as i64, size as i64),
                )
                .unwrap();
            }
            tx.commit().unwrap();
            format!("ins {i} {txid}")
        };
        drop(conn);
        let staged = vfs.stats(&name).unwrap().unwrap_or_default().staged_commits > staged_before;
        writeln!(out, "{line} {}", if staged { "s" } else { "b" }).unwrap();
        out.flush().unwrap();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Insert(i64),
    Delete(i64),
}

/// The acknowledged history, per actor: the state last verified plus events since.
#[derive(Default)]
struct Model {
    base: HashMap<usize, BTreeSet<i64>>,
    events: HashMap<usize, Vec<Event>>,
}

fn apply(mut set: BTreeSet<i64>, events: &[Event]) -> BTreeSet<i64> {
    for e in events {
        match e {
            Event::Insert(t) => set.insert(*t),
            Event::Delete(t) => set.remove(t),
        };
    }
    set
}

#[derive(Default)]
struct Totals {
    acks: usize,
    staged_acks: usize,
    lost: usize,
}

/// Opens the store after a kill and checks every actor against the model; then makes
/// what was found the model's new base.
fn verify(
    dir: &Path,
    durability: Durability,
    kv: KvEngine,
    model: &mut Model,
    cycle: usize,
    totals: &mut Totals,
) {
    let store = Store::open(dir, config(durability, kv)).unwrap();
    let mut in_flight_seen = 0;
    for i in 0..ACTORS {
        let name = actor(i);
        if !store.actor_exists(&name).unwrap() {
            assert!(
                model.events.get(&i).is_none_or(Vec::is_empty),
                "cycle {cycle}: {name} vanished"
            );
            continue;
        }
        let report = store.check_actor(&name).unwrap();
        assert!(
            report.is_ok(),
            "cycle {cycle}: {name} failed its check: {report:?}"
        );
        let actor = store.actor(&name).unwrap();
        let Ok(markers) = actor
            .prepare("SELECT txid, n FROM txlog")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
        else {
            // The schema itself was in flight when the child was killed.
            continue;
        };
        let counts: HashMap<i64, i64> = actor
            .prepare("SELECT txid, count(*) FROM data GROUP BY txid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (txid, n) in &markers {
            assert_eq!(
                counts.get(txid).copied().unwrap_or(0),
                *n,
                "cycle {cycle}: {name} tx {txid} is torn"
            );
        }
        let found: BTreeSet<i64> = markers.iter().map(|(t, _)| *t).collect();
        for txid in counts.keys() {
            assert!(
                found.contains(txid),
                "cycle {cycle}: {name} has rows of tx {txid} without its marker"
            );
        }
        let base = model.base.remove(&i).unwrap_or_default();
        let events = model.events.remove(&i).unwrap_or_default();
        let all = apply(base.clone(), &events);
        let exact = found == all;
        let one_off = found.symmetric_difference(&all).count() == 1;
        match durability {
            Durability::Full => {
                // Only the single transaction in flight at the kill may differ.
                assert!(
                    exact || (one_off && in_flight_seen == 0),
                    "cycle {cycle}: {name} lost acknowledged commits: found {found:?}, acknowledged {all:?}"
                );
                if !exact {
                    in_flight_seen += 1;
                }
            }
            Durability::Relaxed => {
                let prefix = (0..=events.len()).rev().find(|k| {
                    let state = apply(base.clone(), &events[..*k]);
                    state == found || state.symmetric_difference(&found).count() == 1
                });
                assert!(
                    prefix.is_some(),
                    "cycle {cycle}: {name} is not a prefix of its commits: found {found:?}, base {base:?}, events {events:?}"
                );
                totals.lost += events.len() - prefix.unwrap_or(0);
            }
        }
        model.base.insert(i, found);
    }
}

fn run_cycles(durability: Durability, engine_name: &str, default_cycles: usize) {
    let label = match durability {
        Durability::Full => "full",
        Durability::Relaxed => "relaxed",
    };
    let cycles: usize = std::env::var("SHOAL_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cycles);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut model = Model::default();
    let mut totals = Totals::default();
    let mut rng = fastrand::Rng::with_seed(0x5eed ^ cycles as u64);
    let started = Instant::now();
    for cycle in 0..cycles {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child", "cycles"])
            .env("SHOAL_CRASH_CHILD", &dir)
            .env("SHOAL_CRASH_BASE", ((cycle + 1) * 1_000_000).to_string())
            .env("SHOAL_CRASH_SEED", rng.u64(..).to_string())
            .env("SHOAL_CRASH_DURABILITY", label)
            .env("SHOAL_CRASH_KV", engine_name)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child is working, then let it run a random while.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.ends_with("ready") => break,
                Ok(_) => {} // the test harness's own lines
                Err(e) => panic!("cycle {cycle}: the child never became ready: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(rng.u64(5..250)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        for line in rx.try_iter() {
            let parts: Vec<&str> = line.split(' ').collect();
            let (kind, i, txid, path) = match parts[..] {
                [k, i, t, p] => (k, i.parse::<usize>().unwrap(), t.parse::<i64>().unwrap(), p),
                _ => continue, // "running 1 test" and the like from the test harness
            };
            let event = if kind == "ins" {
                Event::Insert(txid)
            } else {
                Event::Delete(txid)
            };
            model.events.entry(i).or_default().push(event);
            totals.acks += 1;
            totals.staged_acks += usize::from(path == "s");
        }
        verify(
            &dir,
            durability,
            engine(engine_name),
            &mut model,
            cycle,
            &mut totals,
        );
    }
    println!(
        "{engine_name}, {label}: {cycles} kill cycles in {:.1} s, {} acknowledged commits ({} staged), {} acknowledged commits lost",
        started.elapsed().as_secs_f64(),
        totals.acks,
        totals.staged_acks,
        totals.lost
    );
    assert!(
        totals.acks > cycles,
        "the child did too little work to test anything"
    );
    assert!(totals.staged_acks > 0, "no staged commit was exercised");
    // With full durability a lost commit already failed its actor's check in `verify`,
    // so `totals.lost` counts relaxed losses only.
}

/// The harness runs on a SQLite built as the hosts' are, without
/// SQLITE_ENABLE_BATCH_ATOMIC_WRITE (.cargo/config.toml): commits need no special build.
fn the_linked_sqlite_is_the_build_asked_for() {
    let has: bool = rusqlite::Connection::open_in_memory()
        .unwrap()
        .query_row(
            "SELECT sqlite_compileoption_used('ENABLE_BATCH_ATOMIC_WRITE')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        !has,
        "the bundled SQLite has ENABLE_BATCH_ATOMIC_WRITE; hosts' do not"
    );
}

fn crash_cycles_full_durability() {
    run_cycles(Durability::Full, "fjall", 50);
}

fn crash_cycles_relaxed_durability() {
    run_cycles(Durability::Relaxed, "fjall", 50);
}

#[cfg(feature = "sled")]
fn crash_cycles_full_durability_on_sled() {
    run_cycles(Durability::Full, "sled", 25);
}

/// Rows of the file the import child imports.
const IMPORT_ROWS: i64 = 1000;

/// The import child: imports `SHOAL_CRASH_IMPORT` as actor `imp` and deletes it again,
/// until killed.
fn crash_import_child() {
    let dir = std::env::var("SHOAL_CRASH_CHILD").unwrap();
    let source = std::env::var("SHOAL_CRASH_IMPORT").unwrap();
    let backing = std::env::var("SHOAL_CRASH_BACKING")
        .unwrap()
        .parse::<Backing>()
        .unwrap();
    let store = Store::open(&dir, import_config(backing)).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    loop {
        if store.actor_exists("imp").unwrap() {
            store.delete_actor("imp").unwrap();
        }
        store.import_actor("imp", &source).unwrap();
        // Kills then also land while the whole actor is there.
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn import_config(backing: Backing) -> Config {
    Config::default()
        .with_backing(backing)
        .with_memory_budget(64 << 20)
}

fn imported_rows(store: &Store) -> i64 {
    store
        .with_actor("imp", |c| -> shoal::Result<_> {
            Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?)
        })
        .unwrap()
}

/// Starts child `which` (`<binary> child <which>`) with `env`, and returns once it says
/// it is ready.
fn start_child(which: &str, env: &[(&str, &std::ffi::OsStr)], cycle: usize) -> std::process::Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child", which])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.ends_with("ready"))),
        "cycle {cycle}: the child never became ready"
    );
    child
}

fn crash_during_import(backing: Backing, cycles: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let source = tmp.path().join("source.db");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TABLE t(v);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {IMPORT_ROWS})
             INSERT INTO t SELECT randomblob(3000) FROM n;"
        ))
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(0x1a7 ^ cycles as u64);
    let (mut whole, mut absent) = (0, 0);
    for cycle in 0..cycles {
        let mut child = start_child(
            "import",
            &[
                ("SHOAL_CRASH_CHILD", dir.as_os_str()),
                ("SHOAL_CRASH_IMPORT", source.as_os_str()),
                ("SHOAL_CRASH_BACKING", backing.as_str().as_ref()),
            ],
            cycle,
        );
        std::thread::sleep(Duration::from_millis(rng.u64(5..250)));
        child.kill().unwrap();
        child.wait().unwrap();

        let store = Store::open(&dir, import_config(backing)).unwrap();
        if let Some(vfs) = store.vfs() {
            let names = shoal_testkit::catalog::names(vfs.kv());
            assert!(
                names.iter().all(|n| n == "imp"),
                "cycle {cycle}: leftovers {names:?}"
            );
        }
        let staged: Vec<_> = std::fs::read_dir(dir.join("staging")).unwrap().collect();
        assert!(
            staged.is_empty(),
            "cycle {cycle}: staging leftovers {staged:?}"
        );
        if store.actor_exists("imp").unwrap() {
            assert!(store.check_actor("imp").unwrap().is_ok(), "cycle {cycle}");
            assert_eq!(
                imported_rows(&store),
                IMPORT_ROWS,
                "cycle {cycle}: a partial import"
            );
            whole += 1;
            store.delete_actor("imp").unwrap();
        } else {
            absent += 1;
        }
        // A retry works.
        store.import_actor("imp", &source).unwrap();
        assert_eq!(imported_rows(&store), IMPORT_ROWS, "cycle {cycle}");
        store.delete_actor("imp").unwrap();
    }
    println!(
        "{}: {cycles} kills during import: {whole} left the whole actor, {absent} none",
        backing.as_str()
    );
}

fn crash_during_import_kv() {
    crash_during_import(Backing::Kv, 20);
}

fn crash_during_import_files() {
    crash_during_import(Backing::Files, 20);
}

/// Rows of the actor `history_child` restores, forks and collects (about 9 MB, so each
/// restore and fork settles several batches).
const HISTORY_ROWS: i64 = 2_500;

fn history_config() -> Config {
    Config::default()
        .with_memory_budget(64 << 20)
        .with_history(Some(Duration::from_secs(3600)), 1 << 30)
}

/// The history child: restores actor `h` to its restore points `a` (every `v` 0) and `b`
/// (every `v` 1), forks it at `a` into `f` and deletes the fork, writes actor `j` and
/// collects every actor's history, over and over until killed.
fn history_child() {
    let dir = std::env::var("SHOAL_CRASH_CHILD").unwrap();
    let store = Store::open(&dir, history_config()).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for i in 0.. {
        for label in ["a", "b"] {
            store
                .restore_actor("h", &shoal::PointInTime::Label(label.into()))
                .unwrap();
        }
        store
            .fork_actor("h", Some(&shoal::PointInTime::Label("a".into())), "f")
            .unwrap();
        // Kills then also land while the fork exists.
        std::thread::sleep(Duration::from_millis(100));
        store.delete_actor("f").unwrap();
        store
            .with_actor("j", |c| -> shoal::Result<_> {
                Ok(c.execute("UPDATE t SET v = ?1", [i])?)
            })
            .unwrap();
        store.collect_history().unwrap();
    }
}

fn count_and_sum(store: &Store, actor: &str) -> (i64, i64) {
    store
        .with_actor(actor, |c| -> shoal::Result<_> {
            Ok(c.query_row("SELECT count(*), total(v) FROM t", [], |r| {
                Ok((r.get(0)?, r.get::<_, f64>(1)? as i64))
            })?)
        })
        .unwrap()
}

/// SIGKILL while a child restores, forks and collects: afterwards the actor is in one of
/// its two states, whole, a fork is absent or whole, and both still restore.
fn crash_during_restore_fork_and_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    {
        let store = Store::open(&dir, history_config()).unwrap();
        let sql = |actor: &str, sql: &str| {
            store
                .with_actor(actor, |c| -> shoal::Result<_> { Ok(c.execute_batch(sql)?) })
                .unwrap();
        };
        sql(
            "h",
            &format!(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v, b);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {HISTORY_ROWS})
                 INSERT INTO t(v, b) SELECT 0, zeroblob(3000) FROM n;"
            ),
        );
        store.pin_actor("h", "a", None).unwrap();
        sql("h", "UPDATE t SET v = 1");
        store.pin_actor("h", "b", None).unwrap();
        sql("j", "CREATE TABLE t(v); INSERT INTO t VALUES (0)");
    }
    let cycles = 12;
    let mut rng = fastrand::Rng::with_seed(0x415);
    let mut seen = [0usize; 2];
    let mut forks = 0;
    for cycle in 0..cycles {
        let mut child = start_child("history", &[("SHOAL_CRASH_CHILD", dir.as_os_str())], cycle);
        std::thread::sleep(Duration::from_millis(rng.u64(20..1_500)));
        child.kill().unwrap();
        child.wait().unwrap();

        let store = Store::open(&dir, history_config()).unwrap();
        let (n, sum) = count_and_sum(&store, "h");
        assert_eq!(n, HISTORY_ROWS, "cycle {cycle}");
        assert!(
            sum == 0 || sum == HISTORY_ROWS,
            "cycle {cycle}: a mixed state, sum {sum}"
        );
        seen[usize::from(sum != 0)] += 1;
        assert!(store.check_actor("h").unwrap().is_ok(), "cycle {cycle}");
        if store.actor_exists("f").unwrap() {
            assert_eq!(
                count_and_sum(&store, "f"),
                (HISTORY_ROWS, 0),
                "cycle {cycle}"
            );
            assert!(store.check_actor("f").unwrap().is_ok(), "cycle {cycle}");
            store.delete_actor("f").unwrap();
            forks += 1;
        }
        assert!(store.check_actor("j").unwrap().is_ok(), "cycle {cycle}");
        let names = store.list_actors().unwrap();
        assert_eq!(names, ["h", "j"], "cycle {cycle}: leftovers");
        // Both points still restore.
        for (label, want) in [("a", 0), ("b", HISTORY_ROWS)] {
            store
                .restore_actor("h", &shoal::PointInTime::Label(label.into()))
                .unwrap();
            assert_eq!(
                count_and_sum(&store, "h"),
                (HISTORY_ROWS, want),
                "cycle {cycle}"
            );
        }
    }
    println!(
        "{cycles} kills during restore, fork and collection: {} left state a, {} state b, \
         {forks} a whole fork",
        seen[0], seen[1]
    );
}

/// Rows the child of `killed_creation` writes into its one actor, in one transaction.
const CREATION_ROWS: i64 = 50;

/// The child of `killed_creation`: says it is about to open, creates a store in a fresh
/// directory, writes one actor in one transaction and says so.
fn creation_child() {
    let dir = std::env::var("SHOAL_CREATION_CHILD").unwrap();
    let kv = engine(&std::env::var("SHOAL_CRASH_KV").unwrap());
    let mut out = std::io::stdout().lock();
    writeln!(out, "opening").unwrap();
    out.flush().unwrap();
    let store = Store::open(&dir, config(Durability::Full, kv)).unwrap();
    store
        .with_actor("only", |c| -> shoal::Result<_> {
            Ok(c.execute_batch(&format!(
                "BEGIN;
                 CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB NOT NULL);
                 WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < {CREATION_ROWS})
                 INSERT INTO t SELECT k, randomblob(100) FROM n;
                 COMMIT;"
            ))?)
        })
        .unwrap();
    writeln!(out, "written").unwrap();
    out.flush().unwrap();
}

/// What a store killed while it was created held when it was opened again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Created {
    /// No actor: the child was killed before it made one.
    NoActor,
    /// The actor exists without its table: its first commit was not made.
    Empty,
    /// The actor holds every row of its first commit.
    Whole,
}

/// Opens the store at `dir`, killed while it was being created (`round`, `delay` and
/// whether the child acknowledged its commit name the kill), and checks its one actor.
fn check_created(
    dir: &Path,
    engine_name: &str,
    round: u64,
    delay: Duration,
    acknowledged: bool,
) -> Created {
    let at = format!("{engine_name}, round {round} (killed {delay:?} into the creation)");
    let store = Store::open(dir, config(Durability::Full, engine(engine_name)))
        .unwrap_or_else(|e| panic!("{at}: the store does not open: {e}"));
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().ends_with(".creating"))
        .collect();
    assert!(leftovers.is_empty(), "{at}: left over: {leftovers:?}");
    if !store.actor_exists("only").unwrap() {
        assert!(!acknowledged, "{at}: the acknowledged actor vanished");
        return Created::NoActor;
    }
    let report = store.check_actor("only").unwrap();
    assert!(report.is_ok(), "{at}: {report:?}");
    let rows: Option<i64> = store
        .with_actor("only", |c| -> shoal::Result<_> {
            let tables: i64 = c.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 't'",
                [],
                |r| r.get(0),
            )?;
            if tables == 0 {
                return Ok(None);
            }
            Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .map(Some)?)
        })
        .unwrap();
    match rows {
        None => {
            assert!(!acknowledged, "{at}: the acknowledged commit vanished");
            Created::Empty
        }
        Some(n) => {
            assert_eq!(n, CREATION_ROWS, "{at}: the first commit is torn");
            Created::Whole
        }
    }
}

/// Rounds of one sweep of [`creation_kill_delay`].
const CREATION_SWEEP: u64 = 81;

/// How long after the child of `round` starts to open its store it is killed: 0 to 30 ms
/// in steps of 0.5 ms, where the engine writes its first files, then to 330 ms in steps of
/// 15 ms, through the rest of a fjall creation (closing the new engine waits up to 250 ms
/// for a fjall thread) and the first commit.
fn creation_kill_delay(round: u64) -> Duration {
    match round % CREATION_SWEEP {
        fine @ 0..=60 => Duration::from_micros(fine * 500),
        coarse => Duration::from_millis(30 + (coarse - 60) * 15),
    }
}

/// Kills a child while it creates a store, after the delays of [`creation_kill_delay`],
/// and checks that every store then opens, and that its one actor is absent, empty (its
/// first commit was not made) or whole. Each store is checked on a thread of its own while
/// the next child runs, because opening and closing a fjall store waits for its
/// background threads to wake (see kv/src/fjall_kv.rs).
fn killed_creation(engine_name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let rounds: u64 = std::env::var("SHOAL_CREATION_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CREATION_SWEEP);
    let outcomes: Vec<Created> = std::thread::scope(|scope| {
        let mut checks = Vec::new();
        for round in 0..rounds {
            let dir = tmp.path().join(format!("store-{round}"));
            let delay = creation_kill_delay(round);
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["child", "creation"])
                .env("SHOAL_CREATION_CHILD", &dir)
                .env("SHOAL_CRASH_KV", engine_name)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            while !lines.next().unwrap().unwrap().ends_with("opening") {}
            std::thread::sleep(delay);
            // Fails only if the child has been reaped, which `wait` below does.
            child.kill().unwrap();
            child.wait().unwrap();
            let acknowledged = lines.any(|l| l.is_ok_and(|l| l.ends_with("written")));
            checks.push(
                scope.spawn(move || check_created(&dir, engine_name, round, delay, acknowledged)),
            );
        }
        checks
            .into_iter()
            .map(|c| c.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let count = |what| outcomes.iter().filter(|&&o| o == what).count();
    println!(
        "{engine_name}: {rounds} kills during creation; then no actor {}, an empty actor {}, a whole actor {}",
        count(Created::NoActor),
        count(Created::Empty),
        count(Created::Whole)
    );
}

fn killed_creation_leaves_a_store_that_opens() {
    killed_creation("fjall");
}

#[cfg(feature = "sled")]
fn killed_creation_leaves_a_store_that_opens_on_sled() {
    killed_creation("sled");
}
