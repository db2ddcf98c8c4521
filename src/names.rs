//! Actor names. Stricter than the catalog (which takes any string without NUL), because
//! the same name must also be a safe file name for the file-per-actor backing and must
//! never be mistaken for a path: no separators, no leading dot, nothing SQLite derives.
//!
//! A name is a name, never something SQLite reads as an instruction: the bundled SQLite
//! is built with `SQLITE_USE_URI`, so `sqlite3_open_v2` reads any filename that starts
//! with `file:` as a URI whatever the open flags say (`file:foo` would open actor `foo`),
//! and it keeps `:memory:` in memory. The kv backing hands the name to SQLite as it is,
//! so both shapes are refused here; names starting with `:` are refused too, as SQLite
//! reserves them for special meanings.

use crate::error::{Error, Result};

/// Longest accepted actor name, in bytes.
pub const MAX_ACTOR_NAME: usize = 200;

/// Checks an actor name: 1 to 200 bytes of ASCII letters, digits and `. _ - : @ + =`,
/// not starting with `.`, `-` or `:`, not starting with `file:` in any case (SQLite
/// would read it as a URI), and not ending like a file SQLite derives from a database
/// name ([`shoal_vfs::refuse_as_database`]).
pub fn validate_actor_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.len() > MAX_ACTOR_NAME {
        Some("the name is longer than 200 bytes")
    } else if name.contains('\0') {
        Some("the name contains a NUL byte")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".:_-@+=".contains(&b))
    {
        Some("only ASCII letters, digits and . _ - : @ + = are allowed (no '/', no spaces)")
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("the name may not start with '.' or '-'")
    } else if name.starts_with(':') {
        Some("the name may not start with ':' (SQLite reserves such names, as in :memory:)")
    } else if name
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("file:"))
    {
        Some("the name may not start with 'file:' (SQLite would read it as a URI)")
    } else {
        shoal_vfs::refuse_as_database(name)
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidName {
            name: name
                .chars()
                .take(64)
                .collect::<String>()
                .replace('\0', "\\0"),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused_with_a_reason() {
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\0b",
            ".hidden",
            "-flag",
            "with space",
            "x-journal",
            "x-wal",
            "x-mj0123459AB",
            "ünïcode",
            ":memory:",
            ":x",
            "file::memory:",
            "file:foo",
            "FILE:foo",
        ] {
            let err = validate_actor_name(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}");
        }
        assert!(validate_actor_name(&"a".repeat(MAX_ACTOR_NAME + 1)).is_err());
        for good in [
            "task-42",
            "user@team:7",
            "a.b_c+d=e",
            "memory:",
            "profile:7",
            &"a".repeat(MAX_ACTOR_NAME),
        ] {
            validate_actor_name(good).unwrap();
        }
    }
}
