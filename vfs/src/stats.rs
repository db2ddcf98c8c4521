//! Per-database counters: how commits travelled (atomic batch or journal), and how
//! pages were read (copied by xRead or lent by xFetch). They prove the batch path carries
//! ordinary commits, and they are what `PRAGMA shoal_stats` prints.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Live counters of one database, shared by all its handles.
        #[derive(Debug, Default)]
        pub(crate) struct DbCounters {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A snapshot of one database's counters since the store was opened.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct DbStats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl DbCounters {
            pub(crate) fn snapshot(&self) -> DbStats {
                DbStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl fmt::Display for DbStats {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut sep = "";
                $(
                    write!(f, "{sep}{}={}", stringify!($name), self.$name)?;
                    sep = " ";
                )*
                let _ = sep;
                Ok(())
            }
        }
    };
}

counters! {
    /// Transactions committed as one atomic kv batch (at SQLITE_FCNTL_SYNC).
    batch_commits,
    /// Of those, transactions larger than their memory share, committed through the
    /// staging area (one commit batch, then their pages moved into place).
    staged_commits,
    /// Pages moved to the staging area by transactions larger than their share.
    pages_staged,
    /// Transactions that ended without committing: their pages were dropped from memory
    /// (and from the staging area) without ever reaching the database's keys.
    rollbacks,
    /// Syncs of the database file that made directly written pages durable: commits
    /// through the rollback journal, and rollbacks played back from one.
    journal_commits,
    /// Times a rollback journal of this database was opened.
    journal_opens,
    /// Kv batches applied for this database's files (all kinds).
    kv_batches,
    /// Pages (chunks) of the database file fetched from the kv by xRead.
    pages_read,
    /// Pages (chunks) of the database file written to the kv.
    pages_written,
    /// Pages lent to SQLite by xFetch, without a copy.
    pages_fetched,
    /// Bytes copied into SQLite's buffers by xRead (all kinds).
    bytes_read,
    /// Bytes SQLite wrote through xWrite (all kinds).
    bytes_written,
    /// Durable flushes waited for (xSync of any file, journal deletes).
    durable_syncs,
    /// xSync calls answered without waiting for a flush (relaxed durability).
    relaxed_syncs,
}

impl DbCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
