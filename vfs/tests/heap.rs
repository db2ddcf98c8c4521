//! SQLite's heap on an arena of its own: the memory of closed connections goes back to
//! the kernel even when long-lived allocations were made between theirs, as the
//! key-value caches do during a mass wake. The heap is configured once per process, only
//! while it has one thread, before SQLite starts, and RSS is the process's: so this binary
//! has no test harness (`harness = false`), and `main` runs the checks in order.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use shoal_vfs::HeapRefused;
use shoal_vfs::sqlite::{SqliteHeap, configure_heap, heap, trim_heap};

#[cfg(target_os = "linux")]
fn main() {
    let checks: [(&str, fn()); 2] = [
        (
            "a_call_beside_another_thread_is_refused_and_changes_nothing",
            a_call_beside_another_thread_is_refused_and_changes_nothing,
        ),
        (
            "memory_of_closed_connections_goes_back_to_the_kernel",
            memory_of_closed_connections_goes_back_to_the_kernel,
        ),
    ];
    // A failed check panics, which ends the process with a non-zero status: the later
    // checks depend on the earlier ones (the first leaves the heap configured).
    for (name, check) in checks {
        println!("test {name} ...");
        check();
        println!("test {name} ... ok");
    }
    println!("{} passed, 0 failed", checks.len());
}

#[cfg(not(target_os = "linux"))]
fn main() {
    // The thread count that makes the call safe is known only on Linux.
    assert_eq!(configure_heap(), Err(HeapRefused::ThreadCountUnknown));
    assert_eq!(heap(), SqliteHeap::Default);
    println!("1 passed, 0 failed");
}

/// With a second thread alive, the call is refused and SQLite keeps its heap; once that
/// thread is gone the same process configures (so the refusal used nothing up).
#[cfg(target_os = "linux")]
fn a_call_beside_another_thread_is_refused_and_changes_nothing() {
    assert_eq!(
        shoal_vfs::procfs::thread_count(),
        Some(1),
        "main starts alone"
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || {
        ready_tx.send(()).unwrap();
        // Parks until told to end.
        let _ = done_rx.recv();
    });
    ready_rx.recv().unwrap();
    assert_eq!(
        configure_heap(),
        Err(HeapRefused::OtherThreads { threads: 2 })
    );
    assert_eq!(
        heap(),
        SqliteHeap::Default,
        "a refused call configures nothing"
    );
    done_tx.send(()).unwrap();
    other.join().unwrap();
    // The kernel counts a joined thread until it has been reaped, a moment later.
    while shoal_vfs::procfs::thread_count() != Some(1) {
        std::thread::yield_now();
    }
    assert_eq!(configure_heap(), Ok(SqliteHeap::OwnArena));
    assert_eq!(heap(), SqliteHeap::OwnArena);
}

#[cfg(target_os = "linux")]
fn rss_kb() -> u64 {
    let [rss] = shoal_vfs::procfs::fields(shoal_vfs::procfs::STATUS, ["VmRSS:"]);
    rss.unwrap()
}

#[cfg(target_os = "linux")]
fn memory_of_closed_connections_goes_back_to_the_kernel() {
    assert_eq!(
        configure_heap(),
        Ok(SqliteHeap::OwnArena),
        "a later call reports"
    );
    let before = rss_kb();
    // Four threads wake 500 connections each (lookaside off, as actors have it) while a
    // shared cache of 4 KiB blocks turns over, as the key-value caches do in a wake.
    let cache = std::sync::Mutex::new(std::collections::VecDeque::new());
    let connections = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (cache, connections) = (&cache, &connections);
            s.spawn(move || {
                for i in 0..500i64 {
                    let c = rusqlite::Connection::open_in_memory().unwrap();
                    shoal_vfs::sqlite::set_lookaside(&c, 0, 0).unwrap();
                    c.execute_batch(
                        "CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body TEXT, at INTEGER);
                         CREATE INDEX notes_at ON notes(at);
                         CREATE TABLE tags(note INTEGER REFERENCES notes, tag TEXT, PRIMARY KEY(note, tag));",
                    )
                    .unwrap();
                    let n: i64 = c
                        .query_row("SELECT count(*) FROM notes WHERE at > ?1", [i], |r| r.get(0))
                        .unwrap();
                    assert_eq!(n, 0);
                    connections.lock().unwrap().push(c);
                    let mut cache = cache.lock().unwrap();
                    for _ in 0..4 {
                        cache.push_back(vec![t; 4096]);
                        if cache.len() > 2000 {
                            cache.pop_front();
                        }
                    }
                }
            });
        }
    });
    let connections = connections.into_inner().unwrap();
    let kept = cache.into_inner().unwrap();
    let awake = rss_kb();
    drop(connections);
    trim_heap();
    let after = rss_kb();
    let kept_kb = (kept.len() * 4096 / 1024) as u64;
    let connections_kb = awake.saturating_sub(before).saturating_sub(kept_kb);
    let left_kb = after.saturating_sub(before).saturating_sub(kept_kb);
    println!(
        "before {before} KiB, awake {awake} KiB, after {after} KiB; connections {connections_kb} KiB, left {left_kb} KiB"
    );
    assert!(
        connections_kb > 10_000,
        "2,000 connections grew RSS by only {connections_kb} KiB"
    );
    assert!(
        left_kb * 10 <= connections_kb,
        "{left_kb} KiB of {connections_kb} KiB stayed resident after the connections closed"
    );
    drop(kept);
}
