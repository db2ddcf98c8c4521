//! `MemKv`: the in-memory backend, and the reference model the other backends are tested
//! against. It keeps the same contract (atomic, ordered batches; preconditions) with the
//! simplest possible structure: one ordered map behind one lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::error::Result;
use crate::keys::KeyRange;
use crate::store::{Batch, KvStats, KvStore, Op, Scan};

/// An in-memory [`KvStore`]. Flushing is a no-op (counted); nothing survives the process.
#[derive(Debug, Default)]
pub struct MemKv {
    map: RwLock<BTreeMap<Bytes, Bytes>>,
    flushes: AtomicU64,
}

impl MemKv {
    /// An empty store.
    pub fn new() -> MemKv {
        MemKv::default()
    }

    /// How many times `flush` was called.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Every entry, in order (for comparing stores in tests).
    pub fn snapshot(&self) -> Vec<(Bytes, Bytes)> {
        self.map
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl KvStore for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.map.read().get(key).cloned())
    }

    fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        if range.is_empty() {
            return Ok(Box::new(std::iter::empty()));
        }
        let entries: Vec<_> = self
            .map
            .read()
            .range::<[u8], _>(range.bounds())
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Ok(Box::new(entries.into_iter()))
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let mut map = self.map.write();
        batch.check_limits()?;
        batch.check_preconditions(|key| Ok(map.get(key).cloned()))?;
        for op in batch.ops {
            match op {
                Op::Put(k, v) => {
                    map.insert(k, v);
                }
                Op::Delete(k) => {
                    map.remove(&k);
                }
                Op::DeleteRange(range) => {
                    if range.is_empty() {
                        continue;
                    }
                    let doomed: Vec<Bytes> = map
                        .range::<[u8], _>(range.bounds())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn stats(&self) -> Result<KvStats> {
        let map = self.map.read();
        Ok(KvStats {
            keys: map.len() as u64,
            logical_bytes: map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            disk_bytes: 0,
            cache_capacity: 0,
            garbage_bytes: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn failed_precondition_applies_nothing() {
        let kv = MemKv::new();
        let mut b = Batch::new();
        b.put(&b"a"[..], &b"1"[..]).guard(&b"g"[..], None);
        kv.apply(b).unwrap();
        let mut b = Batch::new();
        b.put(&b"a"[..], &b"2"[..])
            .guard(&b"g"[..], Some(Bytes::from_static(b"x")));
        assert!(matches!(kv.apply(b), Err(Error::PreconditionFailed { .. })));
        assert_eq!(kv.get(b"a").unwrap().unwrap(), &b"1"[..]);
    }

    #[test]
    fn inverted_ranges_are_empty() {
        let kv = MemKv::new();
        kv.apply({
            let mut b = Batch::new();
            b.put(&b"b"[..], &b"1"[..]);
            b
        })
        .unwrap();
        let r = KeyRange {
            start: b"c".to_vec(),
            end: b"a".to_vec(),
        };
        assert_eq!(kv.scan(r.clone()).unwrap().count(), 0);
        kv.delete_range(r).unwrap();
        assert_eq!(kv.stats().unwrap().keys, 1);
    }
}
