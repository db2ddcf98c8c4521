//! Group commit, checked on counts and on the order of events, never on timings.
//!
//! The backend under test is `Probe`, a wrapper that can hold every flush at a gate until
//! the test lets it through, numbers every applied batch, and records which batches each
//! flush covered. Holding the first flush at the gate makes "many requests arrive while a
//! flush is running" a certainty instead of a likelihood.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use shoal_kv::raw::{self, Batch, Scan};
use shoal_kv::{
    EntryKind, Error, FaultOp, FaultyKv, GroupCommitter, KeyRange, Kv, KvStats, KvStore, MemKv,
};

/// How long a wait for an event that should come at once may last before the test gives
/// up. It only turns a hang (a lost wake-up, a deadlock) into a failure; nothing is
/// measured against it.
const HANG_GUARD: Duration = Duration::from_secs(60);

thread_local! {
    /// The sequence number of the last batch this thread applied through a `Probe`.
    static LAST_APPLIED: Cell<u64> = const { Cell::new(0) };
}

#[derive(Debug, Default)]
struct GateState {
    /// Flushes that have reached the gate.
    arrived: u64,
    /// Flushes that may still pass while the gate is closed.
    permits: u64,
    /// Once open, every flush passes.
    open: bool,
}

#[derive(Debug, Default)]
struct SeqState {
    /// Batches applied so far; the n-th batch is number n.
    applied: u64,
    /// The highest batch number covered by a completed flush.
    durable: u64,
    /// For each flush, in order: the last batch applied when it began.
    flush_starts: Vec<u64>,
}

/// A backend wrapper that gates flushes and tracks which batches each flush covered.
#[derive(Debug)]
struct Probe<K> {
    inner: K,
    gate: Mutex<GateState>,
    changed: Condvar,
    seq: Mutex<SeqState>,
    /// Time each flush takes (to widen the window in which requests pile up).
    flush_pause: Duration,
}

impl<K: KvStore> Probe<K> {
    /// Every flush waits at the gate until the test lets it through.
    fn gated(inner: K) -> Probe<K> {
        Probe {
            inner,
            gate: Mutex::new(GateState::default()),
            changed: Condvar::new(),
            seq: Mutex::new(SeqState::default()),
            flush_pause: Duration::ZERO,
        }
    }

    /// Flushes pass at once, each taking `flush_pause`.
    fn open(inner: K, flush_pause: Duration) -> Probe<K> {
        let probe = Probe {
            flush_pause,
            ..Probe::gated(inner)
        };
        probe.open_gate();
        probe
    }

    fn open_gate(&self) {
        lock(&self.gate).open = true;
        self.changed.notify_all();
    }

    fn let_one_through(&self) {
        lock(&self.gate).permits += 1;
        self.changed.notify_all();
    }

    /// Blocks until `n` flushes have begun.
    fn wait_arrived(&self, n: u64) {
        let deadline = Instant::now() + HANG_GUARD;
        let mut gate = lock(&self.gate);
        while gate.arrived < n {
            assert!(Instant::now() < deadline, "flush #{n} never began");
            gate = self
                .changed
                .wait_timeout(gate, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn arrived(&self) -> u64 {
        lock(&self.gate).arrived
    }

    fn durable(&self) -> u64 {
        lock(&self.seq).durable
    }

    fn flush_starts(&self) -> Vec<u64> {
        lock(&self.seq).flush_starts.clone()
    }
}

impl<K: KvStore> KvStore for Probe<K> {
    fn get(&self, key: &[u8]) -> shoal_kv::Result<Option<bytes::Bytes>> {
        self.inner.get(key)
    }

    fn scan(&self, range: KeyRange) -> shoal_kv::Result<Scan<'_>> {
        self.inner.scan(range)
    }

    fn apply(&self, batch: Batch) -> shoal_kv::Result<()> {
        // Held across the apply, so batch numbers follow the order batches landed in.
        let mut seq = lock(&self.seq);
        self.inner.apply(batch)?;
        seq.applied += 1;
        LAST_APPLIED.set(seq.applied);
        Ok(())
    }

    fn flush(&self) -> shoal_kv::Result<()> {
        let start = {
            let mut seq = lock(&self.seq);
            let start = seq.applied;
            seq.flush_starts.push(start);
            start
        };
        {
            let mut gate = lock(&self.gate);
            gate.arrived += 1;
            self.changed.notify_all();
            while !gate.open && gate.permits == 0 {
                gate = self
                    .changed
                    .wait(gate)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if !gate.open {
                gate.permits -= 1;
            }
        }
        if !self.flush_pause.is_zero() {
            thread::sleep(self.flush_pause);
        }
        self.inner.flush()?;
        let mut seq = lock(&self.seq);
        seq.durable = seq.durable.max(start);
        Ok(())
    }

    fn stats(&self) -> shoal_kv::Result<KvStats> {
        self.inner.stats()
    }
}

/// Locks, ignoring poison: a failed assertion elsewhere must not turn into a panic in a
/// destructor (which aborts the test binary instead of reporting the failure).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens the gate when dropped, so a failing assertion cannot leave a committer blocked
/// in its flush and the test hung joining it. Declare it after the store it guards.
struct OpenOnDrop<K: KvStore>(Arc<Probe<K>>);

impl<K: KvStore> Drop for OpenOnDrop<K> {
    fn drop(&mut self) {
        self.0.open_gate();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

fn put(key: String) -> Batch {
    let mut b = Batch::new();
    b.put(key.into_bytes(), &b"value"[..]);
    b
}

const WAITERS: u64 = 32;

/// 32 requests queued while one flush is held: all of them complete, with at most one
/// more flush (the held one may have taken only the first request).
#[test]
fn concurrent_requests_share_flushes() {
    let backend = Arc::new(Probe::gated(MemKv::new()));
    let committer = Arc::new(GroupCommitter::start(backend.clone()).unwrap());
    let _release = OpenOnDrop(backend.clone());

    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let committer = Arc::clone(&committer);
            thread::spawn(move || committer.commit_durable())
        })
        .collect();
    backend.wait_arrived(1);
    wait_until("every request to be queued", || {
        committer.stats().requests == WAITERS
    });
    assert_eq!(
        backend.arrived(),
        1,
        "a second flush began while one was held"
    );
    assert_eq!(committer.stats().completed, 0);

    backend.open_gate();
    for w in waiters {
        w.join().unwrap().unwrap();
    }
    let stats = committer.stats();
    assert_eq!(stats.requests, WAITERS);
    assert_eq!(stats.completed, WAITERS);
    assert!(
        stats.flushes <= 2 && stats.flushes < stats.requests,
        "{stats:?}"
    );
    assert_eq!(backend.inner.flushes(), stats.flushes);
}

/// A failed flush is reported to every request waiting on it (and on the flush after it),
/// then the store refuses writes until a new `Kv` is opened over the backend.
#[test]
fn a_failed_flush_reaches_every_waiter_and_poisons_until_reopened() {
    let faulty = FaultyKv::new(MemKv::new());
    faulty.fail_nth(FaultOp::Flush, 1);
    let backend = Arc::new(Probe::gated(faulty));
    let kv = Arc::new(Kv::open(backend.clone()).unwrap());
    let _release = OpenOnDrop(backend.clone());

    let waiters: Vec<_> = (0..WAITERS)
        .map(|i| {
            let kv = Arc::clone(&kv);
            thread::spawn(move || {
                raw::of(&kv).apply(put(format!("k{i:02}")))?;
                kv.commit_durable()
            })
        })
        .collect();
    backend.wait_arrived(1);
    wait_until("every request to be queued", || {
        kv.commit_stats().requests == WAITERS
    });
    backend.open_gate();
    for w in waiters {
        match w.join().unwrap() {
            Err(Error::FlushFailed { cause, .. }) => {
                assert!(cause.contains("injected fault in flush"), "{cause}");
            }
            other => panic!("a waiter got {other:?} instead of the flush failure"),
        }
    }
    assert_eq!(kv.commit_stats().completed, WAITERS);
    assert_eq!(
        backend.inner.count(FaultOp::Flush),
        1,
        "a poisoned store must not flush again"
    );

    assert!(matches!(kv.check_writable(), Err(Error::Poisoned { .. })));
    let err = raw::of(&kv).apply(put("after".into())).unwrap_err();
    assert!(
        matches!(&err, Error::Poisoned { cause, .. } if cause.contains("injected")),
        "{err}"
    );
    assert_eq!(
        raw::of(&kv).get(b"after").unwrap(),
        None,
        "a refused batch was applied"
    );
    assert!(matches!(
        kv.create("late", EntryKind::Database),
        Err(Error::Poisoned { .. })
    ));
    assert!(matches!(kv.commit_durable(), Err(Error::Poisoned { .. })));
    assert!(
        raw::of(&kv).get(b"k00").unwrap().is_some(),
        "reads go on after a failed flush"
    );

    drop(kv);
    let kv = Kv::open(backend.clone()).unwrap();
    kv.check_writable().unwrap();
    raw::of(&kv).apply(put("after".into())).unwrap();
    kv.commit_durable().unwrap();
    assert_eq!(backend.inner.count(FaultOp::Flush), 2);
}

/// Applies one batch and waits for durability; returns the batch's number and the
/// highest batch number made durable when `commit_durable` returned.
fn apply_and_commit(kv: &Kv, backend: &Probe<MemKv>, key: String) -> (u64, u64) {
    raw::of(kv).apply(put(key)).unwrap();
    let applied = LAST_APPLIED.get();
    kv.commit_durable().unwrap();
    (applied, backend.durable())
}

/// A request that arrives while a flush is running is not answered by that flush, which
/// may have begun before its batch was applied, but by the next one.
#[test]
fn a_request_waits_for_a_flush_that_began_after_it() {
    let backend = Arc::new(Probe::gated(MemKv::new()));
    let kv = Arc::new(Kv::open(backend.clone()).unwrap());
    let _release = OpenOnDrop(backend.clone());

    let first = thread::spawn({
        let (kv, backend) = (Arc::clone(&kv), Arc::clone(&backend));
        move || apply_and_commit(&kv, &backend, "first".into())
    });
    backend.wait_arrived(1);
    let second = thread::spawn({
        let (kv, backend) = (Arc::clone(&kv), Arc::clone(&backend));
        move || apply_and_commit(&kv, &backend, "second".into())
    });
    wait_until("the second request to be queued", || {
        kv.commit_stats().requests == 2
    });

    // Let the held flush finish. It must answer only the first request; the second then
    // leads flush #2, which stays held. (Were the second answered
    // by the first flush, it would return now, and the checks below would catch it.)
    backend.let_one_through();
    let (first_batch, durable) = first.join().unwrap();
    assert!(durable >= first_batch, "{durable} < {first_batch}");
    wait_until("flush #2 to begin or the second request to return", || {
        backend.arrived() >= 2 || second.is_finished()
    });
    if !second.is_finished() {
        assert_eq!(kv.commit_stats().completed, 1);
    }

    backend.open_gate();
    let (second_batch, durable) = second.join().unwrap();
    assert!(
        durable >= second_batch,
        "commit_durable returned with batch {second_batch} not yet covered by a flush (durable: {durable})"
    );
    assert_eq!(backend.flush_starts(), vec![first_batch, second_batch]);
}

/// The same rule under load: every commit of every thread returns only once a flush
/// that began after its batch was applied has completed.
#[test]
fn every_durable_commit_is_covered_by_a_later_flush() {
    const THREADS: u64 = 8;
    const COMMITS: u64 = 40;
    let backend = Arc::new(Probe::open(MemKv::new(), Duration::from_micros(200)));
    let kv = Arc::new(Kv::open(backend.clone()).unwrap());
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (kv, backend) = (Arc::clone(&kv), Arc::clone(&backend));
            thread::spawn(move || {
                for i in 0..COMMITS {
                    let (batch, durable) = apply_and_commit(&kv, &backend, format!("t{t}/{i}"));
                    assert!(
                        durable >= batch,
                        "batch {batch} acknowledged while only {durable} was durable"
                    );
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let stats = kv.commit_stats();
    assert_eq!(stats.requests, THREADS * COMMITS);
    assert_eq!(stats.completed, THREADS * COMMITS);
    assert_eq!(backend.inner.flushes(), stats.flushes);
    assert!(stats.flushes <= stats.requests, "{stats:?}");
}
