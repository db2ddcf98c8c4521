//! `FaultyKv`: a wrapper that fails (or panics in) the Nth operation of a kind, for
//! fault-injection tests of everything above the kv layer.
//!
//! Operations are counted per [`FaultOp`] from the moment the wrapper is built or
//! [`FaultyKv::reset_counts`] is called; `fail_nth(FaultOp::Batch, 3)` makes the third
//! batch from then on return [`Error::Injected`] *without applying anything* (backends
//! are atomic, so a half-applied batch is not a fault that can happen). `FaultOp::Any`
//! counts every operation.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::keys::KeyRange;
use crate::store::{Batch, KvStats, KvStore, Scan};

/// The operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOp {
    /// Every operation, counted together.
    Any,
    /// `get` and `scan`.
    Read,
    /// `apply` (and `delete_range`).
    Batch,
    /// `flush`.
    Flush,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Return [`Error::Injected`].
    Error,
    /// Panic, as a buggy backend would.
    Panic,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    op: FaultOp,
    nth: u64,
    mode: FaultMode,
    /// Keep failing every later operation of the kind too (a dead disk).
    sticky: bool,
}

/// Wraps a backend and injects faults on command.
#[derive(Debug)]
pub struct FaultyKv<K> {
    inner: K,
    plan: Mutex<Option<Plan>>,
    any: AtomicU64,
    reads: AtomicU64,
    batches: AtomicU64,
    flushes: AtomicU64,
    injected: AtomicU64,
}

impl<K: KvStore> FaultyKv<K> {
    /// Wraps `inner` with no fault planned.
    pub fn new(inner: K) -> FaultyKv<K> {
        FaultyKv {
            inner,
            plan: Mutex::new(None),
            any: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &K {
        &self.inner
    }

    /// Makes the `nth` (from 1, counted from now) operation of kind `op` fail.
    pub fn fail_nth(&self, op: FaultOp, nth: u64) {
        self.plan_fault(op, nth, FaultMode::Error, false);
    }

    /// Makes the `nth` operation of kind `op` and every later one fail.
    pub fn fail_from(&self, op: FaultOp, nth: u64) {
        self.plan_fault(op, nth, FaultMode::Error, true);
    }

    /// Makes the `nth` operation of kind `op` panic.
    pub fn panic_nth(&self, op: FaultOp, nth: u64) {
        self.plan_fault(op, nth, FaultMode::Panic, false);
    }

    /// Makes the `nth` operation of kind `op` and every later one panic.
    pub fn panic_from(&self, op: FaultOp, nth: u64) {
        self.plan_fault(op, nth, FaultMode::Panic, true);
    }

    fn plan_fault(&self, op: FaultOp, nth: u64, mode: FaultMode, sticky: bool) {
        self.reset_counts();
        *self.plan.lock() = Some(Plan {
            op,
            nth,
            mode,
            sticky,
        });
    }

    /// Cancels any planned fault.
    pub fn clear(&self) {
        *self.plan.lock() = None;
    }

    /// Restarts the operation counts from zero.
    pub fn reset_counts(&self) {
        for c in [&self.any, &self.reads, &self.batches, &self.flushes] {
            c.store(0, Ordering::SeqCst);
        }
    }

    /// Operations of kind `op` since the counts were last reset.
    pub fn count(&self, op: FaultOp) -> u64 {
        self.counter(op).load(Ordering::SeqCst)
    }

    /// How many faults have been injected in total.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn counter(&self, op: FaultOp) -> &AtomicU64 {
        match op {
            FaultOp::Any => &self.any,
            FaultOp::Read => &self.reads,
            FaultOp::Batch => &self.batches,
            FaultOp::Flush => &self.flushes,
        }
    }

    /// Counts one operation of kind `op` and injects the planned fault if it is due.
    fn step(&self, op: FaultOp, name: &'static str) -> Result<()> {
        let any = self.any.fetch_add(1, Ordering::SeqCst) + 1;
        let own = self.counter(op).fetch_add(1, Ordering::SeqCst) + 1;
        let Some(plan) = *self.plan.lock() else {
            return Ok(());
        };
        let n = match plan.op {
            FaultOp::Any => any,
            kind if kind == op => own,
            _ => return Ok(()),
        };
        let due = if plan.sticky {
            n >= plan.nth
        } else {
            n == plan.nth
        };
        if !due {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        match plan.mode {
            FaultMode::Error => Err(Error::Injected { op: name, nth: n }),
            FaultMode::Panic => panic!("injected panic in {name} #{n}"),
        }
    }
}

impl<K: KvStore> KvStore for FaultyKv<K> {
    fn get(&self, key: &[u8]) -> Result<Option<bytes::Bytes>> {
        self.step(FaultOp::Read, "get")?;
        self.inner.get(key)
    }

    fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        self.step(FaultOp::Read, "scan")?;
        self.inner.scan(range)
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        self.step(FaultOp::Batch, "batch")?;
        self.inner.apply(batch)
    }

    fn flush(&self) -> Result<()> {
        self.step(FaultOp::Flush, "flush")?;
        self.inner.flush()
    }

    fn compact(&self) -> Result<()> {
        self.inner.compact()
    }

    fn stats(&self) -> Result<KvStats> {
        self.inner.stats()
    }

    fn apply_mark(&self) -> u64 {
        self.inner.apply_mark()
    }

    fn mark_durable(&self, mark: u64) -> Result<()> {
        self.inner.mark_durable(mark)
    }

    fn durable_here(&self) {
        self.inner.durable_here();
    }

    fn now_ms(&self) -> Result<u64> {
        self.inner.now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemKv;

    fn put(kv: &impl KvStore, k: &'static [u8]) -> Result<()> {
        let mut b = Batch::new();
        b.put(k, k);
        kv.apply(b)
    }

    #[test]
    fn the_nth_batch_fails_and_applies_nothing() {
        let kv = FaultyKv::new(MemKv::new());
        kv.fail_nth(FaultOp::Batch, 2);
        put(&kv, b"a").unwrap();
        assert!(matches!(
            put(&kv, b"b"),
            Err(Error::Injected {
                op: "batch",
                nth: 2
            })
        ));
        put(&kv, b"c").unwrap();
        assert!(kv.get(b"b").unwrap().is_none());
        assert_eq!(kv.injected(), 1);
    }

    #[test]
    fn any_counts_every_kind_and_sticky_keeps_failing() {
        let kv = FaultyKv::new(MemKv::new());
        kv.fail_from(FaultOp::Any, 3);
        put(&kv, b"a").unwrap();
        kv.get(b"a").unwrap();
        assert!(kv.flush().is_err());
        assert!(kv.get(b"a").is_err());
        kv.clear();
        assert!(kv.get(b"a").unwrap().is_some());
    }

    #[test]
    fn panics_are_real_panics() {
        let kv = FaultyKv::new(MemKv::new());
        kv.panic_nth(FaultOp::Flush, 1);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kv.flush()));
        assert!(caught.is_err());
    }
}
