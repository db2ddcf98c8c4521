//! Pragmas the VFS answers through SQLITE_FCNTL_PRAGMA.
//!
//! Every commit is one kv batch whatever the pragmas say (nothing a transaction writes
//! reaches the kv before its commit, see docs/design.md, "Commits"), so only one pragma
//! is refused: `journal_mode = WAL`, which needs shared memory this VFS does not provide
//! (the pragma would "succeed" and the next write fail). `journal_mode = MEMORY` (the
//! facade's default) and `OFF` are accepted. `synchronous = OFF` is accepted and means
//! relaxed durability: SQLite then skips xSync, so a commit is applied, never torn, and
//! made durable by the next flush; the VFS notes it so `shoal_durability` reports it.
//! Values are read exactly as pragma.c reads them (`sqlite3Atoi` for numbers, so `8`,
//! `0x8` and `0.5` are OFF; a prefix match for journal modes, so `w` is WAL), and the
//! tests check that against stock SQLite.
//!
//! shoal's own pragmas: `shoal_durability` (`full`, the default, waits for a group flush at
//! every commit; `relaxed` acknowledges once the batch is applied and lets the next flush
//! make it durable) and `shoal_stats` (the database's counters as one line).

pub(crate) use crate::durability::Durability;

impl Durability {
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
    /// `synchronous` set: whether to OFF (SQLite applies it; the VFS notes it).
    Synchronous {
        /// Whether SQLite reads the value as OFF.
        off: bool,
    },
    /// Read or set `shoal_durability`.
    Durability(Option<Durability>),
    /// Read `shoal_stats`.
    Stats,
    /// A history operation on the database.
    History(HistoryOp),
}

/// The history pragmas: `shoal_bookmark` (the current commit's bookmark),
/// `shoal_history` (one line per commit, oldest first: bookmark, tab, milliseconds since
/// the Unix epoch), `shoal_pin = 'label'`, `shoal_fork = 'new-name'` (the current state)
/// and `shoal_restore = 'bookmark or label'`. Each answers with a bookmark but the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HistoryOp {
    Bookmark,
    List,
    Pin(String),
    Fork(String),
    Restore(shoal_kv::PointInTime),
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

/// `sqlite3Atoi` (util.c): `sqlite3GetInt32`'s value, or 0 where it fails. A leading
/// `0x` reads up to eight hex digits; otherwise up to ten decimal digits after leading
/// zeros; whatever follows the digits is ignored; a value past `i32::MAX` fails (so 0).
/// The pragma code calls it only on a value whose first byte is a digit, so the sign
/// handling of `sqlite3GetInt32` never applies here.
fn sqlite_atoi(z: &[u8]) -> i32 {
    let at = |i: usize| z.get(i).copied().unwrap_or(0);
    if at(0) == b'0' && matches!(at(1), b'x' | b'X') && at(2).is_ascii_hexdigit() {
        let digits = z.get(2..).unwrap_or_default();
        let zeros = digits.iter().take_while(|&&b| b == b'0').count();
        let digits = digits.get(zeros..).unwrap_or_default();
        let n = digits
            .iter()
            .take(8)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let mut u: u32 = 0;
        for &b in digits.get(..n).unwrap_or_default() {
            u = u * 16 + char::from(b).to_digit(16).unwrap_or(0);
        }
        let more = digits.get(n).is_some_and(u8::is_ascii_hexdigit);
        return match i32::try_from(u) {
            Ok(v) if !more => v,
            _ => 0,
        };
    }
    if !at(0).is_ascii_digit() {
        return 0;
    }
    let zeros = z.iter().take_while(|&&b| b == b'0').count();
    let digits = z.get(zeros..).unwrap_or_default();
    let n = digits
        .iter()
        .take(11)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n > 10 {
        return 0;
    }
    let v = digits
        .get(..n)
        .unwrap_or_default()
        .iter()
        .fold(0i64, |v, &b| v * 10 + i64::from(b - b'0'));
    i32::try_from(v).unwrap_or(0)
}

/// SQLite's pager safety level `PAGER_SYNCHRONOUS_OFF`.
const SYNCHRONOUS_OFF: u8 = 1;

/// The pager safety level (`PAGER_SYNCHRONOUS_OFF` = 1 ... `EXTRA` = 4) SQLite applies
/// for `PRAGMA synchronous = value`, as pragma.c's `PragTyp_SYNCHRONOUS` computes it: a
/// value starting with a digit is read by `sqlite3Atoi` (so `8`, `0x8`, `0.5` and
/// `99999999999` are numbers too), any other by `getSafetyLevel` (the exact words on, no,
/// off, false, yes, true, extra, full, any ASCII case; anything else is 1); then
/// `(n + 1) & 7`, with 0 turned into 1. So OFF is every number that is 0 or 7 modulo 8,
/// and the words no, off and false.
fn synchronous_level(value: &[u8]) -> u8 {
    let n = if value.first().is_some_and(u8::is_ascii_digit) {
        sqlite_atoi(value)
    } else {
        const WORDS: [(&[u8], i32); 8] = [
            (b"on", 1),
            (b"no", 0),
            (b"off", 0),
            (b"false", 0),
            (b"yes", 1),
            (b"true", 1),
            (b"extra", 3),
            (b"full", 2),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(value))
            .map_or(1, |&(_, n)| n)
    };
    match n.wrapping_add(1) & 7 {
        0 => SYNCHRONOUS_OFF,
        // The mask leaves 0..=7, which fits a u8.
        level => u8::try_from(level).unwrap_or(SYNCHRONOUS_OFF),
    }
}

/// pragma.c's journal mode names, in `PAGER_JOURNALMODE_*` order.
const JOURNAL_MODES: [&str; 6] = ["delete", "persist", "off", "truncate", "memory", "wal"];

/// The journal mode SQLite selects for `PRAGMA journal_mode = value`, or `None` where it
/// only reports the current one. pragma.c compares `sqlite3StrNICmp(value, mode,
/// strlen(value))` against each name in order: the first name `value` is a prefix of (any
/// ASCII case) wins, so `w` is WAL, `of` is OFF, `M` is MEMORY and the empty string is
/// DELETE.
fn journal_mode(value: &[u8]) -> Option<&'static str> {
    JOURNAL_MODES.into_iter().find(|mode| {
        mode.as_bytes()
            .get(..value.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(value))
    })
}

/// What the VFS does with `PRAGMA name = value` (`value` exactly as SQLite passes it:
/// unquoted, and not necessarily UTF-8). What it decides follows what SQLite would apply,
/// not how the value is spelled.
pub(crate) fn classify(name: &str, value: Option<&[u8]>) -> Pragma {
    let name = name.to_ascii_lowercase();
    let shown = value.map(String::from_utf8_lossy);
    let shown = shown.as_deref().unwrap_or_default();
    match (name.as_str(), value) {
        ("synchronous", Some(v)) => Pragma::Synchronous {
            off: synchronous_level(v) == SYNCHRONOUS_OFF,
        },
        ("journal_mode", Some(v)) => match journal_mode(v) {
            Some("wal") => Pragma::Refused(format!(
                "shoal refuses PRAGMA journal_mode={shown} (SQLite reads it as WAL): commits \
                 are already atomic batches in the shared store, and WAL needs shared memory \
                 this VFS does not provide"
            )),
            _ => Pragma::NotOurs,
        },
        ("shoal_durability", None) => Pragma::Durability(None),
        ("shoal_durability", Some(_)) => match Durability::parse(shown) {
            Some(d) => Pragma::Durability(Some(d)),
            None => Pragma::Refused(format!(
                "shoal_durability must be 'full' or 'relaxed', not {shown:?}"
            )),
        },
        ("shoal_bookmark", None) => Pragma::History(HistoryOp::Bookmark),
        ("shoal_history", None) => Pragma::History(HistoryOp::List),
        ("shoal_pin", Some(_)) => Pragma::History(HistoryOp::Pin(unquote(shown).to_owned())),
        ("shoal_fork", Some(_)) => Pragma::History(HistoryOp::Fork(unquote(shown).to_owned())),
        ("shoal_restore", Some(_)) => {
            let point = unquote(shown);
            Pragma::History(HistoryOp::Restore(match shoal_kv::Bookmark::parse(point) {
                Some(b) => shoal_kv::PointInTime::Bookmark(b),
                None => shoal_kv::PointInTime::Label(point.to_owned()),
            }))
        }
        ("shoal_bookmark" | "shoal_history", Some(_)) => {
            Pragma::Refused(format!("{name} is read-only"))
        }
        ("shoal_pin" | "shoal_fork" | "shoal_restore", None) => {
            Pragma::Refused(format!("{name} needs a value: PRAGMA {name} = '...'"))
        }
        ("shoal_stats", None) => Pragma::Stats,
        ("shoal_stats", Some(_)) => Pragma::Refused("shoal_stats is read-only".into()),
        _ => Pragma::NotOurs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spellings of `synchronous` values: numbers SQLite reads with `sqlite3Atoi` (hex,
    /// leading-digit prefixes, overflow), its words in every case, and near misses.
    const SYNCHRONOUS_VALUES: &[&str] = &[
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "15",
        "16",
        "23",
        "24",
        "00",
        "007",
        "0008",
        "0x0",
        "0x7",
        "0x8",
        "0X8",
        "0x08",
        "0x10",
        "0x0f",
        "0x17",
        "0x",
        "0xg",
        "0x 8",
        "0.5",
        "1.5",
        "7.9",
        "8e0",
        "1e3",
        "2147483647",
        "2147483648",
        "2147483639",
        "99999999999",
        "4294967296",
        "0x7fffffff",
        "0x7ffffff7",
        "0x80000000",
        "0xffffffff",
        "0x000000008",
        "0x123456789",
        "-1",
        "-0",
        "-8",
        "+0",
        "+8",
        " 0",
        "0 ",
        "8 ",
        "off",
        "OFF",
        "Off",
        "no",
        "NO",
        "nO",
        "false",
        "FaLsE",
        "on",
        "yes",
        "true",
        "full",
        "FULL",
        "extra",
        "normal",
        "offf",
        "of",
        "n",
        "",
        "x",
        "0abc",
        "8abc",
        "7;",
        "'off'",
        "o\u{ff}",
    ];

    /// Spellings of `journal_mode` values: every prefix of every mode name in both cases
    /// (SQLite's match is a case-insensitive prefix match in mode order) and near misses.
    fn journal_mode_values() -> Vec<String> {
        let mut values: Vec<String> = [
            "",
            "deletex",
            "wall",
            "memoryx",
            "offx",
            "x",
            "0",
            " wal",
            "wal ",
            "'wal'",
            "exclusive",
            "normal",
            "w\u{e4}l",
        ]
        .map(String::from)
        .to_vec();
        for mode in JOURNAL_MODES {
            for n in 1..=mode.len() {
                values.push(mode[..n].to_owned());
                values.push(mode[..n].to_ascii_uppercase());
            }
        }
        values
    }

    fn quoted(v: &str) -> String {
        format!("'{}'", v.replace('\'', "''"))
    }

    fn refused(name: &str, v: &str) -> bool {
        match classify(name, Some(v.as_bytes())) {
            Pragma::Refused(_) => true,
            Pragma::NotOurs => false,
            other => panic!("{name}={v:?}: {other:?}"),
        }
    }

    fn sets_off(v: &[u8]) -> bool {
        match classify("synchronous", Some(v)) {
            Pragma::Synchronous { off } => off,
            other => panic!("synchronous={v:?}: {other:?}"),
        }
    }

    /// The rule under test is SQLite's own: for each spelling, stock SQLite (in memory,
    /// through the unix VFS's defaults) shows which level it applies, and shoal notes
    /// OFF (relaxed durability) exactly for the spellings that SQLite turns into OFF.
    #[test]
    fn synchronous_off_is_noted_exactly_where_sqlite_would_apply_it() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let mut off = 0;
        for v in SYNCHRONOUS_VALUES {
            conn.execute_batch(&format!(
                "PRAGMA synchronous=FULL; PRAGMA synchronous={}",
                quoted(v)
            ))
            .unwrap();
            let applied: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(
                i64::from(synchronous_level(v.as_bytes())) - 1,
                applied,
                "synchronous={v:?}"
            );
            assert_eq!(sets_off(v.as_bytes()), applied == 0, "synchronous={v:?}");
            off += usize::from(applied == 0);
        }
        assert!(
            off >= 20,
            "the list must hold many OFF spellings, has {off}"
        );
        // Not UTF-8: a digit then anything is still a number to SQLite.
        assert!(sets_off(b"0\xff"));
        assert!(matches!(
            classify("SYNCHRONOUS", Some(b"8")),
            Pragma::Synchronous { off: true }
        ));
        assert_eq!(classify("synchronous", None), Pragma::NotOurs);
    }

    #[test]
    fn journal_mode_is_refused_exactly_where_sqlite_would_select_wal() {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("db")).unwrap();
        for v in journal_mode_values() {
            conn.execute_batch("PRAGMA journal_mode=delete").unwrap();
            let applied: String = conn
                .query_row(&format!("PRAGMA journal_mode={}", quoted(&v)), [], |r| {
                    r.get(0)
                })
                .unwrap();
            let wal = applied == "wal";
            assert_eq!(
                refused("journal_mode", &v),
                wal,
                "journal_mode={v:?} is {applied}"
            );
            if !wal {
                assert!(!refused("JOURNAL_MODE", &v));
            }
        }
        assert_eq!(classify("journal_mode", None), Pragma::NotOurs);
        let msg = match classify("journal_mode", Some(b"wa")) {
            Pragma::Refused(msg) => msg,
            other => panic!("{other:?}"),
        };
        assert!(
            msg.contains("journal_mode=wa (SQLite reads it as WAL)"),
            "{msg}"
        );
    }

    #[test]
    fn shoal_pragmas_parse() {
        assert_eq!(
            classify("shoal_durability", Some(b"RELAXED")),
            Pragma::Durability(Some(Durability::Relaxed))
        );
        assert_eq!(classify("shoal_durability", None), Pragma::Durability(None));
        assert!(matches!(
            classify("shoal_durability", Some(b"fast")),
            Pragma::Refused(_)
        ));
        assert_eq!(classify("shoal_stats", None), Pragma::Stats);
    }
}
