//! Leases: exactly one host writes a database at a time, and a stale host is fenced.
//!
//! Off unless [`Kv::enable_leases`] is called (the facade turns them on for a store that
//! several hosts share, PostgreSQL). With leases on, every write of a database's files
//! goes through [`Kv::apply_for`], which guards the batch on this host's lease record.
//!
//! The protocol, and the invariant each step keeps (docs/design.md, "Leases and
//! fencing", says why it is enough):
//! - **The record.** One key per database, [`keys::lease_key`], holding a
//!   [`LeaseRecord`]: owner (a host id), generation, expiry on the store's clock
//!   ([`KvStore::now_ms`]).
//! - **Acquire** ([`Kv::acquire_lease`]): read the record; if it is absent, released,
//!   expired or this host's, write a new one (generation + 1, expiry = now + duration)
//!   guarded on the exact record read: a compare-and-swap, so of two hosts racing, one
//!   wins and the other reads the winner's record and waits. The generation only grows.
//! - **Fence.** Every commit of the database carries a guard on the exact record this
//!   host last wrote, checked in the same atomic batch as the commit. A host whose lease
//!   was taken over (the record now names another owner, a higher generation) has its
//!   commit refused whole ([`Error::Fenced`]); nothing of it is applied. Safety rests on
//!   this guard alone, never on clocks: a host paused past its expiry, or a clock that
//!   runs fast, can only make a takeover come early, and the early takeover still
//!   fences the old owner.
//! - **Renew.** A thread rewrites each held record with a later expiry every third of the
//!   duration, guarded the same way, holding that database's lease lock so that no
//!   commit of it is in flight with the record it replaces. A renewal that finds the
//!   record changed marks the lease lost.
//! - **Release** ([`Kv::release_lease`]): the record is rewritten as released (no owner,
//!   expiry 0, the same generation), guarded on this host's record, and the database's
//!   entries leave the read cache. The cache is also emptied of the database when a
//!   lease is acquired and when it is found lost: it only ever holds databases this host
//!   owns.
//! - **Takeover.** A host that dies stops renewing; once the record's expiry passes on
//!   the store's clock, the next acquire takes it (generation + 1).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::Mutex;

use crate::cache::ReadCache;
use crate::error::{Error, Result};
use crate::keys::{self, DbId, FileKind};
use crate::records::LeaseRecord;
use crate::shared::Kv;
use crate::store::{Batch, KvStore};

/// How this host leases the databases it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// This host's id: unique among the hosts sharing the store (at most 256 bytes).
    pub host: String,
    /// How long a lease runs without renewal: a dead host's databases are taken over
    /// this long after its last renewal.
    pub duration: Duration,
    /// How long [`Kv::acquire_lease`] waits for another host's live lease to run out
    /// before it gives up with [`Error::LeasedElsewhere`].
    pub wait: Duration,
}

impl LeaseConfig {
    /// Leases of `duration` for host `host`, waiting up to twice the duration for one
    /// held elsewhere.
    pub fn new(host: impl Into<String>, duration: Duration) -> LeaseConfig {
        LeaseConfig {
            host: host.into(),
            duration,
            wait: duration * 2,
        }
    }

    /// A host id unique to this process: the host name, the process id and a random
    /// part (so a restarted process on the same host is a new owner).
    pub fn unique_host() -> String {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "host".to_owned());
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            ^ u128::from(std::process::id()).rotate_left(64);
        format!(
            "{name}:{}:{:08x}",
            std::process::id(),
            xxhash_rust::xxh3::xxh3_64(&nonce.to_le_bytes()) as u32
        )
    }
}

/// What this host holds of one database's lease: the one slot of the database in the
/// host's map, from the acquire that made it until the last release.
#[derive(Debug)]
struct Held {
    /// The record as stored: the guard of every commit and renewal.
    raw: Bytes,
    record: LeaseRecord,
    /// Opens of the database on this host that hold the lease.
    users: usize,
    /// Set when the record was found taken over: every later write fails with it.
    lost: Option<LeaseRecord>,
    state: SlotState,
}

/// Where a slot is in its life. Only an `Acquiring` slot's own acquire moves it on, and
/// only to `Held` or `Gone`; a `Gone` slot is out of the map (or about to be), and an
/// acquire that finds one tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Acquiring,
    Held,
    Gone,
}

impl Held {
    fn acquiring() -> Held {
        Held {
            raw: Bytes::new(),
            record: LeaseRecord::default(),
            users: 0,
            lost: None,
            state: SlotState::Acquiring,
        }
    }
}

type HeldMap = HashMap<DbId, Arc<Mutex<Held>>>;

/// The leases of one [`Kv`]: what this host holds, and the thread renewing it.
#[derive(Debug)]
pub(crate) struct Leases {
    config: LeaseConfig,
    held: Arc<Mutex<HeldMap>>,
    /// Dropping it stops the renewer.
    _stop: Sender<()>,
}

impl Leases {
    pub(crate) fn start(
        config: LeaseConfig,
        backend: Arc<dyn KvStore>,
        cache: Arc<ReadCache>,
        poisoned: impl Fn() -> bool + Send + 'static,
    ) -> Result<Leases> {
        if config.host.is_empty() || config.host.len() > 256 {
            return Err(Error::InvalidName {
                name: config.host.chars().take(64).collect(),
                reason: "a host id must be 1 to 256 bytes",
            });
        }
        if config.duration < Duration::from_millis(30) {
            return Err(Error::Corrupt {
                what: "lease configuration".into(),
                reason: format!("a lease of {:?} is too short to renew", config.duration),
            });
        }
        let held = Arc::new(Mutex::new(HeldMap::new()));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let every = config.duration / 3;
        let duration = config.duration;
        let renewing = Arc::clone(&held);
        std::thread::Builder::new()
            .name("shoal-lease-renew".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    // A poisoned store writes nothing more: its leases run out, so other
                    // hosts can take its actors.
                    if poisoned() {
                        break;
                    }
                    renew_all(&*backend, &renewing, duration, &cache);
                }
            })
            .map_err(|e| Error::backend("spawning the lease renewer", e))?;
        Ok(Leases {
            config,
            held,
            _stop: stop,
        })
    }

    fn get(&self, id: DbId) -> Option<Arc<Mutex<Held>>> {
        self.held.lock().get(&id).cloned()
    }

    /// Takes `slot` out of the map, if it is still the database's slot there.
    fn remove_slot(&self, id: DbId, slot: &Arc<Mutex<Held>>) {
        let mut map = self.held.lock();
        if map.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(&id);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Renews every lease held and not lost. A transient failure is retried at the next
/// round; a record found changed marks the lease lost.
fn renew_all(backend: &dyn KvStore, held: &Mutex<HeldMap>, duration: Duration, cache: &ReadCache) {
    let all: Vec<(DbId, Arc<Mutex<Held>>)> = held
        .lock()
        .iter()
        .map(|(id, h)| (*id, Arc::clone(h)))
        .collect();
    for (id, lease) in all {
        let mut lease = lease.lock();
        if lease.state != SlotState::Held || lease.lost.is_some() || lease.users == 0 {
            continue;
        }
        let Ok(now) = backend.now_ms() else { return };
        let record = LeaseRecord {
            expires_ms: now.saturating_add(millis(duration)),
            ..lease.record.clone()
        };
        let raw = record.encode(id);
        let key = keys::lease_key(id);
        let mut batch = Batch::new();
        batch
            .put(key.to_vec(), raw.clone())
            .guard(key.to_vec(), Some(lease.raw.clone()));
        match backend.apply(batch) {
            Ok(()) => {
                lease.raw = raw;
                lease.record = record;
            }
            Err(Error::PreconditionFailed { .. }) => match current_record(backend, id) {
                // The renewal landed after all (an attempt lost with its connection
                // committed, and the retry found its own record).
                Ok(now) if now == record => {
                    lease.raw = raw;
                    lease.record = record;
                }
                now => {
                    lease.lost = Some(now.unwrap_or_default());
                    cache.forget(&keys::db_range(id));
                }
            },
            Err(_) => {}
        }
    }
}

/// The lease record of `id` as stored now (released if absent).
fn current_record(backend: &dyn KvStore, id: DbId) -> Result<LeaseRecord> {
    match backend.get(&keys::lease_key(id))? {
        Some(raw) => LeaseRecord::decode(id, raw),
        None => Ok(LeaseRecord::default()),
    }
}

fn fenced(id: DbId, now: &LeaseRecord) -> Error {
    Error::Fenced {
        id: id.0,
        owner: now.owner.clone(),
        generation: now.generation,
    }
}

/// One use of a database's lease, from [`Kv::hold_lease`]: released when dropped.
#[derive(Debug)]
pub struct LeaseHold {
    kv: Arc<Kv>,
    id: DbId,
}

impl LeaseHold {
    /// Whether the lease was found taken over by another host (every write of the
    /// database now fails with [`Error::Fenced`]).
    pub fn is_lost(&self) -> bool {
        self.kv
            .leases
            .get()
            .and_then(|l| l.get(self.id))
            .is_none_or(|held| {
                let held = held.lock();
                held.state != SlotState::Held || held.lost.is_some()
            })
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        // Nothing to do with a failure here: an unreleased lease runs out by itself.
        let _ = self.kv.release_lease(self.id);
    }
}

impl Kv {
    /// [`Kv::acquire_lease`], released when the returned hold drops; `None` with leases
    /// off.
    pub fn hold_lease(self: &Arc<Kv>, id: DbId) -> Result<Option<LeaseHold>> {
        if !self.leases_enabled() {
            return Ok(None);
        }
        self.acquire_lease(id)?;
        Ok(Some(LeaseHold {
            kv: Arc::clone(self),
            id,
        }))
    }

    /// Turns leases on for this store (see the module docs): from now on every write of
    /// a database's files needs this host to hold its lease. Once per `Kv`.
    pub fn enable_leases(&self, config: LeaseConfig) -> Result<()> {
        let leases = Leases::start(
            config,
            Arc::clone(self.backend()),
            Arc::clone(self.read_cache()),
            self.committer.poison_probe(),
        )?;
        self.leases.set(leases).map_err(|_| Error::Corrupt {
            what: "lease configuration".into(),
            reason: "leases are already on for this store".into(),
        })
    }

    /// Whether leases are on ([`Kv::enable_leases`]).
    pub fn leases_enabled(&self) -> bool {
        self.leases.get().is_some()
    }

    /// Acquires the lease of database `id` for this host (a no-op with leases off; a
    /// second acquire of a lease held counts one more user). Waits up to
    /// [`LeaseConfig::wait`] for a lease another host holds to run out, then takes it
    /// over; fails with [`Error::LeasedElsewhere`] if it is still live by then.
    ///
    /// On one host, opens of a database at once share one acquisition: the first makes
    /// the database's slot (`Acquiring`) and takes the lease, the others wait for it and
    /// count themselves in. A lease found lost while this host still uses it is not taken
    /// again until every use is given back ([`Error::Fenced`] meanwhile).
    pub fn acquire_lease(&self, id: DbId) -> Result<()> {
        let Some(leases) = self.leases.get() else {
            return Ok(());
        };
        // Not refused on a read-only store: the lease record is how hosts agree who may
        // write, and a reader holds it too, so that no host writes while it reads.
        self.committer.check_writable()?;
        loop {
            let (slot, made) = {
                let mut map = leases.held.lock();
                match map.get(&id) {
                    Some(slot) => (Arc::clone(slot), false),
                    None => {
                        let slot = Arc::new(Mutex::new(Held::acquiring()));
                        map.insert(id, Arc::clone(&slot));
                        (slot, true)
                    }
                }
            };
            if made {
                // A panic while taking it must not leave the slot Acquiring (every later
                // open of the database would wait for it forever).
                let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.take_lease(leases, id)
                }))
                .unwrap_or_else(|_| {
                    Err(Error::Corrupt {
                        what: keys::describe(&keys::lease_key(id)),
                        reason: "taking the lease panicked".into(),
                    })
                });
                let mut held = slot.lock();
                return match taken {
                    Ok((raw, record)) => {
                        *held = Held {
                            raw,
                            record,
                            users: 1,
                            lost: None,
                            state: SlotState::Held,
                        };
                        Ok(())
                    }
                    Err(e) => {
                        held.state = SlotState::Gone;
                        leases.remove_slot(id, &slot);
                        Err(e)
                    }
                };
            }
            let mut held = slot.lock();
            match held.state {
                SlotState::Held => {
                    if let Some(now) = &held.lost {
                        return Err(fenced(id, now));
                    }
                    held.users += 1;
                    return Ok(());
                }
                // Another open of this host is taking the lease: wait for it.
                SlotState::Acquiring => {
                    drop(held);
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Given back just now: make a new slot.
                SlotState::Gone => {}
            }
        }
    }

    /// Takes database `id`'s lease for this host in the store (see [`Kv::acquire_lease`]):
    /// the record to guard on, as stored and parsed.
    fn take_lease(&self, leases: &Leases, id: DbId) -> Result<(Bytes, LeaseRecord)> {
        let backend = self.backend();
        let key = keys::lease_key(id);
        let started = Instant::now();
        loop {
            let now = backend.now_ms()?;
            let current = backend.get(&key)?;
            let record = match &current {
                Some(raw) => LeaseRecord::decode(id, raw.clone())?,
                None => LeaseRecord::default(),
            };
            // This host's own record, with no slot for it, was left by an earlier store
            // of this process with the same host id: taken again, as a free one is.
            let free = record.owner.is_empty()
                || record.owner == leases.config.host
                || record.expires_ms <= now;
            if free {
                let mine = LeaseRecord {
                    owner: leases.config.host.clone(),
                    generation: record.generation.saturating_add(1),
                    expires_ms: now.saturating_add(millis(leases.config.duration)),
                };
                let raw = mine.encode(id);
                let mut batch = Batch::new();
                batch
                    .put(key.to_vec(), raw.clone())
                    .guard(key.to_vec(), current);
                match backend.apply(batch) {
                    Ok(()) => {
                        // Whatever this host cached of the database may predate another
                        // owner's writes.
                        self.forget_cached(id);
                        return Ok((raw, mine));
                    }
                    // Another host got there first: read its record and wait.
                    Err(Error::PreconditionFailed { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            let remaining = record.expires_ms.saturating_sub(now);
            let waited = started.elapsed();
            if waited >= leases.config.wait {
                return Err(Error::LeasedElsewhere {
                    id: id.0,
                    owner: record.owner,
                    remaining_ms: remaining,
                    waited_ms: millis(waited),
                });
            }
            let left = leases.config.wait - waited;
            let nap = Duration::from_millis(remaining.clamp(1, 50)).min(left);
            std::thread::sleep(nap);
        }
    }

    /// Gives back one use of database `id`'s lease; the last one releases it (the record
    /// says released, so another host may take it at once) and empties the read cache of
    /// the database. A no-op with leases off or for a lease not held.
    pub fn release_lease(&self, id: DbId) -> Result<()> {
        let Some(leases) = self.leases.get() else {
            return Ok(());
        };
        let Some(lease) = leases.get(id) else {
            return Ok(());
        };
        let mut held = lease.lock();
        if held.state != SlotState::Held {
            return Ok(());
        }
        held.users = held.users.saturating_sub(1);
        if held.users > 0 {
            return Ok(());
        }
        held.state = SlotState::Gone;
        leases.remove_slot(id, &lease);
        self.forget_cached(id);
        if held.lost.is_some() {
            return Ok(());
        }
        let released = LeaseRecord {
            owner: String::new(),
            generation: held.record.generation,
            expires_ms: 0,
        };
        let key = keys::lease_key(id);
        let mut batch = Batch::new();
        batch
            .put(key.to_vec(), released.encode(id))
            .guard(key.to_vec(), Some(held.raw.clone()));
        match self.backend().apply(batch) {
            // Taken over meanwhile: nothing of ours to give back.
            Ok(()) | Err(Error::PreconditionFailed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether database `id`'s lease is held by a host (this one or another) and has not
    /// run out on the store's clock.
    pub fn lease_is_live(&self, id: DbId) -> Result<bool> {
        let Some(record) = self.lease_of(id)? else {
            return Ok(false);
        };
        Ok(!record.owner.is_empty() && record.expires_ms > self.backend().now_ms()?)
    }

    /// Whether another host holds a live lease on `id` (never, with leases off).
    pub(crate) fn leased_elsewhere(&self, id: DbId) -> Result<bool> {
        let Some(leases) = self.leases.get() else {
            return Ok(false);
        };
        if leases
            .get(id)
            .is_some_and(|slot| slot.lock().state == SlotState::Held)
        {
            return Ok(false);
        }
        self.lease_is_live(id)
    }

    /// The lease this host holds on `id`, as stored (for tests and `shoal stats`).
    pub fn lease_of(&self, id: DbId) -> Result<Option<LeaseRecord>> {
        match self.backend().get(&keys::lease_key(id))? {
            Some(raw) => LeaseRecord::decode(id, raw).map(Some),
            None => Ok(None),
        }
    }

    /// Applies a write of file `kind` of database `id`: with leases on, guarded on this
    /// host's lease record in the same batch (see the module docs), so a host whose lease
    /// was taken over writes nothing ([`Error::Fenced`]); without a lease held,
    /// [`Error::NotLeased`]. Super-journals (named per connection, never shared between
    /// hosts) are not leased.
    pub(crate) fn apply_for(&self, id: DbId, kind: FileKind, mut batch: Batch) -> Result<()> {
        if kind == FileKind::Main {
            // The pages this write replaces, kept in the database's history: in the
            // batch, or in batches of their own just before it (see `history.rs`).
            for before in self.record_history(id, &mut batch)? {
                self.apply_leased(id, kind, before)?;
            }
        }
        self.apply_leased(id, kind, batch)
    }

    /// [`Kv::apply_for`] without the history: only the lease guard.
    fn apply_leased(&self, id: DbId, kind: FileKind, mut batch: Batch) -> Result<()> {
        let Some(leases) = self.leases.get() else {
            return self.apply(batch);
        };
        if kind == FileKind::SuperJournal {
            return self.apply(batch);
        }
        let lease = leases.get(id).ok_or(Error::NotLeased { id: id.0 })?;
        let mut held = lease.lock();
        if held.state != SlotState::Held {
            return Err(Error::NotLeased { id: id.0 });
        }
        if let Some(now) = &held.lost {
            return Err(fenced(id, now));
        }
        let key = keys::lease_key(id);
        batch.guard(key.to_vec(), Some(held.raw.clone()));
        match self.apply(batch) {
            Err(Error::PreconditionFailed { what }) => {
                // Which guard failed? If the lease record moved on, this host is fenced.
                let now = current_record(&**self.backend(), id)?;
                if now != held.record {
                    self.forget_cached(id);
                    let err = fenced(id, &now);
                    held.lost = Some(now);
                    return Err(err);
                }
                Err(Error::PreconditionFailed { what })
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::keys::{ChunkNo, KeyRange};
    use crate::mem::MemKv;
    use crate::records::{EntryKind, FileMeta};
    use crate::store::{KvStats, Scan};

    /// `MemKv` with a clock the test moves.
    #[derive(Debug, Default)]
    struct Clocked {
        inner: MemKv,
        now: AtomicU64,
    }

    impl KvStore for Clocked {
        fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
            self.inner.get(key)
        }
        fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
            self.inner.scan(range)
        }
        fn apply(&self, batch: Batch) -> Result<()> {
            self.inner.apply(batch)
        }
        fn flush(&self) -> Result<()> {
            self.inner.flush()
        }
        fn stats(&self) -> Result<KvStats> {
            self.inner.stats()
        }
        fn now_ms(&self) -> Result<u64> {
            Ok(self.now.load(Ordering::SeqCst))
        }
    }

    /// Two hosts on one store with a test clock; leases long enough (a minute) that no
    /// renewal runs during a test.
    fn two_hosts() -> (Arc<Clocked>, Arc<Kv>, Arc<Kv>) {
        let store = Arc::new(Clocked::default());
        store.now.store(1_000_000, Ordering::SeqCst);
        let host = |name: &str| {
            let kv = Arc::new(Kv::open(Arc::clone(&store) as Arc<dyn KvStore>).unwrap());
            let mut config = LeaseConfig::new(name, Duration::from_secs(60));
            config.wait = Duration::ZERO;
            kv.enable_leases(config).unwrap();
            kv
        };
        let (a, b) = (host("a"), host("b"));
        (store, a, b)
    }

    fn write(kv: &Kv, id: DbId, byte: u8) -> Result<()> {
        let before = kv.read_meta(id, FileKind::Main)?;
        let mut w = kv.file_write(id, FileKind::Main);
        w.put_chunk(ChunkNo(0), vec![byte; 16]);
        let generation = before.as_ref().map_or(0, |m| m.meta.generation) + 1;
        let meta = FileMeta {
            chunk_size: 16,
            size: 16,
            generation,
        };
        w.set_meta(&meta, before.as_ref());
        w.commit()
    }

    fn chunk(kv: &Kv, id: DbId) -> Option<u8> {
        kv.read_chunk(id, FileKind::Main, ChunkNo(0))
            .unwrap()
            .map(|c| c[0])
    }

    #[test]
    fn a_taken_over_host_is_fenced_and_writes_nothing() {
        let (store, a, b) = two_hosts();
        let id = a.create("x", EntryKind::Database).unwrap().id;
        assert!(matches!(write(&a, id, 1), Err(Error::NotLeased { .. })));
        a.acquire_lease(id).unwrap();
        write(&a, id, 1).unwrap();
        assert_eq!(chunk(&a, id), Some(1), "cached by a");

        // Live elsewhere: b may not take it, nor write it.
        match b.acquire_lease(id) {
            Err(Error::LeasedElsewhere {
                owner,
                remaining_ms,
                ..
            }) => assert_eq!((owner.as_str(), remaining_ms), ("a", 60_000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(write(&b, id, 9), Err(Error::NotLeased { .. })));

        // a stops renewing (paused); its lease runs out and b takes over.
        store.now.fetch_add(60_001, Ordering::SeqCst);
        b.acquire_lease(id).unwrap();
        let record = b.lease_of(id).unwrap().unwrap();
        assert_eq!((record.owner.as_str(), record.generation), ("b", 2));
        write(&b, id, 2).unwrap();

        // a wakes up believing it owns the database: fenced, and nothing of it applied.
        match write(&a, id, 3) {
            Err(Error::Fenced {
                owner, generation, ..
            }) => assert_eq!((owner.as_str(), generation), ("b", 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(chunk(&b, id), Some(2));
        // a's cache was emptied of the database: it reads b's page, not its own.
        assert_eq!(chunk(&a, id), Some(2));
        assert!(matches!(write(&a, id, 4), Err(Error::Fenced { .. })));
        // Giving back a lost lease changes nothing of b's.
        a.release_lease(id).unwrap();
        assert_eq!(b.lease_of(id).unwrap().unwrap().owner, "b");
        write(&b, id, 5).unwrap();
    }

    #[test]
    fn a_released_lease_is_free_at_once_and_the_generation_only_grows() {
        let (_store, a, b) = two_hosts();
        let id = a.create("x", EntryKind::Database).unwrap().id;
        a.acquire_lease(id).unwrap();
        a.acquire_lease(id).unwrap();
        a.release_lease(id).unwrap();
        // Still held: one use is left.
        assert!(b.acquire_lease(id).is_err());
        a.release_lease(id).unwrap();
        let released = a.lease_of(id).unwrap().unwrap();
        assert_eq!((released.owner.as_str(), released.expires_ms), ("", 0));
        b.acquire_lease(id).unwrap();
        write(&b, id, 1).unwrap();
        b.release_lease(id).unwrap();
        a.acquire_lease(id).unwrap();
        assert_eq!(a.lease_of(id).unwrap().unwrap().generation, 3);
        write(&a, id, 2).unwrap();
    }

    #[test]
    fn leases_are_renewed_in_the_background() {
        let kv = Arc::new(Kv::open(Arc::new(MemKv::new())).unwrap());
        kv.enable_leases(LeaseConfig::new("a", Duration::from_millis(90)))
            .unwrap();
        let id = kv.create("x", EntryKind::Database).unwrap().id;
        kv.acquire_lease(id).unwrap();
        let first = kv.lease_of(id).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let later = kv.lease_of(id).unwrap().unwrap();
        assert!(
            later.expires_ms > first.expires_ms + 200,
            "{first:?} {later:?}"
        );
        assert_eq!(later.generation, first.generation);
        write(&kv, id, 1).unwrap();
    }

    #[test]
    fn dropping_a_database_needs_its_lease_and_removes_it() {
        let (store, a, b) = two_hosts();
        let id = a.create("x", EntryKind::Database).unwrap().id;
        a.acquire_lease(id).unwrap();
        assert!(matches!(
            b.drop_entry("x"),
            Err(Error::LeasedElsewhere { .. })
        ));
        a.release_lease(id).unwrap();
        b.drop_entry("x").unwrap();
        assert_eq!(store.inner.get(&keys::lease_key(id)).unwrap(), None);
        assert_eq!(a.lookup("x").unwrap(), None);
    }

    #[test]
    fn hosts_creating_one_name_at_once_get_one_database() {
        let store: Arc<dyn KvStore> = Arc::new(MemKv::new());
        let hosts: Vec<Arc<Kv>> = (0..4)
            .map(|_| Arc::new(Kv::open(Arc::clone(&store)).unwrap()))
            .collect();
        for round in 0..20 {
            let name = format!("n{round}");
            let results: Vec<(DbId, bool)> = std::thread::scope(|s| {
                let runs: Vec<_> = hosts
                    .iter()
                    .map(|kv| {
                        let name = &name;
                        s.spawn(move || {
                            let (e, created) =
                                kv.lookup_or_create(name, EntryKind::Database).unwrap();
                            (e.id, created)
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert_eq!(results.iter().filter(|(_, c)| *c).count(), 1, "{results:?}");
            assert!(
                results.iter().all(|(id, _)| *id == results[0].0),
                "{results:?}"
            );
        }
        assert_eq!(hosts[0].list().unwrap().len(), 20);
    }

    #[test]
    fn opens_of_one_database_at_once_share_one_acquisition() {
        let (_store, a, _b) = two_hosts();
        let id = a.create("x", EntryKind::Database).unwrap().id;
        for round in 0..20u8 {
            std::thread::scope(|s| {
                for t in 0..4u8 {
                    let a = &a;
                    s.spawn(move || {
                        a.acquire_lease(id).unwrap();
                        // Held by this thread: its writes are fenced by a live lease.
                        match write(a, id, round * 4 + t) {
                            Ok(()) | Err(Error::PreconditionFailed { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                        a.release_lease(id).unwrap();
                    });
                }
            });
            let record = a.lease_of(id).unwrap().unwrap();
            assert_eq!(record.owner, "", "round {round}: released at the end");
        }
        // One acquisition per round at most, never one per thread racing another.
        let generation = a.lease_of(id).unwrap().unwrap().generation;
        assert!(generation <= 80, "{generation}");
        let held = a.leases.get().unwrap().held.lock().len();
        assert_eq!(held, 0, "a slot was left behind");
    }
}
