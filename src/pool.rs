//! The awake set: which actors have an open connection, bounded by the memory budget.
//!
//! An actor is *awake* while it has an open connection, idle in the pool or checked out
//! by a caller; *asleep* otherwise (its pages stay in the store, its connection costs
//! nothing). Invariants:
//! - at most one idle connection per actor (a second one returned is closed);
//! - after every check-in, the awake count is at most `max_awake`, or every idle
//!   connection has been closed (checked-out connections are never taken away);
//! - at most `max_waking` connections are being opened at once, so a mass wake is a
//!   queue, not a stampede of simultaneous allocations.
//!
//! Connections are closed outside the pool's lock: closing writes back and may wait.
//! What a pooled connection is (a bare [`Connection`] in the tests, the store's actor
//! connection with its reset state otherwise) is the pool's type parameter.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use lru::LruCache;
use parking_lot::Mutex;
use rusqlite::Connection;

use crate::error::Result;

/// A connection the pool can put to sleep.
pub(crate) trait Sleeper {
    /// Closes the connection. A failed close (a write-back that could not be flushed)
    /// leaves the database as SQLite last committed it; nothing more can be done.
    fn sleep(self);
}

impl Sleeper for Connection {
    fn sleep(self) {
        let _ = self.close();
    }
}

#[derive(Debug)]
pub(crate) struct Pool<C = Connection> {
    idle: Mutex<LruCache<String, C>>,
    awake: AtomicUsize,
    max_awake: usize,
    /// Tokens: one taken for each connection being opened.
    waking: (Sender<()>, Receiver<()>),
}

impl<C: Sleeper> Pool<C> {
    pub(crate) fn new(max_awake: usize, max_waking: usize) -> Pool<C> {
        let (tx, rx) = crossbeam_channel::bounded(max_waking.max(1));
        for _ in 0..max_waking.max(1) {
            let _ = tx.send(());
        }
        Pool {
            idle: Mutex::new(LruCache::unbounded()),
            awake: AtomicUsize::new(0),
            max_awake: max_awake.max(1),
            waking: (tx, rx),
        }
    }

    /// An idle connection to `name`, or a new one from `open` (waiting for a wake slot).
    /// The flag says whether the actor was woken.
    pub(crate) fn checkout(
        &self,
        name: &str,
        open: impl FnOnce() -> Result<C>,
    ) -> Result<(C, bool)> {
        if let Some(conn) = self.idle.lock().pop(name) {
            return Ok((conn, false));
        }
        // A closed channel cannot happen (the pool owns both ends); waking unbounded is
        // the safe fallback.
        let token = self.waking.1.recv().ok();
        let opened = open();
        if token.is_some() {
            let _ = self.waking.0.send(());
        }
        let conn = opened?;
        self.awake.fetch_add(1, Ordering::SeqCst);
        Ok((conn, true))
    }

    /// Returns a connection to the idle set, putting the least recently used idle
    /// actors to sleep while the awake count is over the bound.
    pub(crate) fn checkin(&self, name: String, conn: C) {
        let mut closing = Vec::new();
        {
            let mut idle = self.idle.lock();
            if idle.contains(&name) {
                closing.push(conn);
            } else {
                idle.put(name, conn);
            }
            let mut over = self
                .awake
                .load(Ordering::SeqCst)
                .saturating_sub(self.max_awake);
            over = over.saturating_sub(closing.len());
            while over > 0 {
                let Some((_, lru)) = idle.pop_lru() else {
                    break;
                };
                closing.push(lru);
                over -= 1;
            }
        }
        self.close(closing);
    }

    /// Closes a connection that will not be returned (the caller keeps none).
    pub(crate) fn discard(&self, conn: C) {
        self.close(vec![conn]);
    }

    /// Puts `name` to sleep if it is idle (an actor in use stays awake).
    pub(crate) fn sleep(&self, name: &str) {
        let conn = self.idle.lock().pop(name);
        self.close(conn.into_iter().collect());
    }

    /// Puts every idle actor to sleep.
    pub(crate) fn sleep_all(&self) {
        let all: Vec<C> = {
            let mut idle = self.idle.lock();
            std::iter::from_fn(|| idle.pop_lru().map(|(_, c)| c)).collect()
        };
        self.close(all);
    }

    pub(crate) fn awake(&self) -> usize {
        self.awake.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    fn close(&self, conns: Vec<C>) {
        let n = conns.len();
        for conn in conns {
            conn.sleep();
        }
        self.awake.fetch_sub(n, Ordering::SeqCst);
    }

    pub(crate) fn max_awake(&self) -> usize {
        self.max_awake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Result<Connection> {
        Ok(Connection::open_in_memory()?)
    }

    #[test]
    fn idle_actors_beyond_the_bound_go_to_sleep_least_recent_first() {
        let pool: Pool = Pool::new(2, 1);
        for name in ["a", "b", "c"] {
            let (c, woke) = pool.checkout(name, mem).unwrap();
            assert!(woke);
            pool.checkin(name.into(), c);
        }
        assert_eq!((pool.awake(), pool.idle()), (2, 2));
        // "a" was least recently used: it is asleep, "b" and "c" are awake.
        let (a, woke) = pool.checkout("a", mem).unwrap();
        assert!(woke, "a was put to sleep");
        pool.checkin("a".into(), a);
        // Now "b" is the least recently used.
        let (c, woke) = pool.checkout("c", mem).unwrap();
        assert!(!woke, "c stayed awake");
        pool.checkin("c".into(), c);
        let (b, woke) = pool.checkout("b", mem).unwrap();
        assert!(woke, "b was put to sleep");
        pool.checkin("b".into(), b);
        assert_eq!(pool.awake(), 2);
    }

    #[test]
    fn checked_out_connections_are_never_taken_away() {
        let pool: Pool = Pool::new(1, 2);
        let (a, _) = pool.checkout("a", mem).unwrap();
        let (b, _) = pool.checkout("b", mem).unwrap();
        assert_eq!(pool.awake(), 2);
        pool.checkin("a".into(), a);
        assert_eq!(
            (pool.awake(), pool.idle()),
            (1, 0),
            "a went to sleep, b is still out"
        );
        pool.checkin("b".into(), b);
        assert_eq!((pool.awake(), pool.idle()), (1, 1));
        pool.sleep_all();
        assert_eq!(pool.awake(), 0);
    }

    #[test]
    fn no_more_than_max_waking_actors_open_at_once() {
        use std::sync::atomic::AtomicUsize;
        let pool: Pool = Pool::new(100, 2);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|s| {
            for i in 0..8 {
                let (pool, now, most) = (&pool, &now, &most);
                s.spawn(move || {
                    let (c, _) = pool
                        .checkout(&format!("a{i}"), || {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            now.fetch_sub(1, Ordering::SeqCst);
                            mem()
                        })
                        .unwrap();
                    pool.checkin(format!("a{i}"), c);
                });
            }
        });
        assert!(
            most.load(Ordering::SeqCst) <= 2,
            "{} opened at once",
            most.load(Ordering::SeqCst)
        );
        assert_eq!(pool.awake(), 8);
    }

    #[test]
    fn a_second_idle_connection_to_one_actor_is_closed() {
        let pool: Pool = Pool::new(10, 2);
        let (a1, _) = pool.checkout("a", mem).unwrap();
        let (a2, woke) = pool.checkout("a", mem).unwrap();
        assert!(woke);
        pool.checkin("a".into(), a1);
        pool.checkin("a".into(), a2);
        assert_eq!((pool.awake(), pool.idle()), (1, 1));
    }
}
