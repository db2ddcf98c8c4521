//! `GroupCommitter`: many durable commits share one flush.
//!
//! A durable commit asks for a flush that *begins after its request*: exactly what
//! durability needs. The committers elect one of themselves to run it (leader and
//! followers, no thread of its own): a request that finds no flush under way flushes on
//! its own thread; requests that arrive while a flush runs wait, and when it ends one of
//! them flushes once for all of them. So a lone committer pays for its fsync and nothing
//! else (no hand-off to another thread and back), and under load the number of flushes
//! stays far below the number of commits. Flushes are numbered; a request waits for the
//! number after the last one begun, and takes that flush's result.
//!
//! Before it flushes, the leader waits (briefly, at most `GATHER_LIMIT`) for batches
//! that are being applied at that moment: their committers are about to ask for a flush
//! too, and with backends that block applies while they flush (fjall holds its journal
//! lock across the fsync) flushing at once would make every one of them wait for the next
//! flush instead. Threads in [`Kv::apply`](crate::Kv::apply) are counted by
//! `GroupCommitter::applying`. Requests that arrive during that wait are served by the
//! flush it precedes.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

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
    /// Durable requests made.
    pub requests: u64,
    /// Requests answered.
    pub completed: u64,
    /// Backend flushes performed.
    pub flushes: u64,
}

/// One flush's waiters and, once it ended, each one's answer.
#[derive(Debug, Default)]
struct Slot {
    /// The backend's mark of the writes each waiter waits for, in the order they came.
    marks: Vec<u64>,
    /// Set when the flush ends: the answer to each mark, checked by the leader before it
    /// hands the lead on (a later flush must not decide an earlier one's answers).
    answers: Option<Vec<std::result::Result<(), Poison>>>,
    /// Answers taken; the slot goes when all are.
    taken: usize,
}

/// The flushes, under one lock.
#[derive(Debug, Default)]
struct Flushes {
    /// A committer has taken the lead: it is gathering, or flushing.
    leading: bool,
    /// Number of the last flush begun; flushes are numbered from 1.
    begun: u64,
    /// Number of the last flush ended (`begun` or one less).
    ended: u64,
    /// The waiters of each flush not yet answered, by number.
    slots: HashMap<u64, Slot>,
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
    shared: Arc<Shared>,
    flushes: Mutex<Flushes>,
    /// Signalled whenever a flush ends.
    ended: Condvar,
}

impl GroupCommitter {
    /// A committer for `backend`. It starts no thread: committers flush on their own.
    pub fn start(backend: Arc<dyn KvStore>) -> Result<GroupCommitter> {
        Ok(GroupCommitter {
            backend,
            shared: Arc::new(Shared::default()),
            flushes: Mutex::new(Flushes::default()),
            ended: Condvar::new(),
        })
    }

    /// Returns once everything applied before the call is durable.
    pub fn commit_durable(&self) -> Result<()> {
        self.check_writable()?;
        let mark = self.backend.apply_mark();
        let mut f = self.flushes.lock();
        // The first flush to begin from now on.
        let wanted = f.begun + 1;
        let slot = f.slots.entry(wanted).or_default();
        let index = slot.marks.len();
        slot.marks.push(mark);
        // Counted once the flush that will answer it is decided, so `requests` never
        // includes a request no flush is yet bound to serve.
        self.shared.requests.fetch_add(1, Ordering::SeqCst);
        while f.ended < wanted {
            if f.leading {
                self.ended.wait(&mut f);
            } else {
                f.leading = true;
                drop(f);
                self.lead();
                f = self.flushes.lock();
            }
        }
        let slot = f
            .slots
            .get_mut(&wanted)
            .expect("a flush's waiters are counted");
        let answer = slot
            .answers
            .as_ref()
            .and_then(|answers| answers.get(index).cloned())
            .expect("an ended flush answers each of its waiters");
        slot.taken += 1;
        if slot.taken == slot.marks.len() {
            f.slots.remove(&wanted);
        }
        drop(f);
        self.shared.completed.fetch_add(1, Ordering::SeqCst);
        match answer {
            Ok(()) => Ok(()),
            Err(Poison {
                cause, disk_full, ..
            }) => Err(Error::FlushFailed { cause, disk_full }),
        }
    }

    /// Runs one flush for every request made until it begins (the caller has taken the
    /// lead), then hands the lead back and wakes the waiters.
    fn lead(&self) {
        let mut lead = Lead {
            committer: self,
            number: None,
            done: false,
        };
        let shared = &*self.shared;
        let deadline = Instant::now() + GATHER_LIMIT;
        while shared.applying.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let number = {
            let mut f = self.flushes.lock();
            f.begun += 1;
            f.begun
        };
        lead.number = Some(number);
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
                // A panicking backend must not leave the lead taken and hang every waiter.
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.backend.flush()
                })) {
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
        lead.end(Some(result));
    }

    /// [`GroupCommitter::commit_durable`] without sharing: this caller's own flush, on its
    /// own thread, never shared (for measuring what the sharing saves). A failure poisons
    /// the store as a shared flush's does, unless the server was only out of reach.
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

/// The lead a committer holds while it flushes for the others. Ending it answers the
/// waiters of its flush and hands the lead on; dropped without ending (an unwind out of
/// the flush), it ends the flush as failed, so no waiter is left behind.
struct Lead<'a> {
    committer: &'a GroupCommitter,
    /// The flush's number, once it has begun.
    number: Option<u64>,
    /// Ended: the waiters answered (if the flush began) and the lead handed on.
    done: bool,
}

impl Lead<'_> {
    /// Answers the waiters of the flush (`None`: abandoned), hands the lead on and wakes
    /// them.
    fn end(&mut self, result: Option<std::result::Result<(), Poison>>) {
        self.done = true;
        let gc = self.committer;
        let mut f = gc.flushes.lock();
        if let Some(number) = self.number.take() {
            let result = result.unwrap_or_else(|| {
                let abandoned = Poison {
                    cause: "a flush was abandoned by a panic".to_owned(),
                    disk_full: false,
                    transient: false,
                };
                let _ = gc.shared.poisoned.set(abandoned.clone());
                Err(abandoned)
            });
            let slot = f.slots.entry(number).or_default();
            // Each waiter's writes are durable if the flush succeeded and the backend
            // says its mark is covered, checked now, before a later flush can begin.
            let answers = slot
                .marks
                .iter()
                .map(|&mark| {
                    result.clone().and_then(|()| {
                        gc.backend.mark_durable(mark).map_err(|e| Poison {
                            cause: e.to_string(),
                            disk_full: false,
                            transient: true,
                        })
                    })
                })
                .collect();
            slot.answers = Some(answers);
            f.ended = number;
        }
        f.leading = false;
        drop(f);
        gc.ended.notify_all();
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        // Only on an unwind out of `lead`: its flush (if begun) failed, and the lead
        // must not stay taken.
        if !self.done {
            self.end(None);
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
