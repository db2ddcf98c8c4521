#!/usr/bin/python3
"""Commits/s through the loadable extension on a stock SQLite (Debian's python3 and its
SQLite 3.40.1, built without SQLITE_ENABLE_BATCH_ATOMIC_WRITE), against plain files in the
same run. A benchmark, not a test: it prints its figures and the command.

    /usr/bin/python3 ext/bench/commits.py [--seconds 2] [--actors 1,16]

Each variant runs N actors (one database each) in one process, one thread per actor, each
committing one small INSERT per transaction for the given seconds:
- shoal MEMORY: the extension's default (journal_mode=MEMORY): every commit one kv batch;
- shoal DELETE: the same store with SQLite's default rollback journal, which shoal stores
  in the kv (three batches per commit): the path every commit took on a host's SQLite
  before commits needed no special build;
- files DELETE FULL / files WAL FULL: one plain SQLite file per actor, synchronous=FULL.
Python's sqlite3 releases the GIL inside SQLite calls, so the actors' commits overlap.
"""

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXT = os.environ.get("SHOAL_EXT", os.path.join(HERE, "..", "target", "release", "libshoal.so"))


def run(open_db, actors, seconds):
    """Commits per second of `actors` threads, each on its own database."""
    conns = [open_db(i) for i in range(actors)]
    for c in conns:
        c.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body TEXT)")
    counts = [0] * actors
    stop = threading.Event()

    def work(i):
        c = conns[i]
        n = 0
        while not stop.is_set():
            c.execute("BEGIN")
            c.execute("INSERT INTO t(body) VALUES (?)", ("x" * 100,))
            c.execute("COMMIT")
            n += 1
        counts[i] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(actors)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    return sum(counts) / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--actors", default="1,16")
    args = ap.parse_args()
    actor_counts = [int(a) for a in args.actors.split(",")]
    if not os.path.exists(EXT):
        sys.exit("no extension at %s: cargo build --release --manifest-path ext/Cargo.toml" % EXT)
    work = tempfile.mkdtemp(prefix="shoal-commits-")
    store = os.path.join(work, "store")
    files = os.path.join(work, "files")
    os.mkdir(files)
    loader = sqlite3.connect(":memory:")
    loader.enable_load_extension(True)
    loader.load_extension(EXT)

    def shoal(mode):
        def open_db(i):
            c = sqlite3.connect(
                "file:%s-%d?vfs=shoal&store=%s" % (mode, i, store),
                uri=True, isolation_level=None, check_same_thread=False,
            )
            c.execute("PRAGMA journal_mode = %s" % mode)
            return c
        return open_db

    def plain(mode):
        def open_db(i):
            c = sqlite3.connect(
                os.path.join(files, "%s-%d.db" % (mode, i)),
                isolation_level=None, check_same_thread=False,
            )
            c.execute("PRAGMA journal_mode = %s" % mode)
            c.execute("PRAGMA synchronous = FULL")
            return c
        return open_db

    variants = [
        ("shoal MEMORY", shoal("MEMORY")),
        ("shoal DELETE", shoal("DELETE")),
        ("files DELETE FULL", plain("DELETE")),
        ("files WAL FULL", plain("WAL")),
    ]
    print("# /usr/bin/python3 ext/bench/commits.py --seconds %g --actors %s"
          % (args.seconds, args.actors))
    print("# nproc %d, SQLite %s (Python %s), %s"
          % (os.cpu_count(), sqlite3.sqlite_version,
             platform.python_version(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    print("| actors | " + " | ".join(v for v, _ in variants)
          + " | MEMORY / DELETE | MEMORY / files WAL FULL |")
    print("|" + " --- |" * (len(variants) + 3))
    for n in actor_counts:
        rates = [run(open_db, n, args.seconds) for _, open_db in variants]
        print("| %d | " % n + " | ".join("%.0f/s" % r for r in rates)
              + " | %.2fx | %.2fx |" % (rates[0] / rates[1], rates[0] / rates[3]))


if __name__ == "__main__":
    main()
