//! Pragmas the VFS answers through SQLITE_FCNTL_PRAGMA.
//!
//! shoal's promise is that every commit is atomic. Two families of pragmas would break it
//! and are refused, with a message naming the alternative:
//! - `synchronous = OFF` makes SQLite skip the atomic-batch path and write pages straight
//!   into the database file (a crash can tear it);
//! - `journal_mode = WAL | OFF | MEMORY`: WAL needs shared memory this VFS does not
//!   provide (the pragma "succeeds" and the next write fails), and OFF and MEMORY leave
//!   no journal in the store to roll a spilled transaction back from.
//!
//! shoal's own pragmas: `shoal_durability` (`full`, the default, waits for a group flush at
//! every commit; `relaxed` acknowledges once the batch is applied and lets the next flush
//! make it durable) and `shoal_stats` (the database's counters as one line).

/// How long a commit waits before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A commit returns after a flush (shared by concurrent commits) made it durable.
    #[default]
    Full,
    /// A commit returns once its atomic batch is applied; a crash may lose the last
    /// commits not yet flushed (sled flushes every 500 ms by default), never part of one.
    /// Commits through the rollback journal stay fully durable.
    Relaxed,
}

impl Durability {
    /// The pragma value naming this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Relaxed => "relaxed",
        }
    }

    /// Parses a pragma value (case-insensitive).
    pub fn parse(value: &str) -> Option<Durability> {
        match unquote(value).to_ascii_lowercase().as_str() {
            "full" => Some(Durability::Full),
            "relaxed" => Some(Durability::Relaxed),
            _ => None,
        }
    }
}

/// What the VFS does with one pragma.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pragma {
    /// Not ours: SQLite handles it.
    NotOurs,
    /// Refused, with the message the statement fails with.
    Refused(String),
    /// Read or set `shoal_durability`.
    Durability(Option<Durability>),
    /// Read `shoal_stats`.
    Stats,
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// Whether a `synchronous` value means OFF (SQLite accepts 0, off, no, false).
fn is_sync_off(value: &str) -> bool {
    let v = unquote(value).to_ascii_lowercase();
    match v.parse::<i64>() {
        Ok(n) => n == 0,
        Err(_) => matches!(v.as_str(), "off" | "no" | "false"),
    }
}

pub(crate) fn classify(name: &str, value: Option<&str>) -> Pragma {
    let name = name.to_ascii_lowercase();
    match (name.as_str(), value) {
        ("synchronous", Some(v)) if is_sync_off(v) => Pragma::Refused(
            "shoal refuses PRAGMA synchronous=OFF: it makes SQLite write pages without an atomic \
             batch, so a crash could tear the database; use PRAGMA shoal_durability=relaxed for \
             fast commits that are never torn"
                .into(),
        ),
        ("journal_mode", Some(v)) => {
            let mode = unquote(v).to_ascii_lowercase();
            match mode.as_str() {
                "wal" => Pragma::Refused(
                    "shoal refuses PRAGMA journal_mode=WAL: commits are already atomic batches in \
                     the shared store, and WAL needs shared memory this VFS does not provide"
                        .into(),
                ),
                "off" | "memory" => Pragma::Refused(format!(
                    "shoal refuses PRAGMA journal_mode={mode}: without a stored journal a large \
                     transaction could not be rolled back after a crash; keep DELETE, TRUNCATE or PERSIST"
                )),
                _ => Pragma::NotOurs,
            }
        }
        ("shoal_durability", None) => Pragma::Durability(None),
        ("shoal_durability", Some(v)) => match Durability::parse(v) {
            Some(d) => Pragma::Durability(Some(d)),
            None => Pragma::Refused(format!(
                "shoal_durability must be 'full' or 'relaxed', not {v:?}"
            )),
        },
        ("shoal_stats", None) => Pragma::Stats,
        ("shoal_stats", Some(_)) => Pragma::Refused("shoal_stats is read-only".into()),
        _ => Pragma::NotOurs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_breaking_pragmas_are_refused_in_every_spelling() {
        for v in ["OFF", "off", "0", "'off'", "false", "no", "00"] {
            assert!(
                matches!(classify("synchronous", Some(v)), Pragma::Refused(_)),
                "{v}"
            );
        }
        for v in ["FULL", "normal", "1", "2", "extra"] {
            assert_eq!(classify("SYNCHRONOUS", Some(v)), Pragma::NotOurs, "{v}");
        }
        for v in ["wal", "WAL", "'wal'", "off", "Memory"] {
            assert!(
                matches!(classify("journal_mode", Some(v)), Pragma::Refused(_)),
                "{v}"
            );
        }
        for v in ["delete", "TRUNCATE", "persist"] {
            assert_eq!(classify("journal_mode", Some(v)), Pragma::NotOurs);
        }
        assert_eq!(classify("journal_mode", None), Pragma::NotOurs);
    }

    #[test]
    fn shoal_pragmas_parse() {
        assert_eq!(
            classify("shoal_durability", Some("RELAXED")),
            Pragma::Durability(Some(Durability::Relaxed))
        );
        assert_eq!(classify("shoal_durability", None), Pragma::Durability(None));
        assert!(matches!(
            classify("shoal_durability", Some("fast")),
            Pragma::Refused(_)
        ));
        assert_eq!(classify("shoal_stats", None), Pragma::Stats);
    }
}
