//! How SQLite's file names map onto the catalog.
//!
//! One database has one name. SQLite passes every database name through xFullPathname
//! ([`canonical`]) and opens, derives journal names from, and reports what comes back:
//! - a name without `/` is a catalog name and stays exactly as given: every actor name of
//!   the facade (which refuses `/` and a leading `.`), and a bare file name like `test.db`;
//! - a name with `/` is a path, its `.`, `..` and repeated `/` resolved lexically as the
//!   unix VFS's `appendAllPathElements` does (`..` never climbs past the root):
//!   - an absolute path stays absolute, whatever the working directory, so one absolute
//!     path names one database in every process;
//!   - a relative path is joined to the base directory (the working directory when the
//!     VFS was registered), as `unixFullPathname` does. If it then names a file directly
//!     in the base directory it becomes that bare file name, so `test.db`, `./test.db`
//!     and `sub/../test.db` are one database; any other relative path becomes absolute.
//!
//!   A path that resolves to `/` itself is refused, as unix does. So `/base/test.db` and
//!   `test.db` are two databases even in the base directory: making them one would make
//!   the name of an absolute path depend on the working directory of the process.
//!
//! Symlinks are not followed, unlike unix: a name is a key in the store, not a file on
//! disk, and following links would make which database a name means depend on the file
//! system at the moment of each open. `/a/link/x.db` and `/a/real/x.db` are two databases.
//!
//! SQLite derives the other names from that one: `<db>-journal` is the rollback journal (stored under the database's id), `<db>-wal`
//! and `<db>-shm` are never created (WAL is refused), and super-journals are
//! `<db>-mjXXXXXX9XX` (their own catalog entries). A database may not take a name that
//! ends like one of those, so every name means exactly one thing.

use std::borrow::Cow;

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

/// The one name of the database file SQLite was asked to open as `name` (see the module
/// docs); `base` is the base directory as an absolute, resolved path (`None` if unknown,
/// which refuses relative paths). The error says why the name cannot be resolved.
pub(crate) fn canonical<'a>(
    name: &'a str,
    base: Option<&str>,
) -> Result<Cow<'a, str>, &'static str> {
    if !name.contains('/') {
        return Ok(Cow::Borrowed(name));
    }
    let mut parts: Vec<&str> = Vec::new();
    let relative = !name.starts_with('/');
    let base_parts = match base {
        Some(base) if relative => elements(base),
        None if relative => {
            return Err("a relative path needs the working directory, which is unknown");
        }
        _ => Vec::new(),
    };
    parts.extend(&base_parts);
    append_elements(&mut parts, name);
    let Some((last, dir)) = parts.split_last() else {
        return Err("the path names the root directory, not a file");
    };
    if relative && dir == base_parts.as_slice() {
        return Ok(Cow::Owned((*last).to_owned()));
    }
    Ok(Cow::Owned(format!("/{}", parts.join("/"))))
}

/// The resolved elements of an absolute path.
fn elements(path: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    append_elements(&mut parts, path);
    parts
}

/// `appendAllPathElements` without its symlink step: empty elements and `.` are skipped,
/// `..` drops the last element (never past the root).
fn append_elements<'a>(parts: &mut Vec<&'a str>, path: &'a str) {
    for element in path.split('/') {
        match element {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
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

    #[test]
    fn names_without_a_slash_are_kept_exactly() {
        // Every facade actor name has this shape; existing catalogs depend on it.
        for name in [
            "task-42",
            "user@team:7",
            "a.b_c+d=e",
            "test.db",
            ".hidden",
            "..",
            ".",
            "...",
            "x-journal",
            "",
        ] {
            assert_eq!(canonical(name, Some("/srv/app")), Ok(Cow::Borrowed(name)));
            assert_eq!(canonical(name, None), Ok(Cow::Borrowed(name)));
        }
    }

    #[test]
    fn paths_resolve_lexically_against_the_base_directory() {
        let base = Some("/srv/app");
        let resolved = |n: &str| canonical(n, base).map(Cow::into_owned);
        for same in [
            "./test.db",
            "sub/../test.db",
            ".//test.db",
            "../app/test.db",
            "x/y/../../test.db",
        ] {
            assert_eq!(resolved(same).as_deref(), Ok("test.db"), "{same}");
        }
        // An absolute path names the same database whatever the base directory.
        for absolute in [
            "/srv/app/test.db",
            "/srv//app/./test.db",
            "/srv/app/x/y/../../test.db",
        ] {
            for other in [base, Some("/srv"), Some("/"), Some("/elsewhere"), None] {
                assert_eq!(
                    canonical(absolute, other).as_deref(),
                    Ok("/srv/app/test.db"),
                    "{absolute} from {other:?}"
                );
            }
        }
        assert_eq!(resolved("sub/x.db").as_deref(), Ok("/srv/app/sub/x.db"));
        assert_eq!(
            resolved("/srv/app/sub/x.db").as_deref(),
            Ok("/srv/app/sub/x.db")
        );
        assert_eq!(resolved("../x").as_deref(), Ok("/srv/x"));
        assert_eq!(resolved("/../../etc/x").as_deref(), Ok("/etc/x"));
        assert_eq!(resolved("dir/").as_deref(), Ok("dir"));
        assert_eq!(resolved("dir/x/").as_deref(), Ok("/srv/app/dir/x"));
        assert_eq!(resolved("./db-journal").as_deref(), Ok("db-journal"));
        for root in ["/", "/..", "/x/..", "//", "../../.."] {
            assert!(resolved(root).is_err(), "{root}");
        }
        // Without a known base, absolute paths still resolve; relative ones cannot.
        assert_eq!(
            canonical("/srv/app/t.db", None).as_deref(),
            Ok("/srv/app/t.db")
        );
        assert!(canonical("./t.db", None).is_err());
        // The base directory itself is "/": relative paths to files in it are bare names
        // too, absolute ones are not.
        assert_eq!(canonical("./t.db", Some("/")).as_deref(), Ok("t.db"));
        assert_eq!(canonical("/t.db", Some("/")).as_deref(), Ok("/t.db"));
    }
}
