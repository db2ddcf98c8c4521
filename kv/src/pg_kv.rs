//! `PgKv`: the store in one PostgreSQL table, for actors that move between hosts.
//!
//! Built on the `postgres` client (sync, over tokio-postgres) and an `r2d2` pool. No
//! PostgreSQL type crosses this module's boundary. The table is Rivet's shape,
//! `shoal_kv(key bytea PRIMARY KEY, value bytea)`, in the schema the connection's
//! `search_path` names (`?options=-csearch_path%3Dname` in the URL). The invariants it
//! keeps for the trait's contract, and why each holds, are in docs/design.md ("The
//! PostgreSQL backend"):
//! - a batch is one statement (so one transaction, at READ COMMITTED) in one round trip:
//!   the server function `shoal_apply` ([`APPLY_FUNCTION`]) checks its guards first, each
//!   on a row it locks (`SELECT .. FOR UPDATE`; a guard on an absent key first inserts a
//!   placeholder row with a NULL value, so that a racing writer of the key waits on it),
//!   then applies the ops. Readers never see NULL-valued rows;
//! - every transaction commits with `synchronous_commit = off` (set on each connection):
//!   applied, visible to every host, and durable at the next [`KvStore::flush`], which is
//!   one transaction that writes this store's row of `shoal_flush` and commits with
//!   `synchronous_commit = on` (its commit record is flushed, and with it every commit
//!   before it in the WAL); the group committer shares one such flush among many
//!   commits;
//! - a server restart between a batch's apply and the flush that was to make it durable is
//!   detected (each connection records the postmaster's start time, its epoch) and the
//!   waiters of that flush get [`Error::Unavailable`], never a false success;
//! - an error that means the server is out of reach is [`Error::Unavailable`] and does
//!   not poison the store: the operation is tried again on a fresh connection, up to
//!   [`PgConfig::retry_for`] (an apply too: see `apply_once` for why a retry never
//!   applies a batch twice where it matters);
//! - values are copied once off the wire (the client owns its buffers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use postgres::types::Type;
use postgres::{Client, NoTls};

use crate::error::{Error, Result};
use crate::keys::KeyRange;
use crate::store::{Batch, Entry, KvStats, KvStore, Op, Paged, Scan};

/// Rows a scan fetches per round trip.
const SCAN_PAGE: i64 = 512;

/// The table every host shares.
const TABLE: &str = "shoal_kv";

/// A batch in one round trip: `shoal_apply(guard keys, guard values, guard-expects-absent
/// flags, range starts, range ends (empty: unbounded), put keys, put values, deleted
/// keys)`, run as one statement (so one transaction). The guards are checked first, each on
/// a row it locks, in the order given; the first that fails raises SQLSTATE `SH001` with
/// its index, which rolls back everything (a guard on an absent key inserts a NULL-valued
/// placeholder row to lock, see the module docs). Then the range deletes, the upsert and
/// the deletes, as `apply` folded them. VOLATILE, so at READ COMMITTED each statement
/// sees what committed before it, as separate statements would.
const APPLY_FUNCTION: &str = "
CREATE OR REPLACE FUNCTION shoal_apply(gk bytea[], gv bytea[], ga bool[], rs bytea[],
    re bytea[], pk bytea[], pv bytea[], dk bytea[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  i int;
  cur bytea;
BEGIN
  FOR i IN 1 .. coalesce(array_length(gk, 1), 0) LOOP
    IF ga[i] THEN
      INSERT INTO shoal_kv (key, value) VALUES (gk[i], NULL) ON CONFLICT (key) DO NOTHING;
    END IF;
    cur := NULL;
    SELECT value INTO cur FROM shoal_kv WHERE key = gk[i] FOR UPDATE;
    IF (ga[i] AND cur IS NOT NULL) OR (NOT ga[i] AND cur IS DISTINCT FROM gv[i]) THEN
      RAISE EXCEPTION 'shoal guard %', i - 1 USING ERRCODE = 'SH001';
    END IF;
  END LOOP;
  FOR i IN 1 .. coalesce(array_length(rs, 1), 0) LOOP
    IF length(re[i]) = 0 THEN
      DELETE FROM shoal_kv WHERE key >= rs[i];
    ELSE
      DELETE FROM shoal_kv WHERE key >= rs[i] AND key < re[i];
    END IF;
  END LOOP;
  IF coalesce(array_length(pk, 1), 0) > 0 THEN
    INSERT INTO shoal_kv (key, value) SELECT * FROM unnest(pk, pv)
      ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
  END IF;
  IF coalesce(array_length(dk, 1), 0) > 0 THEN
    DELETE FROM shoal_kv WHERE key = ANY(dk);
  END IF;
END
$fn$;";

/// How to reach the PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// A libpq-style URL (`postgresql://user@host:port/db`, a unix socket directory as
    /// the percent-encoded host) or key-value string (`host=/run/pg user=shoal`).
    pub url: String,
    /// Connections in the pool: at most this many operations run on the server at once.
    pub pool_size: u32,
    /// How long an operation waits for a connection (and keeps trying to reach a server
    /// that went away) before it fails with [`Error::Unavailable`].
    pub retry_for: Duration,
}

impl PgConfig {
    /// The server at `url`, with a pool of 16 connections and 5 s of retries.
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            pool_size: 16,
            retry_for: Duration::from_secs(5),
        }
    }
}

/// A pooled connection and the epoch of the server it reached: the token in the
/// UNLOGGED table `shoal_boot`, which PostgreSQL empties whenever it recovers from a crash
/// (an immediate shutdown, a backend that crashed and made the postmaster reinitialize, a
/// standby promoted), exactly the events that can lose asynchronous commits; the first
/// connection after one writes a new token. The postmaster's start time would miss a
/// crash-restart cycle within one postmaster. Read at the connection's first use (a
/// connection never outlives its server).
struct Conn {
    client: Client,
    epoch: Option<i64>,
}

impl Conn {
    fn epoch(&mut self) -> std::result::Result<i64, postgres::Error> {
        if let Some(epoch) = self.epoch {
            return Ok(epoch);
        }
        loop {
            // Of two connections racing to write the token, the one whose insert waited
            // may not see the other's row in its snapshot: it asks again.
            let rows = self.client.query(
                "WITH ins AS (INSERT INTO shoal_boot (one, token) VALUES (true, $1)
                              ON CONFLICT (one) DO NOTHING RETURNING token)
                 SELECT token FROM ins UNION ALL SELECT token FROM shoal_boot LIMIT 1",
                &[&unique_row()],
            )?;
            if let Some(row) = rows.first() {
                let epoch = row.get(0);
                self.epoch = Some(epoch);
                return Ok(epoch);
            }
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("epoch", &self.epoch).finish()
    }
}

/// Opens connections for the pool: each set up for asynchronous commits, and stamped
/// with the epoch of the server it reached.
#[derive(Debug)]
struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> std::result::Result<Conn, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute("SET synchronous_commit = off")?;
        Ok(Conn {
            client,
            epoch: None,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> std::result::Result<(), postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

/// The shoal store in a PostgreSQL table.
#[derive(Debug)]
pub struct PgKv {
    pool: r2d2::Pool<Manager>,
    retry_for: Duration,
    /// The epoch of the server the last successful flush reached.
    flushed_epoch: AtomicI64,
    /// Where the store is, for messages (the URL without a password).
    place: String,
    /// This store's row in `shoal_flush`, which every flush writes (see `flush`).
    flush_row: i64,
}

/// What one thread last applied to one store.
#[derive(Debug, Clone, Copy)]
struct Applied {
    /// The epoch of the server it reached.
    epoch: i64,
    /// Not yet known durable: no durable commit of this thread returned since.
    pending: bool,
}

/// Records what this thread last applied to store `store` (see [`APPLIED`]).
fn note_applied(store: i64, epoch: i64, pending: bool) {
    APPLIED.with(|a| {
        a.borrow_mut().insert(store, Applied { epoch, pending });
    });
}

thread_local! {
    /// Per store (by its `flush_row`): what this thread last applied to it (see
    /// [`KvStore::apply_mark`] and `apply_once`).
    static APPLIED: std::cell::RefCell<std::collections::HashMap<i64, Applied>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Whether `e` means the server is (for now) out of reach, rather than refusing the
/// statement: a closed connection, an I/O error, or SQLSTATE class 08 (connection
/// exception) or 57P (operator intervention: shutdown, crash, cannot connect now).
fn unreachable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("57P")
        }
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// Whether the transaction lost a race PostgreSQL resolves by aborting one side
/// (serialization failure, deadlock): it applied nothing and may simply run again.
fn lost_race(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code() == "40001" || c.code() == "40P01")
}

/// The failure of one attempt: whether it is safe to run the operation again.
enum Attempt {
    /// Nothing was applied: try again (a new connection if the server went away).
    Retry(Error),
    /// Report it.
    Fail(Error),
}

impl PgKv {
    /// Connects to the server and creates the table if it is missing; checks that a
    /// table found there has the columns shoal writes.
    pub fn open(config: &PgConfig) -> Result<PgKv> {
        let pg: postgres::Config = config.url.parse().map_err(|e| Error::Corrupt {
            what: "the PostgreSQL URL".into(),
            reason: format!("{e}"),
        })?;
        let place = describe_config(&pg);
        let pool = r2d2::Pool::builder()
            .max_size(config.pool_size.max(1))
            .min_idle(Some(0))
            .connection_timeout(config.retry_for.max(Duration::from_millis(100)))
            .test_on_check_out(false)
            .build_unchecked(Manager { config: pg });
        let kv = PgKv {
            pool,
            retry_for: config.retry_for,
            flushed_epoch: AtomicI64::new(0),
            place,
            flush_row: unique_row(),
        };
        kv.create_table()?;
        Ok(kv)
    }

    fn create_table(&self) -> Result<()> {
        self.run("open", |conn| {
            let mut tx = conn.client.transaction()?;
            // Two hosts opening a new store at once: one creates, the other waits. A
            // schema the URL's search_path names first is created if it is missing.
            tx.batch_execute(&format!(
                "SELECT pg_advisory_xact_lock(7306982011277369);
                 DO $$ BEGIN
                   IF current_schema() IS NULL THEN
                     EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', trim(both '\"' FROM
                       trim(split_part(current_setting('search_path'), ',', 1))));
                   END IF;
                 END $$;
                 CREATE TABLE IF NOT EXISTS {TABLE} (key bytea PRIMARY KEY, value bytea);
                 CREATE TABLE IF NOT EXISTS shoal_flush (store int8 PRIMARY KEY, n int8 NOT NULL);
                 CREATE UNLOGGED TABLE IF NOT EXISTS shoal_boot
                   (one bool PRIMARY KEY DEFAULT true CHECK (one), token int8 NOT NULL);
                 {APPLY_FUNCTION}"
            ))?;
            tx.commit()
        })?;
        self.check_table()
    }

    /// Refuses a table that is not the one shoal writes (altered behind its back).
    fn check_table(&self) -> Result<()> {
        let columns: Vec<(String, String, bool)> = self.run("open", |conn| {
            let rows = conn.client.query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                        EXISTS (SELECT 1 FROM pg_index i
                                 WHERE i.indrelid = a.attrelid AND i.indisprimary
                                   AND i.indnatts = 1 AND i.indkey[0] = a.attnum)
                   FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY a.attnum",
                &[&TABLE],
            )?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })?;
        let expected = [
            ("key".to_owned(), "bytea".to_owned(), true),
            ("value".to_owned(), "bytea".to_owned(), false),
        ];
        if columns != expected {
            let found: Vec<String> = columns
                .iter()
                .map(|(n, t, pk)| format!("{n} {t}{}", if *pk { " primary key" } else { "" }))
                .collect();
            return Err(Error::Corrupt {
                what: format!("table {TABLE} at {}", self.place),
                reason: format!(
                    "it has columns ({}), not (key bytea primary key, value bytea): it was \
                     not made by shoal, or was altered",
                    found.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Runs `f` on a pooled connection, again on a fresh one while the server is out of
    /// reach (up to `retry_for`) or the transaction lost a race.
    fn run<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&mut Conn) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        self.attempt(op, |conn| {
            f(conn).map_err(|e| {
                if unreachable(&e) || lost_race(&e) {
                    Attempt::Retry(pg_error(op, e))
                } else {
                    Attempt::Fail(pg_error(op, e))
                }
            })
        })
    }

    fn attempt<T>(
        &self,
        op: &'static str,
        mut f: impl FnMut(&mut Conn) -> std::result::Result<T, Attempt>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut nap = Duration::from_millis(5);
        loop {
            let last = match self.pool.get() {
                Ok(mut conn) => match f(&mut conn) {
                    Ok(v) => return Ok(v),
                    Err(Attempt::Fail(e)) => return Err(e),
                    Err(Attempt::Retry(e)) => e,
                },
                Err(e) => Error::Unavailable {
                    op,
                    cause: format!("no connection to {}: {e}", self.place),
                },
            };
            if started.elapsed() >= self.retry_for {
                return Err(last);
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(200));
        }
    }

    /// One attempt at applying `batch`: one statement, one round trip.
    ///
    /// A statement that fails for a lost connection may or may not have committed; it is
    /// tried again all the same. That is safe because a retry can never apply a batch
    /// twice where it matters: every commit shoal makes is guarded on its file's metadata
    /// (and lease), which the first application changed, so a second one fails its guard
    /// (the VFS then reports the database changed underneath it, and it is reopened,
    /// finding the commit there); and an unguarded batch only deletes, or puts values
    /// that a second application writes again unchanged.
    fn apply_once(
        &self,
        conn: &mut Conn,
        batch: &Batch,
        writes: &Writes,
        sent: &std::cell::Cell<bool>,
    ) -> std::result::Result<(), Attempt> {
        let retry_or_fail = |e: postgres::Error| {
            if unreachable(&e) || lost_race(&e) {
                Attempt::Retry(pg_error("apply", e))
            } else {
                Attempt::Fail(pg_error("apply", e))
            }
        };
        let epoch = conn.epoch().map_err(retry_or_fail)?;
        // A write of this thread that is not yet known durable reached a server that has
        // restarted since: it may be lost, and what this thread writes now may depend on
        // it (the next staged batch of a transaction, its commit, the moves after it).
        // Refused once, so the caller's transaction fails instead of building on a hole.
        let store = self.flush_row;
        let before = APPLIED.with(|a| a.borrow().get(&store).copied());
        if let Some(Applied {
            epoch: was,
            pending: true,
        }) = before
            && was != epoch
        {
            note_applied(store, epoch, false);
            return Err(Attempt::Fail(Error::Unavailable {
                op: "apply",
                cause: format!(
                    "the server at {} restarted after this thread's last write and before                      it was known durable: that write may be lost, so nothing is written on                      top of it (the transaction must run again)",
                    self.place
                ),
            }));
        }
        let guard_keys: Vec<&[u8]> = batch.preconditions.iter().map(|p| &p.key[..]).collect();
        let guard_values: Vec<&[u8]> = batch
            .preconditions
            .iter()
            .map(|p| p.expected.as_deref().unwrap_or_default())
            .collect();
        let guard_absent: Vec<bool> = batch
            .preconditions
            .iter()
            .map(|p| p.expected.is_none())
            .collect();
        let starts: Vec<&[u8]> = writes.ranges.iter().map(|r| &r.start[..]).collect();
        let ends: Vec<&[u8]> = writes.ranges.iter().map(|r| &r.end[..]).collect();
        let (mut put_keys, mut put_values, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in &writes.keys {
            match v {
                Some(v) => {
                    put_keys.push(&k[..]);
                    put_values.push(&v[..]);
                }
                None => deleted.push(&k[..]),
            }
        }
        sent.set(true);
        let result = conn.client.query_typed(
            "SELECT shoal_apply($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                (&guard_keys, Type::BYTEA_ARRAY),
                (&guard_values, Type::BYTEA_ARRAY),
                (&guard_absent, Type::BOOL_ARRAY),
                (&starts, Type::BYTEA_ARRAY),
                (&ends, Type::BYTEA_ARRAY),
                (&put_keys, Type::BYTEA_ARRAY),
                (&put_values, Type::BYTEA_ARRAY),
                (&deleted, Type::BYTEA_ARRAY),
            ],
        );
        match result {
            Ok(_) => {
                note_applied(store, epoch, true);
                Ok(())
            }
            Err(e) if e.code().is_some_and(|c| c.code() == "SH001") => {
                // The message names the index of the guard that failed.
                let failed = e
                    .as_db_error()
                    .and_then(|db| db.message().rsplit(' ').next()?.parse::<usize>().ok())
                    .and_then(|i| batch.preconditions.get(i));
                Err(Attempt::Fail(Error::PreconditionFailed {
                    what: failed.map_or_else(
                        || "a guarded key".to_owned(),
                        |p| crate::keys::describe(&p.key),
                    ),
                }))
            }
            Err(e) => Err(retry_or_fail(e)),
        }
    }

    /// Whether `writes` are all in the store: every put with its value, every deleted key
    /// and range empty. After an attempt lost with its connection, a retry whose guard
    /// fails asks this: a batch shoal writes carries a record unique to it (a file's new
    /// metadata, a lease's new expiry), so finding all of it means the lost attempt
    /// committed.
    fn already_applied(&self, writes: &Writes) -> Result<bool> {
        let keys: Vec<&[u8]> = writes.keys.keys().map(|k| &k[..]).collect();
        let found: std::collections::HashMap<Vec<u8>, Vec<u8>> = self.run("apply", |conn| {
            let rows = conn.client.query_typed(
                "SELECT key, value FROM shoal_kv WHERE key = ANY($1) AND value IS NOT NULL",
                &[(&keys, Type::BYTEA_ARRAY)],
            )?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        let keys_match = writes
            .keys
            .iter()
            .all(|(k, v)| found.get(&k[..]).map(Vec::as_slice) == v.as_deref());
        if !keys_match {
            return Ok(false);
        }
        for range in &writes.ranges {
            if self.scan(range.clone())?.next().is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A batch's ops as PostgreSQL applies them: the range deletes first, then one write
/// per key. Equivalent to the ops in order: a put or delete before a range delete that
/// covers it is dropped (the range delete removes the key anyway), and one after it
/// survives, applied after the range deletes.
#[derive(Debug, Default)]
struct Writes {
    ranges: Vec<KeyRange>,
    keys: BTreeMap<Bytes, Option<Bytes>>,
}

fn fold(ops: &[Op]) -> Writes {
    let mut w = Writes::default();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                w.keys.insert(k.clone(), Some(v.clone()));
            }
            Op::Delete(k) => {
                w.keys.insert(k.clone(), None);
            }
            Op::DeleteRange(range) => {
                if range.is_empty() {
                    continue;
                }
                w.keys.retain(|k, _| !range.contains(k));
                w.ranges.push(range.clone());
            }
        }
    }
    w
}

fn pg_error(op: &'static str, e: postgres::Error) -> Error {
    if unreachable(&e) {
        Error::Unavailable {
            op,
            cause: e.to_string(),
        }
    } else {
        // The server's message, with its detail, says what was refused.
        let cause = match e.as_db_error() {
            Some(db) => format!(
                "{}: {}{}",
                db.code().code(),
                db.message(),
                db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            ),
            None => e.to_string(),
        };
        Error::Backend {
            op,
            cause: cause.into(),
        }
    }
}

/// An id for this store's `shoal_flush` row, unique among the stores open on a server
/// (the time, the process and a counter, hashed).
fn unique_row() -> i64 {
    static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut seed = now.to_le_bytes().to_vec();
    seed.extend_from_slice(&std::process::id().to_le_bytes());
    seed.extend_from_slice(&OPENED.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&seed).cast_signed()
}

/// Host, port, database and user of `pg`, for messages (never the password).
fn describe_config(pg: &postgres::Config) -> String {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = pg
        .get_ports()
        .first()
        .map_or_else(|| "5432".to_owned(), ToString::to_string);
    format!(
        "postgresql {}:{port}/{} as {}",
        hosts.join(","),
        pg.get_dbname().unwrap_or("(default)"),
        pg.get_user().unwrap_or("(default)")
    )
}

impl KvStore for PgKv {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.run("get", |conn| {
            let rows = conn.client.query_typed(
                "SELECT value FROM shoal_kv WHERE key = $1 AND value IS NOT NULL",
                &[(&key, Type::BYTEA)],
            )?;
            Ok(rows
                .first()
                .map(|r| Bytes::copy_from_slice(r.get::<_, &[u8]>(0))))
        })
    }

    fn scan(&self, range: KeyRange) -> Result<Scan<'_>> {
        if range.is_empty() {
            return Ok(Box::new(std::iter::empty()));
        }
        let mut scan = PgScan {
            kv: self,
            next: range.start.clone(),
            inclusive: true,
            end: range.end,
        };
        Ok(Box::new(Paged::new(move || scan.fetch())))
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        batch.check_limits()?;
        if batch.ops.is_empty() && batch.preconditions.is_empty() {
            return Ok(());
        }
        let writes = fold(&batch.ops);
        // Whether an attempt was sent and then lost with its connection: it may have
        // committed, so a later guard failure may be this batch's own doing.
        let (sent, lost) = (std::cell::Cell::new(false), std::cell::Cell::new(false));
        let result = self.attempt("apply", |conn| {
            sent.set(false);
            let attempt = self.apply_once(conn, &batch, &writes, &sent);
            if let Err(Attempt::Retry(_)) = &attempt
                && sent.get()
            {
                lost.set(true);
            }
            attempt
        });
        match result {
            Err(Error::PreconditionFailed { .. })
                if lost.get() && self.already_applied(&writes)? =>
            {
                let epoch = self.run("apply", |conn| conn.epoch())?;
                note_applied(self.flush_row, epoch, true);
                Ok(())
            }
            other => other,
        }
    }

    fn flush(&self) -> Result<()> {
        // One round trip (a query of two statements runs as one implicit transaction,
        // which SET LOCAL applies to): the commit of a transaction that wrote WAL, committed
        // synchronously, returns once the WAL is flushed up to its commit record, so every
        // commit before it is durable. It must write a row: a transaction that only took an
        // xid commits asynchronously whatever synchronous_commit says (xact.c
        // `RecordTransactionCommit` flushes only `if (wrote_xlog && markXidCommitted ...)`,
        // and `wrote_xlog` counts WAL written before the commit record). Each store its own
        // row, so hosts' flushes never wait on each other's locks.
        let flush = format!(
            "SET LOCAL synchronous_commit = on;
             INSERT INTO shoal_flush (store, n) VALUES ({}, 1)
               ON CONFLICT (store) DO UPDATE SET n = shoal_flush.n + 1",
            self.flush_row
        );
        let epoch = self.run("flush", |conn| {
            let epoch = conn.epoch()?;
            conn.client.batch_execute(&flush)?;
            Ok(epoch)
        })?;
        self.flushed_epoch.store(epoch, Ordering::SeqCst);
        Ok(())
    }

    fn apply_mark(&self) -> u64 {
        APPLIED
            .with(|a| a.borrow().get(&self.flush_row).map_or(0, |w| w.epoch))
            .cast_unsigned()
    }

    fn durable_here(&self) {
        APPLIED.with(|a| {
            if let Some(w) = a.borrow_mut().get_mut(&self.flush_row) {
                w.pending = false;
            }
        });
    }

    fn mark_durable(&self, mark: u64) -> Result<()> {
        let flushed = self.flushed_epoch.load(Ordering::SeqCst).cast_unsigned();
        if mark == 0 || mark == flushed {
            Ok(())
        } else {
            Err(Error::Unavailable {
                op: "flush",
                cause: format!(
                    "the server at {} restarted after this write was applied and before it \
                     was flushed: it may be lost (nothing of it was acknowledged as durable)",
                    self.place
                ),
            })
        }
    }

    fn now_ms(&self) -> Result<u64> {
        self.run("clock", |conn| {
            let row = conn.client.query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8",
                &[],
            )?;
            Ok(row.get::<_, i64>(0).cast_unsigned())
        })
    }

    fn stats(&self) -> Result<KvStats> {
        self.run("stats", |conn| {
            let row = conn.client.query_one(
                "SELECT count(*)::int8,
                        coalesce(sum(length(key) + length(value)), 0)::int8,
                        pg_total_relation_size(to_regclass('shoal_kv'))::int8
                   FROM shoal_kv WHERE value IS NOT NULL",
                &[],
            )?;
            Ok(KvStats {
                keys: row.get::<_, i64>(0).cast_unsigned(),
                logical_bytes: row.get::<_, i64>(1).cast_unsigned(),
                disk_bytes: row.get::<_, i64>(2).cast_unsigned(),
                cache_capacity: 0,
                garbage_bytes: 0,
            })
        })
    }
}

/// A scan in pages of [`SCAN_PAGE`] rows, each page one query from the last key seen.
struct PgScan<'a> {
    kv: &'a PgKv,
    next: Vec<u8>,
    /// Whether `next` itself is in the scan (only for the first page).
    inclusive: bool,
    end: Vec<u8>,
}

impl PgScan<'_> {
    /// The next page, and whether more may follow.
    fn fetch(&mut self) -> Result<(Vec<Entry>, bool)> {
        let (start, end, inclusive) = (&self.next, &self.end, self.inclusive);
        let rows: Vec<Entry> = self.kv.run("scan", |conn| {
            let from = if inclusive { ">=" } else { ">" };
            let rows = if end.is_empty() {
                conn.client.query_typed(
                    &format!(
                        "SELECT key, value FROM shoal_kv WHERE key {from} $1 AND value IS NOT NULL
                         ORDER BY key LIMIT {SCAN_PAGE}"
                    ),
                    &[(start, Type::BYTEA)],
                )?
            } else {
                conn.client.query_typed(
                    &format!(
                        "SELECT key, value FROM shoal_kv
                          WHERE key {from} $1 AND key < $2 AND value IS NOT NULL
                          ORDER BY key LIMIT {SCAN_PAGE}"
                    ),
                    &[(start, Type::BYTEA), (end, Type::BYTEA)],
                )?
            };
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        Bytes::copy_from_slice(r.get::<_, &[u8]>(0)),
                        Bytes::copy_from_slice(r.get::<_, &[u8]>(1)),
                    )
                })
                .collect())
        })?;
        if let Some((last, _)) = rows.last() {
            self.next = last.to_vec();
            self.inclusive = false;
        }
        let more = rows.len() as i64 >= SCAN_PAGE;
        Ok((rows, more))
    }
}
