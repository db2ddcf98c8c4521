//! Reads: with `mmap_size > 0` SQLite asks xFetch for pages (pager.c `getPageMMap`), and
//! shoal lends it the kv's own buffer, so pages are neither copied nor cached.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use common::*;
use shoal_vfs::sqlite::cache_used;

#[test]
fn with_mmap_a_full_scan_is_served_by_fetch_and_leaves_the_cache_small() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = sled_vfs(dir.path());
    let conn = open(&vfs, "scan");
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 4000)
         INSERT INTO t(v) SELECT randomblob(1000) FROM n;",
    )
    .unwrap();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    // Every byte of every row, so a wrong page would change the answer.
    let query = "SELECT id, hex(v) FROM t ORDER BY id";

    // Baseline: the same scan through xRead into the page cache.
    let plain = open(&vfs, "scan");
    plain
        .execute_batch("PRAGMA cache_size = 100; PRAGMA mmap_size = 0;")
        .unwrap();
    let expected = rows(&plain, query);
    let copied_cache = cache_used(&plain).unwrap();
    drop(plain);

    let before = stats(&vfs, "scan");
    let mapped = open(&vfs, "scan");
    mapped
        .execute_batch("PRAGMA cache_size = 100; PRAGMA mmap_size = 1073741824;")
        .unwrap();
    assert_eq!(
        rows(&mapped, query),
        expected,
        "fetched pages give the same results"
    );
    let fetched = stats(&vfs, "scan").pages_fetched - before.pages_fetched;
    let mapped_cache = cache_used(&mapped).unwrap();
    println!(
        "pages {pages}, fetched {fetched}, cache used: xRead {copied_cache} B, xFetch {mapped_cache} B"
    );
    assert!(
        fetched as i64 >= pages - 1,
        "every page but page 1 is fetched ({fetched} of {pages})"
    );
    assert!(
        copied_cache > 100 * 4096 / 2,
        "the baseline fills its cache: {copied_cache}"
    );
    assert!(
        mapped_cache < copied_cache / 8,
        "fetched pages are not cached: {mapped_cache} vs {copied_cache}"
    );
    assert_eq!(integrity(&mapped), "ok");

    // Writes still work on a connection that reads through xFetch.
    mapped
        .execute("UPDATE t SET v = zeroblob(10) WHERE id % 100 = 0", [])
        .unwrap();
    assert_eq!(
        rows(&mapped, "SELECT count(*) FROM t WHERE length(v) = 10"),
        [["40"]]
    );
    assert_eq!(integrity(&mapped), "ok");
}
