//! Query results rendered as text, the one form every test and fuzz body compares rows
//! in: integers and reals exactly (`{:?}` for reals, so no digit is lost), text quoted,
//! blobs in full as hex, NULL as `NULL`.

use rusqlite::Connection;
use rusqlite::types::ValueRef;

/// The rows of a query, each column rendered by [`render`].
pub type Rows = Vec<Vec<String>>;

/// One value rendered for an exact comparison.
pub fn render(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(v) => v.to_string(),
        ValueRef::Real(v) => format!("{v:?}"),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => {
            let mut s = String::with_capacity(3 + 2 * b.len());
            s.push_str("x'");
            for byte in b {
                s.push_str(&format!("{byte:02x}"));
            }
            s.push('\'');
            s
        }
    }
}

/// Every row of `sql` rendered by [`render`]; errors are returned, so callers can
/// compare them too.
pub fn try_rows(conn: &Connection, sql: &str) -> rusqlite::Result<Rows> {
    let mut stmt = conn.prepare(sql)?;
    let n = stmt.column_count();
    let rows = stmt.query_map([], |r| {
        (0..n)
            .map(|i| Ok(render(r.get_ref(i)?)))
            .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    rows.collect()
}

/// Every row of `sql` rendered by [`render`]; panics if the query fails.
pub fn rows(conn: &Connection, sql: &str) -> Rows {
    match try_rows(conn, sql) {
        Ok(rows) => rows,
        Err(e) => panic!("{sql}: {e}"),
    }
}
