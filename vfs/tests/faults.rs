//! Fault injection: whichever kv operation of a transaction fails, the SQL call fails
//! with an I/O error (never a panic, never a wrong answer), and once the store is
//! reopened every database is intact and holds exactly the state before the
//! transaction or exactly the state after it.
//!
//! The harness ([`exhaust`]) prepares a store once, then runs the workload's transaction
//! on a copy of it cleanly, counting its kv operations (M, every kind: reads, batches,
//! flushes). Then, for EVERY i in 1..=M, on a fresh copy of the same store, it fails the
//! i-th operation (`FaultyKv::fail_nth(FaultOp::Any, i)`; also, in separate passes,
//! every operation from the i-th on, and a panic in the i-th), runs the transaction
//! again, drops every connection and the VFS, clears the fault and reopens: a new `Kv`
//! over the same backend (a failed flush poisons the old one until reopened) and a new
//! VFS. After each single failure it also fails, in turn, each kv operation of the
//! recovery (the first reads after reopening) and checks recovery still ends the same.
//! The rule checked is SQLite's atomic commit (https://sqlite.org/atomiccommit.html): a
//! transaction that did not report success may be rolled back or, if the failure came
//! after its commit point, committed, but never half-applied; one that reported success
//! is committed. The backend is `MemKv`, whose flush loses nothing, so "reopening"
//! models an application restart after an I/O error, not a power cut (the crash tests of
//! the root package cover that).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use bytes::Bytes;
use common::*;
use rusqlite::{Connection, ffi};
use shoal_kv::raw::{self, Batch, keys, records::decode_u64};
use shoal_kv::{EntryKind, FaultOp, FaultyKv, KvStore, MemKv};
use shoal_vfs::{DbStats, Vfs};

// ---- no panics, anywhere ----

/// Every panic of the process, with the name of the thread it happened on. The VFS
/// catches panics at its FFI boundary and turns them into SQLITE_IOERR, so a bug that
/// panics would otherwise pass as an injected I/O error; the hook still sees it.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            let what = format!("[{thread}] {info}");
            // Panics injected by `FaultyKv::panic_nth` are the test's own doing.
            if what.contains("injected panic in") {
                return;
            }
            PANICS.lock().unwrap().push(what);
            default(info);
        }));
    });
}

/// Panics seen on this test's thread (the only thread that runs shoal code in these tests:
/// durable commits flush on the committing thread; other tests' assertion failures are
/// theirs).
fn panics_here() -> Vec<String> {
    let me = format!("[{}]", std::thread::current().name().unwrap_or("?"));
    PANICS
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.starts_with(&me))
        .cloned()
        .collect()
}

// ---- stores and states ----

/// A fresh faultable store holding exactly `entries`.
fn store_from(entries: &[(Bytes, Bytes)]) -> Arc<FaultyKv<MemKv>> {
    let mem = MemKv::new();
    let mut batch = Batch::new();
    for (k, v) in entries {
        batch.put(k.clone(), v.clone());
    }
    mem.apply(batch).unwrap();
    Arc::new(FaultyKv::new(mem))
}

/// What a database holds: its logical content plus its page counts (a rolled-back
/// transaction must also give back the pages it added or freed).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DbState {
    page_count: i64,
    freelist_count: i64,
    tables: Vec<(String, Vec<Vec<String>>)>,
}

/// Opens `db` (which recovers a hot journal, as any first reader does), checks it
/// with `PRAGMA integrity_check` and the VFS's own audit of its stored records, and
/// returns its state.
fn checked_state(vfs: &Vfs, db: &str, context: &str) -> DbState {
    // The first reader must recover without error, as it would with SQLite's own VFS.
    let conn = try_open(vfs, db)
        .unwrap_or_else(|e| panic!("{context}: opening {db} after reopening the store: {e:?}"));
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| {
            panic!("{context}: the first read of {db} after reopening failed: {e:?}")
        });
    assert_eq!(check, "ok", "{context}: integrity of {db}");
    let pragma = |p: &str| -> i64 { conn.query_row(p, [], |r| r.get(0)).unwrap() };
    let state = DbState {
        page_count: pragma("PRAGMA page_count"),
        freelist_count: pragma("PRAGMA freelist_count"),
        tables: dump(&conn),
    };
    drop(conn);
    let audit = vfs.audit(db).unwrap().unwrap();
    assert!(
        audit.problems.is_empty(),
        "{context}: audit of {db}: {:?}",
        audit.problems
    );
    state
}

/// Super-journals still in the catalog (garbage a failed commit may leave; harmless,
/// since SQLite only reads one through a hot journal that names it).
fn leftover_super_journals(vfs: &Vfs) -> usize {
    vfs.catalog()
        .unwrap()
        .iter()
        .filter(|(_, kind)| *kind == EntryKind::SuperJournal)
        .count()
}

/// The catalog's next database id: it grows by one for every entry ever created,
/// super-journals included.
fn next_db_id(vfs: &Vfs) -> u64 {
    let key = keys::next_db_id_key();
    decode_u64(&key, raw::of(vfs.kv()).get(&key).unwrap().unwrap()).unwrap()
}

/// The primary result code of an error the transaction returned, after checking it is
/// one a failed kv operation may produce.
///
/// Allowed: the SQLITE_IOERR family (what every failed VFS call returns) and
/// SQLITE_FULL; and plain SQLITE_CANTOPEN, because a kv read that fails inside xOpen of
/// a journal (the catalog lookup, the journal's metadata) is reported as the unix VFS
/// reports any failed open(2), EIO included (os_unix.c `unixOpen`:
/// `unixLogError(SQLITE_CANTOPEN_BKPT, "open", zName)`), and the pager passes xOpen's
/// code through (`pager_open_journal`). SQLITE_CORRUPT is not allowed: nothing here
/// damages stored data, so a "corrupt" answer would mean the VFS mistook a failed
/// operation for damage.
fn check_error(err: &rusqlite::Error, context: &str) -> i32 {
    let rusqlite::Error::SqliteFailure(e, msg) = err else {
        panic!("{context}: not an SQLite failure: {err:?}");
    };
    let primary = e.extended_code & 0xff;
    assert!(
        matches!(primary, ffi::SQLITE_IOERR | ffi::SQLITE_FULL)
            || e.extended_code == ffi::SQLITE_CANTOPEN,
        "{context}: expected an IOERR, FULL or CANTOPEN code, got extended code {} ({err}, \
         {msg:?})",
        e.extended_code
    );
    e.extended_code
}

// ---- the harness ----

/// One workload: a starting state and one transaction.
struct Workload {
    name: &'static str,
    /// The databases checked after every run. All exist after `setup`.
    dbs: &'static [&'static str],
    /// Builds the starting state on a clean store (run once).
    setup: fn(&Vfs),
    /// Opens the connections the transaction runs on (before the fault is armed).
    connect: fn(&Vfs) -> Vec<Connection>,
    /// The transaction: one SQL call, so its result is the transaction's result.
    txn: fn(&[Connection]) -> rusqlite::Result<()>,
    /// Databases that must be in the same state as each other (both before or both
    /// after): the members of one multi-database transaction.
    atomic_group: &'static [&'static str],
    /// The VFS's overlay limit (`None`: the default): a small one makes the transaction
    /// stage its pages in the kv.
    overlay_limit: Option<u64>,
}

/// How the i-th operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// It returns an error; later operations succeed (a transient I/O error).
    Once,
    /// It and every later operation return an error (a disk that died mid-transaction:
    /// SQLite's own rollback fails too and leaves a hot journal to the next opener).
    FromThenOn,
    /// It panics, as a buggy backend would (the VFS must turn that into an IOERR).
    Panic,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Once, Fault::FromThenOn, Fault::Panic];

    fn arm(self, store: &FaultyKv<MemKv>, nth: u64) {
        match self {
            Fault::Once => store.fail_nth(FaultOp::Any, nth),
            Fault::FromThenOn => store.fail_from(FaultOp::Any, nth),
            Fault::Panic => store.panic_nth(FaultOp::Any, nth),
        }
    }
}

/// What one kind of fault did over all operation indexes.
#[derive(Debug, Default)]
struct Tally {
    /// Runs whose SQL call nevertheless succeeded.
    succeeded: u64,
    /// Runs that failed and were found rolled back / committed after reopening.
    failed_before: u64,
    failed_after: u64,
    /// Extended error codes seen, with how often.
    codes: BTreeMap<i32, u64>,
    /// Runs that left a super-journal in the catalog.
    leftover_super_journals: u64,
    /// Runs after which the first reader had to recover (roll back a hot journal or
    /// delete a stale one).
    recoveries: u64,
    /// Runs with a second fault during recovery ([`fail_recovery`]).
    recovery_runs: u64,
    /// Runs after which the changed databases disagree (some after, some before).
    mixed: u64,
}

/// What [`exhaust`] found.
#[derive(Debug)]
struct Outcome {
    /// Kv operations of the clean transaction.
    m: u64,
    /// Each checked database's counters during the clean transaction.
    clean_stats: Vec<DbStats>,
    /// The catalog's next id after the clean transaction, minus before it.
    clean_new_entries: u64,
    /// Faulted runs (of every kind) after which the first reader recovered.
    recoveries: u64,
    /// Faulted runs after which the changed databases disagree.
    mixed: u64,
}

/// The clean run committed as one kv batch with no journal opened, and no fault left
/// anything for the next reader to recover: nothing reached the database's keys before
/// the commit point.
fn expect_one_batch(out: &Outcome) {
    let s = out.clean_stats[0];
    assert_eq!(
        (s.batch_commits, s.journal_commits, s.journal_opens),
        (1, 0, 0),
        "the clean run ({} kv operations) is one batch and opens no journal: {s}",
        out.m
    );
    assert_eq!(
        out.recoveries, 0,
        "with journal_mode=MEMORY no fault leaves anything for a reader to recover"
    );
}

/// The clean run kept a stored rollback journal (journal_mode DELETE, TRUNCATE or
/// PERSIST) and still committed as one kv batch; some faults left a hot journal behind
/// for the next reader to roll back.
fn expect_stored_journal(out: &Outcome) {
    let s = out.clean_stats[0];
    assert_eq!(
        (s.batch_commits, s.journal_commits),
        (1, 1),
        "the clean run ({} kv operations) is one batch beside a stored journal: {s}",
        out.m
    );
    assert!(
        out.recoveries > 0,
        "some faults must leave a hot journal for the next reader to roll back"
    );
}

/// Runs `w` once cleanly, then once per kv operation and kind of [`Fault`] with that
/// operation failing, and checks every run (see the module docs).
fn exhaust(w: &Workload) -> Outcome {
    watch_panics();
    let started = Instant::now();
    let prepared = Arc::new(MemKv::new());
    let vfs_over = |backend: Arc<dyn KvStore>| {
        let mut options = shoal_vfs::VfsOptions::default();
        if let Some(limit) = w.overlay_limit {
            options.overlay_limit = limit;
        }
        vfs_with(backend, options)
    };
    {
        let vfs = vfs_over(prepared.clone());
        (w.setup)(&vfs);
        assert_eq!(vfs.open_files(), 0, "{}: setup left files open", w.name);
    }
    let entries = prepared.snapshot();

    let states = |store: &Arc<FaultyKv<MemKv>>, context: &str| -> Vec<DbState> {
        let vfs = vfs_over(store.clone());
        w.dbs
            .iter()
            .map(|db| checked_state(&vfs, db, context))
            .collect()
    };
    let before = states(&store_from(&entries), &format!("{}: before", w.name));

    // The clean run, twice: the harness is only exhaustive if the sequence of kv
    // operations is the same every time.
    let mut clean = Vec::new();
    for _ in 0..2 {
        let store = store_from(&entries);
        let vfs = vfs_over(store.clone());
        let conns = (w.connect)(&vfs);
        let ids_before = next_db_id(&vfs);
        store.reset_counts();
        (w.txn)(&conns).unwrap_or_else(|e| panic!("{}: the clean run failed: {e}", w.name));
        let m = store.count(FaultOp::Any);
        let stats: Vec<DbStats> = w.dbs.iter().map(|db| stats(&vfs, db)).collect();
        let new_entries = next_db_id(&vfs) - ids_before;
        drop(conns);
        drop(vfs);
        let after = states(&store, &format!("{}: clean", w.name));
        clean.push((m, stats, new_entries, after));
    }
    let (m, clean_stats, clean_new_entries, after) = clean.swap_remove(0);
    assert_eq!(
        m, clean[0].0,
        "{}: the clean transaction's kv operations vary between runs",
        w.name
    );
    assert_eq!(after, clean[0].3, "{}: the clean runs disagree", w.name);
    assert!(m > 0, "{}: the transaction did no kv operation", w.name);
    for (k, db) in w.dbs.iter().enumerate() {
        if k == 0 || w.atomic_group.contains(db) {
            assert_ne!(
                before[k], after[k],
                "{}: the transaction does not change {db}",
                w.name
            );
        }
    }

    let mut recoveries = 0;
    let mut mixed = 0;
    for fault in Fault::ALL {
        let mut tally = Tally::default();
        for i in 1..=m {
            let context = format!("{}: kv operation {i} of {m}, {fault:?}", w.name);
            let store = store_from(&entries);
            let result = {
                let vfs = vfs_over(store.clone());
                let conns = (w.connect)(&vfs);
                fault.arm(&store, i);
                let result = (w.txn)(&conns);
                assert!(store.injected() >= 1, "{context}: the fault never fired");
                drop(conns);
                assert_eq!(
                    vfs.open_files(),
                    0,
                    "{context}: files left open after closing"
                );
                result
            };
            store.clear();
            let faulted = store.inner().snapshot();
            let reopened = vfs_over(store.clone());
            let got: Vec<DbState> = w
                .dbs
                .iter()
                .map(|db| checked_state(&reopened, db, &context))
                .collect();
            if leftover_super_journals(&reopened) > 0 {
                tally.leftover_super_journals += 1;
            }
            // Readers write nothing, unless they recover a hot journal.
            if w.dbs.iter().any(|db| stats(&reopened, db).kv_batches > 0) {
                tally.recoveries += 1;
            }
            drop(reopened);
            check_run(w, &context, &result, &before, &after, &got, &mut tally);
            if fault == Fault::Once {
                tally.recovery_runs += fail_recovery(w, &faulted, &got, &context);
            }
            let panics = panics_here();
            assert!(panics.is_empty(), "{context}: panics: {panics:#?}");
        }
        eprintln!(
            "{} ({fault:?}): M = {m}; succeeded despite the fault {}, failed and rolled back \
             {}, failed but committed {}; codes {:?}; leftover super-journals {}; \
             recoveries {}, recovery runs with a second fault {}",
            w.name,
            tally.succeeded,
            tally.failed_before,
            tally.failed_after,
            tally.codes,
            tally.leftover_super_journals,
            tally.recoveries,
            tally.recovery_runs,
        );
        recoveries += tally.recoveries;
        mixed += tally.mixed;
    }
    eprintln!("{}: {:.1?}", w.name, started.elapsed());
    Outcome {
        m,
        clean_stats,
        clean_new_entries,
        recoveries,
        mixed,
    }
}

/// The first read of each database after reopening: what rolls back a hot journal
/// (pager.c `hasHotJournal`, `pager_playback`) or deletes a stale one. Errors are
/// checked like the transaction's.
fn first_reads(vfs: &Vfs, dbs: &[&str], context: &str) {
    for db in dbs {
        let read = try_open(vfs, db).and_then(|c| {
            c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })
        });
        if let Err(e) = read {
            check_error(&e, &format!("{context}, first read of {db}"));
        }
    }
}

/// A second fault, during recovery: from the store a faulted run left (`faulted`),
/// fails each kv operation of the first reads in turn, then reopens once more. Recovery
/// is idempotent in SQLite (a hot journal stays hot until its playback completes and it
/// is deleted), so every database must end exactly as a recovery without the second
/// fault left it (`recovered`). Returns the number of runs.
fn fail_recovery(
    w: &Workload,
    faulted: &[(Bytes, Bytes)],
    recovered: &[DbState],
    context: &str,
) -> u64 {
    let r = {
        let store = store_from(faulted);
        let vfs = vfs_over(store.clone());
        store.reset_counts();
        first_reads(&vfs, w.dbs, context);
        store.count(FaultOp::Any)
    };
    for j in 1..=r {
        let context = format!("{context}, then recovery operation {j} of {r} failing");
        let store = store_from(faulted);
        {
            let vfs = vfs_over(store.clone());
            store.fail_nth(FaultOp::Any, j);
            first_reads(&vfs, w.dbs, &context);
            assert_eq!(store.injected(), 1, "{context}: the fault never fired");
            assert_eq!(vfs.open_files(), 0, "{context}: files left open");
        }
        store.clear();
        let vfs = vfs_over(store.clone());
        for (db, want) in w.dbs.iter().zip(recovered) {
            let got = checked_state(&vfs, db, &context);
            if got != *want {
                panic!(
                    "{context}: {db} differs from a recovery without the second fault: {}",
                    first_difference(&got.tables, &want.tables).unwrap_or_else(|| format!(
                        "{} pages ({} free) where {} ({} free) were expected",
                        got.page_count, got.freelist_count, want.page_count, want.freelist_count
                    ))
                );
            }
        }
    }
    r
}

/// Checks one faulted run: each database before or after, the atomic group together,
/// success only with the transaction in place, and an allowed error code.
fn check_run(
    w: &Workload,
    context: &str,
    result: &rusqlite::Result<()>,
    before: &[DbState],
    after: &[DbState],
    got: &[DbState],
    tally: &mut Tally,
) {
    let mut which = Vec::new();
    for (k, db) in w.dbs.iter().enumerate() {
        let is = if got[k] == after[k] {
            "after"
        } else if got[k] == before[k] {
            "before"
        } else {
            let describe = |want: &DbState| {
                first_difference(&got[k].tables, &want.tables).unwrap_or_else(|| {
                    format!(
                        "same rows, but {} pages ({} free) where {} ({} free) were expected",
                        got[k].page_count,
                        got[k].freelist_count,
                        want.page_count,
                        want.freelist_count
                    )
                })
            };
            panic!(
                "{context}: {db} is neither as before nor as after the transaction\n\
                 against before: {}\nagainst after: {}",
                describe(&before[k]),
                describe(&after[k])
            );
        };
        // A database the transaction does not touch compares equal to both.
        if before[k] != after[k] {
            which.push((*db, is));
        }
    }
    let group: Vec<_> = which
        .iter()
        .filter(|(db, _)| w.atomic_group.contains(db))
        .collect();
    assert!(
        group.windows(2).all(|p| p[0].1 == p[1].1),
        "{context}: one transaction committed in some databases only: {group:?}"
    );
    let committed = which.iter().all(|(_, is)| *is == "after");
    if !committed && which.iter().any(|(_, is)| *is == "after") {
        tally.mixed += 1;
    }
    match result {
        Ok(()) => {
            assert!(
                committed,
                "{context}: the call succeeded but the transaction is not there: {which:?}"
            );
            tally.succeeded += 1;
        }
        Err(e) => {
            let code = check_error(e, context);
            *tally.codes.entry(code).or_default() += 1;
            if committed {
                tally.failed_after += 1;
            } else {
                tally.failed_before += 1;
            }
        }
    }
}

// ---- workloads ----

/// A database nobody touches: a fault anywhere must not disturb it.
fn bystander(vfs: &Vfs) {
    open(vfs, "bystander")
        .execute_batch(
            "CREATE TABLE b(x TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 20)
             INSERT INTO b SELECT printf('%0300d', i) FROM n;",
        )
        .unwrap();
}

fn one(vfs: &Vfs, db: &str) -> Vec<Connection> {
    vec![open(vfs, db)]
}

/// A database of 100 rows of about 500 bytes, and a bystander.
fn big_setup(vfs: &Vfs) {
    bystander(vfs);
    open(vfs, "big")
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 100)
             INSERT INTO t SELECT i, printf('%0500d', i) FROM k;",
        )
        .unwrap();
}

/// One connection to `big` with a 10-page cache, so that its transactions spill.
fn big_connect(vfs: &Vfs) -> Vec<Connection> {
    let c = open(vfs, "big");
    c.execute_batch("PRAGMA cache_size = 10").unwrap();
    vec![c]
}

/// About 300 KB of new rows, and changes to pages written long before.
fn big_txn(c: &[Connection]) -> rusqlite::Result<()> {
    c[0].execute_batch(
        "BEGIN;
         WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 300)
         INSERT INTO t(v) SELECT printf('%01000d', i) FROM k;
         UPDATE t SET v = 'changed ' || v WHERE id <= 40;
         DELETE FROM t WHERE id BETWEEN 60 AND 80;
         COMMIT;",
    )
}

/// Two databases `left` and `right` of 30 rows each, and a bystander.
fn two_databases_setup(vfs: &Vfs) {
    bystander(vfs);
    for db in ["left", "right"] {
        open(vfs, db)
            .execute_batch(
                "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 30)
                 INSERT INTO t SELECT i, printf('%0200d', i) FROM k;",
            )
            .unwrap();
    }
}

/// (a) A small transaction on a non-empty database: its pages stay in memory until
/// SQLITE_FCNTL_SYNC (pager.c `sqlite3PagerSync`, sent by `pager_commit_phase_one`),
/// which commits them as one kv batch.
#[test]
fn every_failed_kv_operation_of_an_atomic_batch_commit_leaves_before_or_after() {
    let out = exhaust(&Workload {
        name: "batch",
        dbs: &["a", "bystander"],
        setup: |vfs| {
            bystander(vfs);
            open(vfs, "a")
                .execute_batch(
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);
                     CREATE INDEX t_n ON t(n);
                     WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 200)
                     INSERT INTO t SELECT i, printf('%0100d', i), i % 13 FROM k;",
                )
                .unwrap();
        },
        connect: |vfs| one(vfs, "a"),
        txn: |c| {
            c[0].execute_batch(
                "BEGIN;
                 INSERT INTO t(v, n) VALUES ('new one', 1), ('new two', 2);
                 UPDATE t SET n = n + 100 WHERE id % 10 = 0;
                 DELETE FROM t WHERE id % 17 = 0;
                 COMMIT;",
            )
        },
        atomic_group: &[],
        overlay_limit: None,
    });
    expect_one_batch(&out);
}

/// (b) The first transaction of an empty database (which SQLite's batch-atomic path
/// would not take: `jrnlBufferSize`) is one batch like any other.
#[test]
fn every_failed_kv_operation_of_a_first_transaction_leaves_before_or_after() {
    let out = exhaust(&Workload {
        name: "first transaction",
        dbs: &["fresh", "bystander"],
        setup: |vfs| {
            bystander(vfs);
            drop(open(vfs, "fresh"));
        },
        connect: |vfs| one(vfs, "fresh"),
        txn: |c| {
            c[0].execute_batch(
                "BEGIN;
                 CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 CREATE INDEX t_v ON t(v);
                 WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 50)
                 INSERT INTO t SELECT i, printf('%0200d', i) FROM k;
                 COMMIT;",
            )
        },
        atomic_group: &[],
        overlay_limit: None,
    });
    expect_one_batch(&out);
}

/// (c) A transaction that outgrows the page cache spills dirty pages into the database
/// file before commit (pager.c `pagerStress`); those writes stay in the VFS's overlay
/// and reach the kv with the rest at the commit point.
#[test]
fn every_failed_kv_operation_of_a_spilling_transaction_leaves_before_or_after() {
    let out = exhaust(&Workload {
        name: "spill",
        dbs: &["big", "bystander"],
        setup: big_setup,
        connect: big_connect,
        txn: big_txn,
        atomic_group: &[],
        overlay_limit: None,
    });
    expect_one_batch(&out);
}

/// (d) With stored journals (journal_mode=DELETE on both), a transaction that changes
/// two attached databases commits through a super-journal (pager.c `sqlite3VdbeHalt` ->
/// `vdbeCommit`, multi-file case): each database's journal names it, each database's
/// pages are one kv batch at its own commit point, and deleting the super-journal is
/// the commit point for both. A hot
/// journal whose super-journal is gone is stale and not played back; one whose
/// super-journal exists is rolled back. So both databases are before, or both after.
#[test]
fn every_failed_kv_operation_of_a_two_database_transaction_leaves_both_before_or_both_after() {
    let out = exhaust(&Workload {
        name: "super-journal",
        dbs: &["left", "right", "bystander"],
        setup: two_databases_setup,
        connect: |vfs| {
            let c = try_open_journaled(vfs, "left").unwrap();
            c.execute_batch(
                "PRAGMA journal_mode = DELETE; ATTACH 'right' AS r; PRAGMA r.journal_mode = DELETE;",
            )
            .unwrap();
            vec![c]
        },
        txn: |c| {
            c[0].execute_batch(
                "BEGIN;
                 INSERT INTO main.t(v) VALUES ('moved');
                 DELETE FROM r.t WHERE id = 7;
                 UPDATE main.t SET v = 'left ' || v WHERE id % 5 = 0;
                 UPDATE r.t SET v = 'right ' || v WHERE id % 3 = 0;
                 COMMIT;",
            )
        },
        atomic_group: &["left", "right"],
        overlay_limit: None,
    });
    for s in &out.clean_stats[..2] {
        assert_eq!(
            (s.batch_commits, s.journal_commits),
            (1, 1),
            "each database is one batch beside its journal ({} kv operations): {s}",
            out.m
        );
    }
    assert_eq!(out.mixed, 0);
    assert_eq!(
        out.clean_new_entries, 1,
        "the clean run created (and deleted) one super-journal"
    );
    assert!(
        out.recoveries > 0,
        "some faults must leave a hot journal for the next reader to roll back"
    );
}

/// (d') With journal_mode=MEMORY (the facade's default) SQLite writes no super-journal
/// (vdbe.c `vdbeCommit`: `aMJNeeded` is 0 for MEMORY) and commits the databases one
/// after the other: each database is exactly before or after, but a failure between
/// the two commits leaves one after and the other before. That is the whole promise
/// for multi-database transactions without stored journals, and this checks both
/// halves of it.
#[test]
fn every_failed_kv_operation_of_a_two_database_transaction_in_memory_mode_leaves_each_before_or_after()
 {
    let out = exhaust(&Workload {
        name: "two databases, MEMORY",
        dbs: &["left", "right", "bystander"],
        setup: two_databases_setup,
        connect: |vfs| {
            let c = open(vfs, "left");
            c.execute_batch("ATTACH 'right' AS r; PRAGMA r.journal_mode = MEMORY;")
                .unwrap();
            vec![c]
        },
        txn: |c| {
            c[0].execute_batch(
                "BEGIN;
                 INSERT INTO main.t(v) VALUES ('moved');
                 DELETE FROM r.t WHERE id = 7;
                 COMMIT;",
            )
        },
        atomic_group: &[],
        overlay_limit: None,
    });
    for s in &out.clean_stats[..2] {
        assert_eq!((s.batch_commits, s.journal_opens), (1, 0), "{s}");
    }
    assert_eq!(out.clean_new_entries, 0, "no super-journal");
    assert!(
        out.mixed > 0,
        "a failure between the two commits leaves one database after and one before"
    );
}

/// (e) VACUUM rebuilds the database in a temp database and copies every page back in
/// one write transaction on the main database (vacuum.c `sqlite3RunVacuum`,
/// `sqlite3BtreeCopyFile`), shrinking the file: a rollback must also restore its size.
#[test]
fn every_failed_kv_operation_of_a_vacuum_leaves_before_or_after() {
    let out = exhaust(&Workload {
        name: "vacuum",
        dbs: &["vac", "bystander"],
        setup: |vfs| {
            bystander(vfs);
            open(vfs, "vac")
                .execute_batch(
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                     CREATE INDEX t_v ON t(v);
                     WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 200)
                     INSERT INTO t SELECT i, printf('%0300d', i) FROM k;
                     DELETE FROM t WHERE id % 2 = 0;",
                )
                .unwrap();
        },
        connect: |vfs| one(vfs, "vac"),
        txn: |c| c[0].execute_batch("VACUUM"),
        atomic_group: &[],
        overlay_limit: None,
    });
    let s = out.clean_stats[0];
    assert_eq!(
        (s.batch_commits, s.journal_opens),
        (1, 0),
        "one commit ({} kv operations): {s}",
        out.m
    );
}

/// (h) A transaction larger than its memory share (a 64 KiB overlay limit here) stages
/// its pages in the kv as it goes (shoal-kv `staging.rs`); its commit is one batch that
/// turns the staging record into a commit record, then the pages move into place in
/// batches. A failure before the commit batch leaves the database before (the staged
/// pages are removed at the next open); one after it leaves it after (the next open
/// finishes the move).
#[test]
fn every_failed_kv_operation_of_a_staged_transaction_leaves_before_or_after() {
    let out = exhaust(&Workload {
        name: "staged",
        dbs: &["big", "bystander"],
        setup: big_setup,
        connect: big_connect,
        // About 300 KB of new rows and changes to old pages: several times the share.
        txn: big_txn,
        atomic_group: &[],
        overlay_limit: Some(64 << 10),
    });
    let s = out.clean_stats[0];
    assert_eq!((s.batch_commits, s.staged_commits), (1, 1), "{s}");
    assert!(s.pages_staged > 16, "{s}");
}

/// (f) With `journal_mode=PERSIST` the journal outlives the transaction: SQLite zeroes
/// its header and, with `journal_size_limit`, truncates it to the limit after commit
/// (pager.c `zeroJournalHdr`), an unaligned truncation of a stored file. A failure there
/// comes after the commit point and must not damage the journal for the next
/// transaction.
#[test]
fn every_failed_kv_operation_with_a_persistent_size_limited_journal_leaves_before_or_after() {
    let out = exhaust(&Workload {
        name: "persistent journal",
        dbs: &["persist", "bystander"],
        setup: persist_setup,
        connect: persist_connect,
        txn: persist_txn,
        atomic_group: &[],
        overlay_limit: None,
    });
    expect_stored_journal(&out);
}

fn persist_setup(vfs: &Vfs) {
    bystander(vfs);
    open(vfs, "persist")
        .execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 200)
             INSERT INTO t SELECT i, printf('%0500d', i) FROM k;",
        )
        .unwrap();
}

fn persist_connect(vfs: &Vfs) -> Vec<Connection> {
    let c = open(vfs, "persist");
    c.execute_batch(
        "PRAGMA journal_mode = PERSIST;
         PRAGMA journal_size_limit = 40000;
         PRAGMA cache_size = 10;",
    )
    .unwrap();
    vec![c]
}

fn persist_txn(c: &[Connection]) -> rusqlite::Result<()> {
    // Every page changes, so the journal grows far past the limit.
    c[0].execute_batch("BEGIN; UPDATE t SET v = 'persisted ' || v; COMMIT;")
}

/// (g) With `mmap_size > 0` SQLite reads pages through xFetch (a failed fetch must make
/// it fall back to xRead, which reports the error: os.c `sqlite3OsFetch` contract), and
/// with `shoal_durability=relaxed` a batch commit does not wait for a flush.
#[test]
fn every_failed_kv_operation_of_a_fetched_relaxed_commit_leaves_before_or_after() {
    let out = exhaust(&Workload {
        name: "mmap relaxed",
        dbs: &["mapped", "bystander"],
        setup: |vfs| {
            bystander(vfs);
            open(vfs, "mapped")
                .execute_batch(
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);
                     CREATE INDEX t_n ON t(n);
                     WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM k WHERE i < 300)
                     INSERT INTO t SELECT i, printf('%0200d', i), i % 7 FROM k;",
                )
                .unwrap();
        },
        connect: |vfs| {
            let c = open(vfs, "mapped");
            c.execute_batch(
                "PRAGMA mmap_size = 268435456;
                 PRAGMA shoal_durability = relaxed;",
            )
            .unwrap();
            vec![c]
        },
        txn: |c| {
            c[0].execute_batch(
                "BEGIN;
                 UPDATE t SET n = n + 1 WHERE id IN (SELECT id FROM t WHERE n = 3 LIMIT 20);
                 INSERT INTO t(v, n) SELECT v || '!', n FROM t WHERE id % 50 = 0;
                 COMMIT;",
            )
        },
        atomic_group: &[],
        overlay_limit: None,
    });
    let s = out.clean_stats[0];
    assert_eq!(
        (s.batch_commits, s.relaxed_syncs),
        (1, 1),
        "the clean run ({} kv operations) is one relaxed batch: {s}",
        out.m
    );
    assert!(s.pages_fetched > 0, "pages are lent by xFetch: {s}");
}

// ---- poisoning ----

/// After a failed flush the store cannot know which applied writes are durable, so it
/// refuses every later write, on every database and connection, until it is reopened
/// (redb's `PreviousIo`, fjall's `Poisoned`); reads go on. A refused write reaches
/// SQLite as an SQLITE_IOERR (os.c contract: a VFS reports I/O failures as IOERR codes).
#[test]
fn a_failed_flush_refuses_writes_until_reopened_and_reads_go_on() {
    watch_panics();
    let backend = Arc::new(FaultyKv::new(MemKv::new()));
    let vfs = vfs_over(backend.clone());
    let a = open(&vfs, "a");
    let b = open(&vfs, "b");
    for conn in [&a, &b] {
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }

    backend.fail_nth(FaultOp::Flush, 1);
    let err = a.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
    assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{err}");
    assert_eq!(backend.injected(), 1);
    // No fault is armed from here on: whatever fails now fails because of the poison.
    backend.clear();
    backend.reset_counts();

    // The batch was applied before its flush failed: whether it is durable is unknown,
    // and a reader may see it. Either way the row is whole.
    let seen_a = rows(&a, "SELECT x FROM t ORDER BY x");
    assert!(seen_a == [["1"]] || seen_a == [["1"], ["2"]], "{seen_a:?}");

    let late = open(&vfs, "a");
    for (name, conn) in [("a", &a), ("b", &b), ("a, new connection", &late)] {
        let err = conn.execute("INSERT INTO t VALUES (3)", []).unwrap_err();
        assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{name}: {err}");
        let err = conn
            .execute_batch("BEGIN; CREATE TABLE u(y); INSERT INTO u VALUES (1); COMMIT;")
            .unwrap_err();
        assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{name}: {err}");
        let _ = conn.execute_batch("ROLLBACK");
    }
    assert_eq!(
        (backend.count(FaultOp::Batch), backend.count(FaultOp::Flush)),
        (0, 0),
        "a poisoned store sends no write and no flush to the backend"
    );
    assert!(backend.count(FaultOp::Read) > 0);
    assert_eq!(rows(&a, "SELECT x FROM t ORDER BY x"), seen_a);
    assert_eq!(rows(&late, "SELECT x FROM t ORDER BY x"), seen_a);
    assert_eq!(rows(&b, "SELECT x FROM t"), [["1"]]);
    assert_eq!(integrity(&b), "ok");

    drop((a, b, late));
    assert_eq!(vfs.open_files(), 0);
    drop(vfs);
    let vfs = vfs_over(backend.clone());
    let a = open(&vfs, "a");
    assert_eq!(integrity(&a), "ok");
    assert_eq!(rows(&a, "SELECT x FROM t ORDER BY x"), seen_a);
    a.execute("INSERT INTO t VALUES (4)", []).unwrap();
    let b = open(&vfs, "b");
    b.execute_batch("BEGIN; CREATE TABLE u(y); INSERT INTO u VALUES (1); COMMIT;")
        .unwrap();
    assert_eq!(rows(&b, "SELECT y FROM u"), [["1"]]);
    assert_eq!(integrity(&b), "ok");
    let panics = panics_here();
    assert!(panics.is_empty(), "panics: {panics:#?}");
}

/// A panic caught at the FFI boundary may leave a database's shared state (its inodes'
/// overlays and sizes) half-updated, so the database is poisoned: every later call on it,
/// from any connection, fails with an SQLITE_IOERR code and a message naming the call and
/// the panic, until the store is reopened; other databases go on. Checked for a panic in
/// every kv read and batch of a journaled transaction, which includes panics inside
/// xWrite (an unaligned journal write reads its chunk) and inside xTruncate
/// (`journal_size_limit` cuts the persistent journal at an unaligned size, reading the new
/// last chunk). Flushes run on the group committer's thread, where a panic is a failed
/// flush (see the next test), not a panic in a call on the database.
#[test]
fn a_panic_poisons_its_database_until_the_store_is_reopened() {
    watch_panics();
    let prepared = Arc::new(MemKv::new());
    persist_setup(&vfs_over(prepared.clone()));
    let entries = prepared.snapshot();
    let (reads, batches) = {
        let store = store_from(&entries);
        let vfs = vfs_over(store.clone());
        let conns = persist_connect(&vfs);
        store.reset_counts();
        persist_txn(&conns).unwrap();
        (store.count(FaultOp::Read), store.count(FaultOp::Batch))
    };
    let mut calls = BTreeMap::<String, u64>::new();
    let runs = (1..=reads)
        .map(|i| (FaultOp::Read, i))
        .chain((1..=batches).map(|i| (FaultOp::Batch, i)));
    for (op, i) in runs {
        let context = format!("panic in kv {op:?} {i}");
        let store = store_from(&entries);
        let vfs = vfs_over(store.clone());
        let conns = persist_connect(&vfs);
        let other = open(&vfs, "bystander");
        store.panic_nth(op, i);
        let _ = persist_txn(&conns);
        assert_eq!(store.injected(), 1, "{context}: the panic never came");
        store.clear();

        let err = conns[0]
            .execute_batch("PRAGMA shoal_stats")
            .expect_err(&format!("{context}: not poisoned"));
        assert_eq!(primary_code(&err), ffi::SQLITE_IOERR, "{context}: {err}");
        let msg = err.to_string();
        let call = msg
            .split_once("poisoned by an earlier panic in ")
            .and_then(|(_, rest)| rest.split_once(" (injected panic in "))
            .map(|(call, _)| call.to_owned())
            .unwrap_or_else(|| panic!("{context}: the message does not say why: {msg}"));
        *calls.entry(call).or_default() += 1;
        let read = conns[0].query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0));
        assert_eq!(
            primary_code(&read.expect_err(&format!("{context}: {msg}"))),
            ffi::SQLITE_IOERR,
            "{context}"
        );
        let late = try_open(&vfs, "persist")
            .and_then(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)));
        assert_eq!(
            primary_code(&late.unwrap_err()),
            ffi::SQLITE_IOERR,
            "{context}"
        );
        assert_eq!(count(&other, "b"), 20, "{context}: other databases go on");
        other.execute("INSERT INTO b VALUES ('after')", []).unwrap();
        drop((conns, other));
        assert_eq!(vfs.open_files(), 0, "{context}: files left open");
        drop(vfs);

        let reopened = vfs_over(store.clone());
        let conn = open(&reopened, "persist");
        assert_eq!(integrity(&conn), "ok", "{context}");
        let changed = count_where(&conn, "v LIKE 'persisted %'");
        assert!(
            changed == 0 || changed == 200,
            "{context}: {changed} rows changed"
        );
        conn.execute("UPDATE t SET v = 'again' WHERE id = 1", [])
            .unwrap();
        let panics = panics_here();
        assert!(panics.is_empty(), "{context}: panics: {panics:#?}");
    }
    eprintln!("poisoning calls over {reads} reads and {batches} batches: {calls:?}");
    for call in ["xWrite", "xTruncate"] {
        assert!(
            calls.contains_key(call),
            "no panic inside {call}: {calls:?}"
        );
    }
}

fn count_where(conn: &Connection, condition: &str) -> i64 {
    conn.query_row(
        &format!("SELECT count(*) FROM t WHERE {condition}"),
        [],
        |r| r.get(0),
    )
    .unwrap()
}
