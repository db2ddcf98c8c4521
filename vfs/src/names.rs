//! How SQLite's file names map onto the catalog.
//!
//! The name given to `sqlite3_open` is the catalog name of the database, unchanged (the
//! VFS has no directories, so "../x" is just a name). SQLite derives the other names:
//! `<db>-journal` is the rollback journal (stored under the database's id), `<db>-wal`
//! and `<db>-shm` are never created (WAL is refused), and super-journals are
//! `<db>-mjXXXXXX9XX` (their own catalog entries). A database may not take a name that
//! ends like one of those, so every name means exactly one thing.

/// Suffix of a rollback journal.
pub(crate) const JOURNAL_SUFFIX: &str = "-journal";
const WAL_SUFFIXES: [&str; 2] = ["-wal", "-shm"];

/// What a file name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// `<db>-journal`: the journal of the named database.
    Journal(&'a str),
    /// `-wal` / `-shm` files: never exist here.
    Wal,
    /// Anything else: a catalog name (a database or a super-journal).
    Catalog(&'a str),
}

pub(crate) fn classify(name: &str) -> Target<'_> {
    if let Some(db) = name.strip_suffix(JOURNAL_SUFFIX) {
        return Target::Journal(db);
    }
    if WAL_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Target::Wal;
    }
    Target::Catalog(name)
}

/// Whether `name` has the shape SQLite gives super-journals: `-mj` and nine hex digits.
pub(crate) fn is_super_journal(name: &str) -> bool {
    let Some(at) = name.len().checked_sub(12) else {
        return false;
    };
    match (name.get(at..at + 3), name.get(at + 3..)) {
        (Some("-mj"), Some(digits)) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    }
}

/// Why `name` cannot be a database name, if it cannot: it is empty, or it ends like a
/// file SQLite derives from a database name (`-journal`, `-wal`, `-shm`, a super-journal).
pub fn refuse_as_database(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("the name is empty")
    } else if !matches!(classify(name), Target::Catalog(_)) {
        Some("names ending in -journal, -wal or -shm are reserved for SQLite's own files")
    } else if is_super_journal(name) {
        Some("names ending in -mj and nine hex digits are reserved for super-journals")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_derived_names_are_recognised() {
        assert_eq!(classify("a-journal"), Target::Journal("a"));
        assert_eq!(classify("a-wal"), Target::Wal);
        assert_eq!(classify("a"), Target::Catalog("a"));
        assert!(is_super_journal("task-mj1A2B3C9D4"));
        assert!(!is_super_journal("task-mj1A2B3C9D"));
        assert!(!is_super_journal("mj"));
        assert!(refuse_as_database("x-journal").is_some());
        assert!(refuse_as_database("x-mj0123459AB").is_some());
        assert!(refuse_as_database("../x").is_none());
    }
}
