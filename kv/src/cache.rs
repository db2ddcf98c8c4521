//! `ReadCache`: verified chunks kept above the backend, bounded in bytes.
//!
//! A backend read costs a lookup through its own structures (for fjall: a snapshot, the
//! memtables, block indexes) plus the checksum check; the hot pages of a database (the
//! b-tree's root and interior pages) are read again at almost every statement. This cache
//! keeps chunk payloads as the refcounted buffers the backend returned (no copy), already
//! verified, LRU per shard.
//!
//! Coherence: every write goes through [`crate::Kv::apply`], which calls
//! [`ReadCache::written`] after the backend applied the batch: a put, delete or range
//! delete drops the cached entries it covers and gives their shard a new epoch, under the
//! same lock. A reader records the shard's epoch before it reads the backend and inserts what
//! it read only if the epoch is unchanged, so a value read before a write can never be
//! cached after it.

use std::num::NonZeroUsize;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64;

use crate::store::{Batch, Op};

const SHARDS: usize = 16;

#[derive(Debug)]
struct Shard {
    entries: LruCache<Bytes, Bytes>,
    bytes: usize,
    epoch: u64,
}

/// Verified chunk payloads by key, bounded in bytes.
#[derive(Debug)]
pub(crate) struct ReadCache {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
}

fn shard_of(key: &[u8]) -> usize {
    usize::try_from(xxh3_64(key) % SHARDS as u64).unwrap_or(0)
}

/// Bytes an entry is charged (its buffers plus bookkeeping).
fn weight(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + 64
}

impl ReadCache {
    /// A cache of about `capacity` bytes (0 disables it).
    pub(crate) fn new(capacity: usize) -> ReadCache {
        ReadCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: LruCache::unbounded(),
                        bytes: 0,
                        epoch: 0,
                    })
                })
                .collect(),
            shard_capacity: capacity / SHARDS,
        }
    }

    /// Whether the cache holds anything at all (a capacity of 0 disables it).
    pub(crate) fn enabled(&self) -> bool {
        self.shard_capacity > 0
    }

    fn shard(&self, key: &[u8]) -> Option<&Mutex<Shard>> {
        self.shards.get(shard_of(key))
    }

    /// The cached payload of `key`, or the epoch to pass to [`ReadCache::insert`].
    pub(crate) fn get(&self, key: &[u8]) -> Result<Bytes, u64> {
        let Some(shard) = self.shard(key).filter(|_| self.enabled()) else {
            return Err(0);
        };
        let mut shard = shard.lock();
        match shard.entries.get(key) {
            Some(value) => Ok(value.clone()),
            None => Err(shard.epoch),
        }
    }

    /// Caches `value` for `key`, read from the backend when the shard was at `epoch`.
    pub(crate) fn insert(&self, key: &[u8], value: Bytes, epoch: u64) {
        let Some(shard) = self.shard(key).filter(|_| self.enabled()) else {
            return;
        };
        let w = weight(key, &value);
        if w > self.shard_capacity {
            return;
        }
        let mut shard = shard.lock();
        if shard.epoch != epoch {
            return;
        }
        if let Some(old) = shard.entries.put(Bytes::copy_from_slice(key), value) {
            shard.bytes -= weight(key, &old);
        }
        shard.bytes += w;
        while shard.bytes > self.shard_capacity {
            let Some((k, v)) = shard.entries.pop_lru() else {
                break;
            };
            shard.bytes -= weight(&k, &v);
        }
    }

    /// Brings the cache in line with `batch`, which the backend has just applied.
    ///
    /// Each entry is dropped and its shard's epoch moved on under ONE lock: were the epoch
    /// bumped later, a reader that read the old value before the batch could insert it
    /// between the two and leave it cached.
    pub(crate) fn written(&self, batch: &Batch) {
        if !self.enabled() {
            return;
        }
        for op in &batch.ops {
            match op {
                // A put drops the cached chunk rather than caching the new bytes: the
                // next read verifies what the backend holds.
                Op::Put(k, _) | Op::Delete(k) => {
                    let Some(shard) = self.shard(k) else {
                        continue;
                    };
                    let mut shard = shard.lock();
                    if let Some(old) = shard.entries.pop(&k[..]) {
                        shard.bytes -= weight(k, &old);
                    }
                    shard.epoch += 1;
                }
                Op::DeleteRange(range) => {
                    for shard in &self.shards {
                        let mut shard = shard.lock();
                        let doomed: Vec<Bytes> = shard
                            .entries
                            .iter()
                            .filter(|(k, _)| range.contains(k))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            if let Some(old) = shard.entries.pop(&k) {
                                shard.bytes -= weight(&k, &old);
                            }
                        }
                        shard.epoch += 1;
                    }
                }
            }
        }
    }

    /// Drops every entry in `range` (see [`ReadCache::written`]).
    pub(crate) fn forget(&self, range: &crate::keys::KeyRange) {
        self.written(&Batch {
            ops: vec![Op::DeleteRange(range.clone())],
            preconditions: Vec::new(),
        });
    }

    /// Bytes held now.
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// The most bytes it holds.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }
}

impl Default for ReadCache {
    fn default() -> ReadCache {
        ReadCache::new(0)
    }
}

// The shard count must stay a non-zero constant.
const _: NonZeroUsize = match NonZeroUsize::new(SHARDS) {
    Some(n) => n,
    None => panic!("SHARDS is zero"),
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum;
    use crate::keys::{self, ChunkNo, DbId, FileKind};

    fn key(n: u32) -> Bytes {
        Bytes::copy_from_slice(&keys::chunk_key(DbId(1), FileKind::Main, ChunkNo(n)))
    }

    #[test]
    fn a_read_from_before_a_write_is_never_cached_after_it() {
        let cache = ReadCache::new(1 << 20);
        let k = key(1);
        let epoch = cache.get(&k).unwrap_err();
        // A write lands between the reader's backend read and its insert.
        let mut b = Batch::new();
        b.put(k.clone(), checksum::seal_copy(&k, b"new"));
        cache.written(&b);
        cache.insert(&k, Bytes::from_static(b"old"), epoch);
        assert!(cache.get(&k).is_err(), "the stale read was cached");
    }

    #[test]
    fn puts_replace_and_deletes_drop_cached_chunks() {
        let cache = ReadCache::new(1 << 20);
        for n in 0..4 {
            let e = cache.get(&key(n)).unwrap_err();
            cache.insert(&key(n), Bytes::from_static(b"v1"), e);
        }
        let mut b = Batch::new();
        b.put(key(0), checksum::seal_copy(&key(0), b"v2"));
        b.delete(key(1));
        b.delete_range(keys::chunks_from(DbId(1), FileKind::Main, ChunkNo(3)));
        cache.written(&b);
        assert!(cache.get(&key(0)).is_err(), "a put drops the stale chunk");
        assert!(cache.get(&key(1)).is_err());
        assert_eq!(&cache.get(&key(2)).unwrap()[..], b"v1");
        assert!(cache.get(&key(3)).is_err());
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = ReadCache::new(1 << 20);
        for n in 0..1000 {
            let e = cache.get(&key(n)).unwrap_err();
            cache.insert(&key(n), Bytes::from(vec![0u8; 4096]), e);
        }
        assert!(
            cache.bytes() <= cache.capacity(),
            "{} > {}",
            cache.bytes(),
            cache.capacity()
        );
        assert!(cache.bytes() > cache.capacity() / 2);
    }
}
