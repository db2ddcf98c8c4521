//! `GroupCommitter`: many durable commits share one flush.
//!
//! One flusher thread takes requests from a crossbeam channel. It blocks for the first,
//! drains every other request already queued, calls the backend's `flush` once, and
//! answers them all. A request therefore completes only after a flush that *began after
//! the request was queued* has completed: exactly what durability needs. While a flush
//! runs, new requests pile up in the channel and are served together by the next one, so
//! under load the number of flushes stays far below the number of commits.
//!
//! Before it flushes, the flusher waits (briefly, at most `GATHER_LIMIT`) for batches
//! that are being applied at that moment: their committers are about to ask for a flush
//! too, and with backends that block applies while they flush (fjall holds its journal
//! lock across the fsync) flushing at once would make every one of them wait for the next
//! flush instead. Threads in [`Kv::apply`](crate::Kv::apply) are counted by
//! `GroupCommitter::applying`.
//!
//! A flush that failed because a database server was out of reach
//! ([`Error::Unavailable`]: the backend knows nothing applied since its last good flush was
//! lost, or says so) fails its waiters and nothing more: the next flush may succeed.
//! Any other failed flush is reported to every waiter of that flush and poisons the committer:
//! later requests and [`GroupCommitter::check_writable`] fail with [`Error::Poisoned`]
//! until the store is reopened (a backend whose flush failed may have lost writes that
//! were already acknowledged as applied; writing on would build on sand). A write that
//! failed in a way that leaves the engine unusable (a full disk, an engine that poisoned
//! itself) poisons it the same way ([`GroupCommitter::poison`]); the first cause is kept
//! and every later refusal names it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::store::KvStore;

/// Why the store was poisoned: the first failure's text, and whether it was a full disk.
#[derive(Debug, Clone)]
struct Poison {
    cause: String,
    disk_full: bool,
    /// The flush failed without poisoning: the server was out of reach
    /// ([`Error::Unavailable`]), the waiters' writes are not known to be durable, and
    /// a later flush may succeed.
    transient: bool,
}

/// A waiter: where to answer, and the backend's mark of the writes it waits for.
type Reply = (Sender<Result<(), Poison>>, u64);

/// The longest a flush waits for batches being applied when it is asked for.
pub(crate) const GATHER_LIMIT: Duration = Duration::from_micros(500);

/// Counts a batch being applied while it lives (see [`GroupCommitter::applying`]).
#[derive(Debug)]
pub(crate) struct Applying<'a>(&'a AtomicUsize);

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counters of a [`GroupCommitter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Durable requests queued to the flusher. Counted just after queueing, so for an
    /// instant it may trail `completed`.
    pub requests: u64,
    /// Requests answered.
    pub completed: u64,
    /// Backend flushes performed.
    pub flushes: u64,
}

#[derive(Debug, Default)]
struct Shared {
    /// The first failure that poisoned the store (set once; read without a lock by
    /// every apply and durable commit).
    poisoned: OnceLock<Poison>,
    /// Batches being applied right now.
    applying: AtomicUsize,
    requests: AtomicU64,
    completed: AtomicU64,
    flushes: AtomicU64,
}

impl Shared {
    fn poison_cause(&self) -> Option<Poison> {
        self.poisoned.get().cloned()
    }
}

/// Batches durability requests onto shared backend flushes.
#[derive(Debug)]
pub struct GroupCommitter {
    backend: Arc<dyn KvStore>,
    tx: Option<Sender<Reply>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl GroupCommitter {
    /// Starts the flusher thread for `backend`.
    pub fn start(backend: Arc<dyn KvStore>) -> Result<GroupCommitter> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("shoal-flusher".into())
            .spawn({
                let shared = Arc::clone(&shared);
                let backend = Arc::clone(&backend);
                move || flusher(&*backend, &rx, &shared)
            })
            .map_err(|e| Error::backend("start flusher thread", e))?;
        Ok(GroupCommitter {
            backend,
            tx: Some(tx),
            thread: Some(thread),
            shared,
        })
    }

    /// Returns once everything applied before the call is durable.
    pub fn commit_durable(&self) -> Result<()> {
        self.check_writable()?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let tx = self.tx.as_ref().ok_or(Error::Closed)?;
        tx.send((reply, self.backend.apply_mark()))
            .map_err(|_| Error::Closed)?;
        // Counted once queued, so `requests` never includes a request the flusher cannot
        // yet see, and one refused with `Closed` is not counted as pending forever.
        self.shared.requests.fetch_add(1, Ordering::SeqCst);
        match answer.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Poison {
                cause, disk_full, ..
            })) => Err(Error::FlushFailed { cause, disk_full }),
            Err(_) => Err(Error::Closed),
        }
    }

    /// [`GroupCommitter::commit_durable`] without sharing: this caller's own flush, on its
    /// own thread (for measuring what the sharing saves). A failure poisons the store as
    /// the flusher's does, unless the server was only out of reach.
    pub fn commit_alone(&self) -> Result<()> {
        self.check_writable()?;
        let mark = self.backend.apply_mark();
        self.backend
            .flush()
            .and_then(|()| self.backend.mark_durable(mark))
            .inspect_err(|e| {
                if !matches!(e, Error::Unavailable { .. }) {
                    self.poison(e);
                }
            })
    }

    /// Marks a batch as being applied until the guard drops, so a flush asked for
    /// meanwhile waits for it (see the module docs).
    pub(crate) fn applying(&self) -> Applying<'_> {
        self.shared.applying.fetch_add(1, Ordering::SeqCst);
        Applying(&self.shared.applying)
    }

    /// Fails with [`Error::Poisoned`] once a flush has failed (or [`GroupCommitter::poison`]
    /// was called).
    pub fn check_writable(&self) -> Result<()> {
        match self.shared.poison_cause() {
            Some(Poison {
                cause, disk_full, ..
            }) => Err(Error::Poisoned { cause, disk_full }),
            None => Ok(()),
        }
    }

    /// A probe of whether the store is poisoned, for threads that outlive a borrow of
    /// the committer (the lease renewer).
    pub(crate) fn poison_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.poisoned.get().is_some()
    }

    /// Refuses every later write and flush, naming `err` as the cause (unless the store
    /// is poisoned already: the first cause stays).
    pub fn poison(&self, err: &Error) {
        let cause = match err {
            // Already the text of an earlier failure, not a sentence about poisoning.
            Error::Poisoned { cause, .. } => cause.clone(),
            other => other.to_string(),
        };
        let _ = self.shared.poisoned.set(Poison {
            cause,
            disk_full: err.is_disk_full(),
            transient: false,
        });
    }

    /// Requests, completions and flushes so far.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            requests: self.shared.requests.load(Ordering::SeqCst),
            completed: self.shared.completed.load(Ordering::SeqCst),
            flushes: self.shared.flushes.load(Ordering::SeqCst),
        }
    }
}

fn flusher(backend: &dyn KvStore, rx: &Receiver<Reply>, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + GATHER_LIMIT;
        while shared.applying.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let result = match shared.poison_cause() {
            Some(Poison {
                cause, disk_full, ..
            }) => Err(Poison {
                cause: format!("the store was poisoned earlier: {cause}"),
                disk_full,
                transient: false,
            }),
            None => {
                shared.flushes.fetch_add(1, Ordering::SeqCst);
                // A panicking backend must not kill the flusher and hang every waiter.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.flush())) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Poison {
                        cause: e.to_string(),
                        disk_full: e.is_disk_full(),
                        transient: matches!(e, Error::Unavailable { .. }),
                    }),
                    Err(_) => Err(Poison {
                        cause: "the backend panicked while flushing".to_owned(),
                        disk_full: false,
                        transient: false,
                    }),
                }
            }
        };
        if let Err(cause) = &result
            && !cause.transient
        {
            // The first failure stays the cause.
            let _ = shared.poisoned.set(cause.clone());
        }
        shared
            .completed
            .fetch_add(waiters.len() as u64, Ordering::SeqCst);
        for (w, mark) in waiters {
            let answer = result.clone().and_then(|()| {
                backend.mark_durable(mark).map_err(|e| Poison {
                    cause: e.to_string(),
                    disk_full: false,
                    transient: true,
                })
            });
            // A waiter that gave up (its thread died) is no reason to stop serving others.
            let _ = w.send(answer);
        }
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faulty::{FaultOp, FaultyKv};
    use crate::mem::MemKv;

    #[test]
    fn a_single_request_is_one_flush() {
        let kv = Arc::new(MemKv::new());
        let gc = GroupCommitter::start(kv.clone()).unwrap();
        gc.commit_durable().unwrap();
        assert_eq!(kv.flushes(), 1);
        assert_eq!(
            gc.stats(),
            GroupCommitStats {
                requests: 1,
                completed: 1,
                flushes: 1
            }
        );
    }

    #[test]
    fn a_failed_flush_poisons() {
        let kv = Arc::new(FaultyKv::new(MemKv::new()));
        kv.fail_nth(FaultOp::Flush, 1);
        let gc = GroupCommitter::start(kv.clone()).unwrap();
        assert!(matches!(
            gc.commit_durable(),
            Err(Error::FlushFailed { .. })
        ));
        assert!(matches!(gc.check_writable(), Err(Error::Poisoned { .. })));
        assert!(matches!(gc.commit_durable(), Err(Error::Poisoned { .. })));
        assert_eq!(
            kv.count(FaultOp::Flush),
            1,
            "a poisoned committer must not flush again"
        );
    }

    #[test]
    fn a_panicking_flush_is_an_error_not_a_hang() {
        let kv = Arc::new(FaultyKv::new(MemKv::new()));
        kv.panic_nth(FaultOp::Flush, 1);
        let gc = GroupCommitter::start(kv).unwrap();
        let err = gc.commit_durable().unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
