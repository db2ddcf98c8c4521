//! Many hosts, one PostgreSQL store: actors moving between processes, a paused host
//! fenced, a killed host taken over with nothing acknowledged lost, a server restarted
//! under load. Each host is a real process: this test binary run again as a child
//! (`child_host`), driven line by line over its standard input.
//!
//! Needs a PostgreSQL server (SHOAL_PG_URL, set by `scripts/with-postgres`); without one
//! the tests are skipped, unless CI is set (see `shoal_testkit::pg`).

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use shoal::{Config, Store};
use shoal_testkit::pg::PgSchema;

/// What a child host adds to each row it writes for that row's twin, written in the same
/// transaction.
const TWIN: i64 = 1 << 40;

/// The lease the hosts of these tests take: short, so takeovers are quick.
const LEASE: Duration = Duration::from_millis(1_000);

fn config(url: &str, host: &str) -> Config {
    Config::default()
        .with_postgres(url)
        .with_lease_duration(LEASE)
        .with_host_id(host)
        .with_memory_budget(32 << 20)
}

/// Runs `body` unless another test holds the server exclusively (the restart test).
fn shared<T>(body: impl FnOnce() -> T) -> T {
    let _shared = SERVER
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    body()
}

static SERVER: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The child side: a host on the store named by the environment, taking commands from
/// standard input, one a line, and answering each with one line starting with `@@`:
/// - `w N`: insert rows N and N + [`TWIN`] into actor `x` (one durable transaction, so a
///   torn one would show as half a pair): `@@ ok N` once it is acknowledged, `@@ err
///   <message>` if not;
/// - `loop N`: insert rows N, N+1, ... until killed, answering each as `w` does;
/// - `sleep`: put every actor to sleep (releasing its lease): `@@ ok`;
/// - `q`: exit.
#[test]
fn child_host() {
    let (Ok(url), Ok(host), Ok(dir)) = (
        std::env::var("HOSTS_URL"),
        std::env::var("HOSTS_ID"),
        std::env::var("HOSTS_DIR"),
    ) else {
        return; // not a child: nothing to do
    };
    let store = Store::open(&dir, config(&url, &host)).unwrap();
    let out = std::io::stdout();
    let write = |n: i64| -> String {
        match store.with_actor("x", |c| -> shoal::Result<()> {
            c.execute_batch("CREATE TABLE IF NOT EXISTS t(n INTEGER PRIMARY KEY)")?;
            c.execute_batch("BEGIN")?;
            c.execute("INSERT INTO t VALUES (?1)", [n])?;
            c.execute("INSERT INTO t VALUES (?1)", [n + TWIN])?;
            c.execute_batch("COMMIT")?;
            Ok(())
        }) {
            Ok(()) => format!("@@ ok {n}"),
            Err(e) => format!("@@ err {e}"),
        }
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        let answer = match (words.next(), words.next().map(|n| n.parse::<i64>())) {
            (Some("w"), Some(Ok(n))) => write(n),
            (Some("loop"), Some(Ok(first))) => {
                for n in first.. {
                    let answer = write(n);
                    writeln!(out.lock(), "{answer}").unwrap();
                }
                unreachable!()
            }
            (Some("sleep"), _) => {
                store.sleep_all();
                "@@ ok".to_owned()
            }
            (Some("q"), _) => return,
            _ => format!("@@ err unknown command {line:?}"),
        };
        writeln!(out.lock(), "{answer}").unwrap();
        out.lock().flush().unwrap();
    }
}

/// A host process.
struct Host {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Host {
    fn start(url: &str, id: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_host", "--nocapture", "--test-threads=1"])
            .env("HOSTS_URL", url)
            .env("HOSTS_ID", id)
            .env("HOSTS_DIR", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Host {
            input: child.stdin.take().unwrap(),
            output: BufReader::new(child.stdout.take().unwrap()),
            child,
            _dir: dir,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.input, "{line}").unwrap();
        self.input.flush().unwrap();
    }

    /// The next answer (`@@` stripped); `None` once the child is gone.
    fn answer(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.output.read_line(&mut line).unwrap_or(0) == 0 {
                return None;
            }
            // libtest prints `test child_host ... ` before the first answer, on its line.
            if let Some(at) = line.find("@@ ") {
                return Some(line.trim_end()[at + 3..].to_owned());
            }
        }
    }

    fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.answer().expect("the host process died")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows of actor `x` (twins left out, after checking each row has its twin: no
/// transaction is torn).
fn rows(store: &Store) -> Vec<i64> {
    let all: Vec<i64> = store
        .with_actor("x", |c| -> shoal::Result<Vec<i64>> {
            let mut stmt = c.prepare("SELECT n FROM t ORDER BY n")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .unwrap();
    let (rows, twins): (Vec<i64>, Vec<i64>) = all.iter().partition(|&&n| n < TWIN);
    // Rows the checking host wrote itself (<= 0, without twins) are left as they are.
    let paired: Vec<i64> = rows.iter().copied().filter(|&n| n > 0).collect();
    let untwinned: Vec<i64> = twins.iter().map(|t| t - TWIN).collect();
    assert_eq!(paired, untwinned, "a transaction is torn");
    rows
}

fn integrity(store: &Store) -> String {
    store
        .with_actor("x", |c| -> shoal::Result<String> {
            Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
        })
        .unwrap()
}

#[test]
fn an_actor_moves_from_one_host_to_another() {
    let Some(schema) = PgSchema::new("an_actor_moves") else {
        return;
    };
    shared(|| {
        let mut a = Host::start(&schema.url, "host-a");
        assert_eq!(a.ask("w 1"), "ok 1");
        assert_eq!(a.ask("w 2"), "ok 2");
        // Asleep, a gives the lease back: b takes the actor at once, without waiting.
        assert_eq!(a.ask("sleep"), "ok");
        let mut b = Host::start(&schema.url, "host-b");
        let started = Instant::now();
        assert_eq!(b.ask("w 3"), "ok 3");
        assert!(started.elapsed() < LEASE, "{:?}", started.elapsed());
        assert_eq!(b.ask("sleep"), "ok");
        // And back.
        assert_eq!(a.ask("w 4"), "ok 4");
        a.send("q");
        b.send("q");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(&schema.url, "checker")).unwrap();
        assert_eq!(rows(&store), [1, 2, 3, 4]);
        assert_eq!(integrity(&store), "ok");
    });
}

#[test]
fn a_paused_host_is_fenced_when_it_wakes() {
    let Some(schema) = PgSchema::new("a_paused_host") else {
        return;
    };
    shared(|| {
        let mut a = Host::start(&schema.url, "host-a");
        assert_eq!(a.ask("w 1"), "ok 1");
        a.signal("-STOP");
        // b waits for a's lease to run out, then takes the actor over.
        let dir = tempfile::tempdir().unwrap();
        let b = Store::open(dir.path(), config(&schema.url, "host-b")).unwrap();
        let started = Instant::now();
        b.with_actor("x", |c| -> shoal::Result<()> {
            c.execute("INSERT INTO t VALUES (2), (?1)", [2 + TWIN])?;
            Ok(())
        })
        .unwrap();
        assert!(started.elapsed() < LEASE * 3, "{:?}", started.elapsed());
        a.signal("-CONT");
        // a still believes it owns the actor: its commit is refused whole (fenced), or,
        // if its renewer woke first and found the lease lost, its idle connection is
        // closed at checkout and the reopen finds the actor leased to b. Either way a
        // writes nothing.
        let answer = a.ask("w 3");
        assert!(
            answer.starts_with("err")
                && (answer.contains("fenced") || answer.contains("leased to host \"host-b\"")),
            "{answer}"
        );
        assert_eq!(rows(&b), [1, 2], "b's data is intact");
        assert_eq!(integrity(&b), "ok");
        // Once b lets go, a opens the actor again (acquiring a new lease) and writes.
        b.sleep_all();
        assert_eq!(a.ask("w 4"), "ok 4");
        a.send("sleep");
        assert_eq!(a.answer().as_deref(), Some("ok"));
        assert_eq!(rows(&b), [1, 2, 4]);
    });
}

#[test]
fn a_killed_host_loses_nothing_it_acknowledged_and_is_taken_over() {
    let Some(schema) = PgSchema::new("a_killed_host") else {
        return;
    };
    shared(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut acknowledged = Vec::new();
        let mut takeovers = Vec::new();
        let mut next = 1;
        for round in 0..3i64 {
            let mut a = Host::start(&schema.url, &format!("host-a{round}"));
            a.send(&format!("loop {next}"));
            // Kill it mid-stream, at a different moment each round.
            let until = Instant::now() + Duration::from_millis(300 + 150 * round.unsigned_abs());
            while Instant::now() < until {
                match a.answer() {
                    Some(answer) => {
                        let n: i64 = answer
                            .strip_prefix("ok ")
                            .unwrap_or_else(|| panic!("{answer}"))
                            .parse()
                            .unwrap();
                        acknowledged.push(n);
                    }
                    None => panic!("the host died early"),
                }
            }
            a.signal("-KILL");
            let killed = Instant::now();
            let _ = a.child.wait();
            // Answers already written before the kill were acknowledged too.
            while let Some(answer) = a.answer() {
                if let Some(n) = answer.strip_prefix("ok ") {
                    acknowledged.push(n.parse().unwrap());
                }
            }
            let b =
                Store::open(dir.path(), config(&schema.url, &format!("host-b{round}"))).unwrap();
            b.with_actor("x", |c| -> shoal::Result<()> {
                c.execute("INSERT INTO t VALUES (0 - ?1)", [round + 1])?;
                Ok(())
            })
            .unwrap();
            takeovers.push(killed.elapsed());
            let found = rows(&b);
            assert_eq!(integrity(&b), "ok");
            for n in &acknowledged {
                assert!(found.contains(n), "acknowledged row {n} is lost");
            }
            next = found.iter().max().copied().unwrap_or(0) + 1;
            drop(b);
        }
        assert!(acknowledged.len() > 10, "{}", acknowledged.len());
        eprintln!(
            "takeover after a kill, lease {LEASE:?}: {:?}",
            takeovers.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
        );
        for t in takeovers {
            assert!(t < LEASE * 3, "{t:?}");
        }
    });
}

#[test]
fn a_server_restart_under_load_gives_clear_errors_then_recovers() {
    let Some(schema) = PgSchema::new("a_server_restart") else {
        return;
    };
    let Ok(pg_ctl) = std::env::var("SHOAL_PG_CTL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "SHOAL_PG_CTL is not set: run the tests under scripts/with-postgres"
        );
        eprintln!("skipped: SHOAL_PG_CTL is not set");
        return;
    };
    let _exclusive = SERVER
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(&schema.url, "host-a")).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    // The row being written when the server was back.
    let attempted = std::sync::atomic::AtomicI64::new(0);
    let mut back_at = 0;
    let (acknowledged, errors) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let (mut acknowledged, mut errors) = (Vec::new(), Vec::new());
            let mut n = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                attempted.store(n, std::sync::atomic::Ordering::SeqCst);
                match store.with_actor("x", |c| -> shoal::Result<()> {
                    c.execute_batch("CREATE TABLE IF NOT EXISTS t(n INTEGER PRIMARY KEY)")?;
                    c.execute("INSERT INTO t VALUES (?1), (?2)", [n, n + TWIN])?;
                    Ok(())
                }) {
                    Ok(()) => acknowledged.push(n),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (acknowledged, errors)
        });
        std::thread::sleep(Duration::from_millis(300));
        let status = Command::new(&pg_ctl)
            .args(["-w", "-m", "immediate", "restart"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        back_at = attempted.load(std::sync::atomic::Ordering::SeqCst);
        // Writes go on after the restart, without reopening the store.
        std::thread::sleep(Duration::from_millis(1_500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.join().unwrap()
    });
    eprintln!(
        "{} commits acknowledged, {} refused; errors: {:?}",
        acknowledged.len(),
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>()
    );
    let found = rows(&store);
    let lost: Vec<i64> = acknowledged
        .iter()
        .copied()
        .filter(|n| !found.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged rows lost: {lost:?}; found {} rows up to {:?}; errors {errors:?}",
        found.len(),
        found.last()
    );
    assert_eq!(integrity(&store), "ok");
    let last = *acknowledged.last().expect("no commit acknowledged");
    assert!(
        last > back_at,
        "no commit after the restart (the last was {last})"
    );
    assert!(
        errors.len() < acknowledged.len(),
        "{} errors against {} commits",
        errors.len(),
        acknowledged.len()
    );
    // The last commits came after the restart: it recovered.
    assert!(found.contains(&last));
    for e in &errors {
        assert!(
            e.contains("unavailable") || e.contains("restart"),
            "an unclear error: {e}"
        );
    }
}
