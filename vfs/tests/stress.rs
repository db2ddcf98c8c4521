//! Concurrency stress: several threads run random transactions on several databases of
//! one store, every database shared by every thread (one connection per thread and
//! database), and the result must be what SQLite's own serial semantics give.
//!
//! SQLite serialises writers per database (one RESERVED lock at a time, lock.rs) and a
//! transaction sees a consistent snapshot. So every write transaction here first
//! increments the database's `seq` counter row and logs the value it got: committed
//! transactions of one database must hold exactly the values 1..=K (a duplicate would
//! be a lost update, a gap a commit that vanished), and replaying them in that order on
//! stock SQLite (an in-memory rusqlite database) must give exactly shoal's final
//! contents. Autocommit statements that only commute (counter increments, inserts of
//! unique rows in their own tables) are replayed in any order. Readers check
//! invariants every committed state keeps, and that a database never goes back in time.
//!
//! Operations are bounded (not wall time) and chosen by seeded per-thread generators
//! (`SHOAL_STRESS_SEED` overrides the seed); the interleaving is the scheduler's. A
//! watchdog fails the test if the workers do not finish in time, so a deadlock fails
//! instead of hanging CI.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};

use common::*;
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, params_from_iter};
use shoal_kv::MemKv;
use shoal_vfs::Vfs;

const THREADS: usize = 4;
const ACTORS: usize = 8;
const OPS_PER_THREAD: usize = 10_000;
/// Share of operations (percent) that go to actor-0, so threads contend on it.
const HOT_PERCENT: u64 = 40;
/// Keys of table `t` are drawn from 0..KEYS, so threads collide on rows.
const KEYS: i64 = 300;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const WATCHDOG: Duration = Duration::from_secs(120);
const DEFAULT_SEED: u64 = 0x5EED_5A0A;

const SCHEMA: &str = "
    CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL, n INTEGER NOT NULL, b BLOB);
    CREATE INDEX t_n ON t(n);
    CREATE TABLE seq(id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
    INSERT INTO seq VALUES (0, 0);
    CREATE TABLE agg(id INTEGER PRIMARY KEY CHECK (id = 0), total INTEGER NOT NULL,
                     rows INTEGER NOT NULL);
    INSERT INTO agg VALUES (0, 0, 0);
    CREATE TABLE hits(id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
    INSERT INTO hits VALUES (0, 0), (1, 0), (2, 0), (3, 0);
    CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL);
";

/// Every write transaction ends by restating the aggregate, which readers check.
const RESTATE_AGG: &str = "UPDATE agg SET total = (SELECT coalesce(sum(n), 0) FROM t), \
                           rows = (SELECT count(*) FROM t)";
const BUMP_SEQ: &str = "UPDATE seq SET n = n + 1 RETURNING n";
const AGG_HOLDS: &str = "SELECT (SELECT total FROM agg) = (SELECT coalesce(sum(n), 0) FROM t) \
                         AND (SELECT rows FROM agg) = (SELECT count(*) FROM t)";

/// A seeded generator with the draws the workload makes.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n)
    }

    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + i64::try_from(self.below(u64::try_from(hi - lo).unwrap())).unwrap()
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// Random bytes, `lo..hi` of them.
    fn bytes(&mut self, lo: i64, hi: i64) -> Vec<u8> {
        let len = self.range(lo, hi);
        (0..len).map(|_| self.0.u8(..)).collect()
    }

    /// Random lowercase text, `lo..hi` characters.
    fn text(&mut self, lo: i64, hi: i64) -> String {
        let len = self.range(lo, hi);
        (0..len)
            .map(|_| char::from(b'a' + (self.below(26) as u8)))
            .collect()
    }
}

/// One SQL statement with its parameters, as executed and as replayed.
#[derive(Debug, Clone)]
struct Stmt {
    sql: &'static str,
    params: Vec<Value>,
}

impl Stmt {
    fn run(&self, conn: &Connection) -> rusqlite::Result<usize> {
        conn.execute(self.sql, params_from_iter(self.params.iter()))
    }
}

/// A committed write transaction: its place in its database's commit order and what
/// it did (the seq bump and the aggregate restatement are implied).
#[derive(Debug)]
struct Committed {
    actor: usize,
    seq: i64,
    stmts: Vec<Stmt>,
}

/// What one worker did.
#[derive(Debug, Default)]
struct WorkerLog {
    committed: Vec<Committed>,
    /// Commutative autocommit statements that succeeded, per actor.
    commutative: Vec<(usize, Stmt)>,
    rolled_back: u64,
    busy_aborted: u64,
    reads: u64,
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// A random change to table `t`.
fn random_change(rng: &mut Rng) -> Stmt {
    match rng.below(10) {
        0..=4 => {
            // Mostly small rows, sometimes one with overflow pages.
            let (lo, hi) = if rng.chance(10) {
                (5_000, 20_000)
            } else {
                (0, 1_500)
            };
            Stmt {
                sql: "INSERT OR REPLACE INTO t(k, v, n, b) VALUES (?1, ?2, ?3, ?4)",
                params: vec![
                    Value::Integer(rng.range(0, KEYS)),
                    Value::Text(rng.text(0, 40)),
                    Value::Integer(rng.range(-1000, 1000)),
                    Value::Blob(rng.bytes(lo, hi)),
                ],
            }
        }
        5..=7 => {
            let lo = rng.range(0, KEYS);
            Stmt {
                sql: "UPDATE t SET n = n + ?1, v = ?2 WHERE k BETWEEN ?3 AND ?4",
                params: vec![
                    Value::Integer(rng.range(-50, 50)),
                    Value::Text(rng.text(8, 9)),
                    Value::Integer(lo),
                    Value::Integer(lo + rng.range(0, 10)),
                ],
            }
        }
        _ => {
            let lo = rng.range(0, KEYS);
            Stmt {
                sql: "DELETE FROM t WHERE k BETWEEN ?1 AND ?2",
                params: vec![Value::Integer(lo), Value::Integer(lo + rng.range(0, 5))],
            }
        }
    }
}

/// Enough rows to outgrow a 10-page cache and the overlay share: staged, under contention.
fn bulk_change(rng: &mut Rng) -> Vec<Stmt> {
    let n = rng.range(40, 80);
    (0..n)
        .map(|_| Stmt {
            sql: "INSERT OR REPLACE INTO t(k, v, n, b) VALUES (?1, ?2, ?3, ?4)",
            params: vec![
                Value::Integer(rng.range(0, KEYS)),
                Value::Text(rng.text(20, 21)),
                Value::Integer(rng.range(-1000, 1000)),
                Value::Blob(rng.bytes(1_000, 4_000)),
            ],
        })
        .collect()
}

/// How a transaction ended.
enum Ended {
    Committed(i64),
    RolledBack,
    Busy,
}

/// Runs one write transaction: BEGIN, the seq bump, `stmts`, optionally a change
/// undone by a savepoint, the aggregate, then COMMIT (or ROLLBACK when `commit` is
/// false). SQLITE_BUSY anywhere (after the busy timeout, or at once where waiting could
/// deadlock: a deferred transaction that read before writing) rolls back.
fn write_txn(
    conn: &Connection,
    begin: &str,
    read_first: bool,
    stmts: &[Stmt],
    undone: Option<&Stmt>,
    commit: bool,
) -> Ended {
    let body = || -> rusqlite::Result<i64> {
        conn.execute_batch(begin)?;
        if read_first {
            let _: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
        }
        let seq: i64 = conn.query_row(BUMP_SEQ, [], |r| r.get(0))?;
        for s in stmts {
            s.run(conn)?;
        }
        if let Some(s) = undone {
            conn.execute_batch("SAVEPOINT undo")?;
            s.run(conn)?;
            conn.execute_batch("ROLLBACK TO undo; RELEASE undo;")?;
        }
        conn.execute(RESTATE_AGG, [])?;
        Ok(seq)
    };
    let seq = match body() {
        Ok(seq) => seq,
        Err(e) if is_busy(&e) => {
            rollback(conn);
            return Ended::Busy;
        }
        Err(e) => panic!("write transaction failed: {e:?}"),
    };
    if !commit {
        conn.execute_batch("ROLLBACK").unwrap();
        return Ended::RolledBack;
    }
    // COMMIT can be busy (readers hold SHARED past the timeout); the transaction is
    // then still open, and is rolled back.
    match conn.execute_batch("COMMIT") {
        Ok(()) => Ended::Committed(seq),
        Err(e) if is_busy(&e) => {
            rollback(conn);
            Ended::Busy
        }
        Err(e) => panic!("COMMIT failed: {e:?}"),
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK").unwrap();
    }
}

/// Reads one actor: invariants of every committed state, and no going back in time.
fn read(rng: &mut Rng, conn: &Connection, last_seq: &mut i64, log: &mut WorkerLog) {
    let outcome = (|| -> rusqlite::Result<()> {
        match rng.below(3) {
            0 => {
                let holds: bool = conn.query_row(AGG_HOLDS, [], |r| r.get(0))?;
                assert!(holds, "a reader saw a torn state (agg disagrees with t)");
            }
            1 => {
                // A read transaction sees one state throughout.
                conn.execute_batch("BEGIN")?;
                let s1: i64 = conn.query_row("SELECT n FROM seq", [], |r| r.get(0))?;
                let sum: (i64, i64) =
                    conn.query_row("SELECT coalesce(sum(n), 0), count(*) FROM t", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                let agg: (i64, i64) = conn.query_row("SELECT total, rows FROM agg", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                let s2: i64 = conn.query_row("SELECT n FROM seq", [], |r| r.get(0))?;
                conn.execute_batch("COMMIT")?;
                assert_eq!(s1, s2, "seq changed inside a read transaction");
                assert_eq!(sum, agg, "a read transaction saw a torn state");
                assert!(s1 >= *last_seq, "seq went back from {last_seq} to {s1}");
                *last_seq = s1;
            }
            _ => {
                let k = rng.range(0, KEYS);
                let _: Option<String> = conn
                    .query_row("SELECT v || length(b) FROM t WHERE k = ?1", [k], |r| {
                        r.get(0)
                    })
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                let s: i64 = conn.query_row("SELECT n FROM seq", [], |r| r.get(0))?;
                assert!(s >= *last_seq, "seq went back from {last_seq} to {s}");
                *last_seq = s;
            }
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => log.reads += 1,
        Err(e) if is_busy(&e) => {
            rollback(conn);
            log.busy_aborted += 1;
        }
        Err(e) => panic!("read failed: {e:?}"),
    }
}

fn worker(
    thread: usize,
    seed: u64,
    vfs: &Vfs,
    start: &Barrier,
    progress: &AtomicUsize,
) -> WorkerLog {
    let mut rng = Rng::new(seed ^ (thread as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let conns: Vec<Connection> = (0..ACTORS)
        .map(|a| {
            let conn = open(vfs, &format!("actor-{a}"));
            conn.busy_timeout(BUSY_TIMEOUT).unwrap();
            // Some connections spill, some keep a stored rollback journal, some read
            // through xFetch, some commit without waiting for the flush.
            if (thread + a).is_multiple_of(3) {
                conn.execute_batch("PRAGMA cache_size = 10").unwrap();
            }
            if (thread + a) % 5 == 2 {
                conn.execute_batch("PRAGMA journal_mode = DELETE").unwrap();
            }
            if (thread + a).is_multiple_of(2) {
                conn.execute_batch("PRAGMA mmap_size = 1048576").unwrap();
            }
            if (thread + a) % 4 == 1 {
                conn.execute_batch("PRAGMA shoal_durability = relaxed")
                    .unwrap();
            }
            conn
        })
        .collect();
    let mut last_seq = [0i64; ACTORS];
    let mut note = 0i64;
    let mut log = WorkerLog::default();
    start.wait();
    for _ in 0..OPS_PER_THREAD {
        let actor = if rng.chance(HOT_PERCENT) {
            0
        } else {
            usize::try_from(rng.below(ACTORS as u64)).unwrap()
        };
        let conn = &conns[actor];
        let choice = rng.below(100);
        let ended = if choice < 30 {
            // One change in its own transaction.
            let stmts = vec![random_change(&mut rng)];
            Some((
                write_txn(conn, "BEGIN IMMEDIATE", false, &stmts, None, true),
                stmts,
            ))
        } else if choice < 50 {
            // Several changes, sometimes one undone by a savepoint, sometimes all rolled
            // back.
            let n = rng.range(2, 7);
            let stmts: Vec<Stmt> = (0..n).map(|_| random_change(&mut rng)).collect();
            let undone = rng.chance(30).then(|| random_change(&mut rng));
            let commit = !rng.chance(25);
            let begin = if rng.chance(50) {
                "BEGIN IMMEDIATE"
            } else {
                "BEGIN"
            };
            Some((
                write_txn(conn, begin, false, &stmts, undone.as_ref(), commit),
                stmts,
            ))
        } else if choice < 55 {
            // A deferred transaction that reads before it writes: its upgrade may be
            // refused with SQLITE_BUSY at once (SQLite does not wait where waiting could
            // deadlock), and then it rolls back.
            let stmts = vec![random_change(&mut rng)];
            Some((write_txn(conn, "BEGIN", true, &stmts, None, true), stmts))
        } else if choice < 58 {
            let stmts = bulk_change(&mut rng);
            Some((
                write_txn(conn, "BEGIN IMMEDIATE", false, &stmts, None, true),
                stmts,
            ))
        } else if choice < 70 {
            // Autocommit statements whose effects commute.
            let stmt = if rng.chance(50) {
                Stmt {
                    sql: "UPDATE hits SET n = n + ?1 WHERE id = ?2",
                    params: vec![
                        Value::Integer(rng.range(1, 100)),
                        Value::Integer(rng.range(0, 4)),
                    ],
                }
            } else {
                note += 1;
                Stmt {
                    sql: "INSERT INTO notes(id, body) VALUES (?1, ?2)",
                    params: vec![
                        Value::Integer(i64::try_from(thread).unwrap() * 1_000_000 + note),
                        Value::Text(rng.text(0, 200)),
                    ],
                }
            };
            match stmt.run(conn) {
                Ok(_) => log.commutative.push((actor, stmt)),
                Err(e) if is_busy(&e) => log.busy_aborted += 1,
                Err(e) => panic!("autocommit statement failed: {e:?}"),
            }
            None
        } else {
            read(&mut rng, conn, &mut last_seq[actor], &mut log);
            None
        };
        match ended {
            Some((Ended::Committed(seq), stmts)) => {
                assert!(
                    seq > last_seq[actor],
                    "a commit got seq {seq} after this thread saw {}",
                    last_seq[actor]
                );
                last_seq[actor] = seq;
                log.committed.push(Committed { actor, seq, stmts });
            }
            Some((Ended::RolledBack, _)) => log.rolled_back += 1,
            Some((Ended::Busy, _)) => log.busy_aborted += 1,
            None => {}
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    log
}

/// Replays one actor's history on stock SQLite, in commit order.
fn replay(actor: usize, mut committed: Vec<&Committed>, commutative: &[&Stmt]) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    committed.sort_by_key(|c| c.seq);
    let seqs: Vec<i64> = committed.iter().map(|c| c.seq).collect();
    let expected: Vec<i64> = (1..=i64::try_from(committed.len()).unwrap()).collect();
    assert_eq!(
        seqs, expected,
        "actor-{actor}: committed transactions must hold seq 1..=K exactly once each"
    );
    for c in committed {
        conn.execute_batch("BEGIN").unwrap();
        let seq: i64 = conn.query_row(BUMP_SEQ, [], |r| r.get(0)).unwrap();
        assert_eq!(seq, c.seq);
        for s in &c.stmts {
            s.run(&conn).unwrap();
        }
        conn.execute(RESTATE_AGG, []).unwrap();
        conn.execute_batch("COMMIT").unwrap();
    }
    for s in commutative {
        s.run(&conn).unwrap();
    }
    conn
}

fn seed() -> u64 {
    match std::env::var("SHOAL_STRESS_SEED") {
        Ok(s) => s.parse().expect("SHOAL_STRESS_SEED must be a u64"),
        Err(_) => DEFAULT_SEED,
    }
}

/// SQLite's locking protocol (lockBtree/pager locks over os_unix.c-style xLock) gives
/// serialisable transactions per database: the committed history replayed serially
/// must reproduce every database exactly, and nothing may deadlock.
#[test]
fn concurrent_random_transactions_equal_their_serial_replay_on_stock_sqlite() {
    let seed = seed();
    let started = Instant::now();
    let backend = Arc::new(MemKv::new());
    // A small overlay share, so that bulk changes stage their pages in the kv while
    // other threads work.
    let vfs = Arc::new(vfs_with(
        backend.clone(),
        shoal_vfs::VfsOptions {
            overlay_limit: 64 << 10,
            ..Default::default()
        },
    ));
    for a in 0..ACTORS {
        open(&vfs, &format!("actor-{a}"))
            .execute_batch(SCHEMA)
            .unwrap();
    }

    let start = Arc::new(Barrier::new(THREADS));
    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..THREADS).map(|_| AtomicUsize::new(0)).collect());
    let (done, finished) = mpsc::channel();
    let mut handles = Vec::new();
    for thread in 0..THREADS {
        let (vfs, start, progress, done) = (
            Arc::clone(&vfs),
            Arc::clone(&start),
            Arc::clone(&progress),
            done.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("stress-worker-{thread}"))
            .spawn(move || {
                let result = catch_unwind(AssertUnwindSafe(|| {
                    worker(thread, seed, &vfs, &start, &progress[thread])
                }))
                .map_err(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "unknown panic".to_owned())
                });
                let _ = done.send((thread, result));
            })
            .unwrap();
        handles.push(handle);
    }
    drop(done);

    // The watchdog: the main thread waits with a deadline, so a deadlock fails the test.
    let deadline = started + WATCHDOG;
    let mut logs: Vec<Option<WorkerLog>> = (0..THREADS).map(|_| None).collect();
    for _ in 0..THREADS {
        let wait = deadline.saturating_duration_since(Instant::now());
        match finished.recv_timeout(wait) {
            Ok((thread, Ok(log))) => logs[thread] = Some(log),
            Ok((thread, Err(msg))) => panic!("worker {thread} failed (seed {seed}): {msg}"),
            Err(e) => {
                let stuck: Vec<String> = (0..THREADS)
                    .filter(|t| logs[*t].is_none())
                    .map(|t| {
                        let done = progress[t].load(Ordering::Relaxed);
                        format!("worker {t} at op {done}/{OPS_PER_THREAD}")
                    })
                    .collect();
                panic!(
                    "the workers did not finish within {WATCHDOG:?} ({e}): deadlock or \
                     livelock? {stuck:?} (seed {seed})"
                );
            }
        }
    }
    // Every worker has reported, so these return at once (and release the VFS).
    for h in handles {
        h.join().unwrap();
    }
    let logs: Vec<WorkerLog> = logs.into_iter().map(Option::unwrap).collect();
    let ran = started.elapsed();

    let mut per_actor: BTreeMap<usize, (Vec<&Committed>, Vec<&Stmt>)> = BTreeMap::new();
    for log in &logs {
        for c in &log.committed {
            per_actor.entry(c.actor).or_default().0.push(c);
        }
        for (actor, s) in &log.commutative {
            per_actor.entry(*actor).or_default().1.push(s);
        }
    }
    let check = |vfs: &Vfs, when: &str| {
        for a in 0..ACTORS {
            let name = format!("actor-{a}");
            let (committed, commutative) = per_actor.get(&a).cloned().unwrap_or_default();
            let expected = replay(a, committed, &commutative);
            let conn = open(vfs, &name);
            assert_eq!(integrity(&conn), "ok", "{name} {when}");
            if let Some(diff) = first_difference(&dump(&conn), &dump(&expected)) {
                panic!(
                    "{name} {when} differs from its serial replay on stock SQLite (seed \
                     {seed}): {diff}"
                );
            }
            let audit = vfs.audit(&name).unwrap().unwrap();
            assert!(
                audit.problems.is_empty(),
                "{name} {when}: {:?}",
                audit.problems
            );
        }
    };
    check(&vfs, "after the run");
    let stats: Vec<_> = (0..ACTORS)
        .map(|a| stats(&vfs, &format!("actor-{a}")))
        .collect();
    assert_eq!(vfs.open_files(), 0, "every connection is closed");
    drop(Arc::into_inner(vfs).expect("the workers dropped their handles"));
    // What is stored is what was committed: reopen the store and compare again.
    check(&vfs_over(backend), "after reopening");

    let sum = |f: fn(&WorkerLog) -> u64| logs.iter().map(f).sum::<u64>();
    let committed = logs.iter().map(|l| l.committed.len()).sum::<usize>();
    let batch: u64 = stats.iter().map(|s| s.batch_commits).sum();
    let journal: u64 = stats.iter().map(|s| s.journal_commits).sum();
    let staged: u64 = stats.iter().map(|s| s.staged_commits).sum();
    let fetched: u64 = stats.iter().map(|s| s.pages_fetched).sum();
    let relaxed: u64 = stats.iter().map(|s| s.relaxed_syncs).sum();
    eprintln!(
        "seed {seed}: {THREADS} threads x {OPS_PER_THREAD} ops on {ACTORS} actors in {ran:.1?} \
         (checks {:.1?}): {committed} transactions committed, {} autocommit statements, {} \
         rolled back, {} busy, {} reads; batch commits {batch} ({staged} staged), journal commits {journal}, \
         relaxed syncs {relaxed}, pages fetched {fetched}",
        started.elapsed() - ran,
        logs.iter().map(|l| l.commutative.len()).sum::<usize>(),
        sum(|l| l.rolled_back),
        sum(|l| l.busy_aborted),
        sum(|l| l.reads),
    );
    assert!(committed > 0 && sum(|l| l.rolled_back) > 0);
    assert!(journal > 0, "some transactions kept a stored journal");
    assert!(staged > 0, "some transactions were staged");
    assert!(fetched > 0, "some pages were read through xFetch");
    assert!(relaxed > 0, "some commits were relaxed");
}
