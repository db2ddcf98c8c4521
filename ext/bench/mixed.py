#!/usr/bin/python3
"""A mixed SQL workload through the loadable extension on a stock SQLite (Debian's
python3 and its SQLite 3.40.1), against a plain file with the unix VFS, in the same run.
A benchmark, not a test: it prints its figures and the command.

    /usr/bin/python3 ext/bench/mixed.py [--rows 25000] [--runs 3]

The steps follow the first ones of speedtest1 (as `shoal bench mixed` does on the bundled
build), each in one transaction, plus autocommit inserts, with cache_size 2 MB everywhere:
- shoal MEMORY: the extension's default, every commit one kv batch (the new path);
- shoal DELETE: SQLite's default rollback journal, stored in the kv (the old path on a
  build without SQLITE_ENABLE_BATCH_ATOMIC_WRITE: three batches and two flushes a commit);
- unix: a plain file, journal_mode DELETE, synchronous FULL.
Times are the best of --runs, each on a new database; the ratios are to unix.
"""

import argparse
import os
import random
import sqlite3
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXT = os.environ.get("SHOAL_EXT", os.path.join(HERE, "..", "target", "release", "libshoal.so"))


def steps(rows):
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    rng = random.Random(7)
    text = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(rows)]

    def tx(c, body):
        c.execute("BEGIN")
        body(c)
        c.execute("COMMIT")

    return [
        ("create and fill (one transaction)", lambda c: tx(c, lambda c: (
            c.execute("CREATE TABLE t1(a INTEGER, b INTEGER, c TEXT)"),
            c.executemany("INSERT INTO t1 VALUES (?, ?, ?)",
                          ((i, rng.randrange(rows), text[i]) for i in range(rows)))))),
        ("250 autocommit inserts", lambda c: [
            c.execute("INSERT INTO t1 VALUES (?, ?, ?)", (rows + i, i, "autocommit"))
            for i in range(250)]),
        ("create index", lambda c: tx(c, lambda c: c.execute("CREATE INDEX t1b ON t1(b)"))),
        ("100 range queries", lambda c: [
            c.execute("SELECT count(*), avg(a) FROM t1 WHERE b BETWEEN ? AND ?",
                      (i * 10, i * 10 + 100)).fetchall() for i in range(100)]),
        ("update a quarter (one transaction)", lambda c: tx(c, lambda c: c.execute(
            "UPDATE t1 SET c = c || ' updated' WHERE a % 4 = 0"))),
        ("delete a third (one transaction)", lambda c: tx(c, lambda c: c.execute(
            "DELETE FROM t1 WHERE a % 3 = 0"))),
        ("refill from itself (one transaction)", lambda c: tx(c, lambda c: c.execute(
            "INSERT INTO t1 SELECT a + 1000000, b, c FROM t1"))),
        ("vacuum", lambda c: c.execute("VACUUM")),
    ]


def run(open_db, rows):
    c = open_db()
    c.execute("PRAGMA cache_size = -2000")
    times = []
    for name, step in steps(rows):
        t0 = time.perf_counter()
        step(c)
        times.append((name, time.perf_counter() - t0))
    check = c.execute("PRAGMA integrity_check").fetchone()[0]
    c.close()
    if check != "ok":
        raise SystemExit("integrity_check after the workload: %s" % check)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=25000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(EXT):
        raise SystemExit("no extension at %s: cargo build --release --manifest-path ext/Cargo.toml" % EXT)
    work = tempfile.mkdtemp(prefix="shoal-mixed-")
    store = os.path.join(work, "store")
    loader = sqlite3.connect(":memory:")
    loader.enable_load_extension(True)
    loader.load_extension(EXT)
    serial = iter(range(1 << 30))

    def shoal(mode):
        def open_db():
            c = sqlite3.connect("file:mixed-%d?vfs=shoal&store=%s" % (next(serial), store),
                                uri=True, isolation_level=None)
            c.execute("PRAGMA journal_mode = %s" % mode)
            return c
        return open_db

    def unix():
        c = sqlite3.connect(os.path.join(work, "plain-%d.db" % next(serial)), isolation_level=None)
        c.execute("PRAGMA synchronous = FULL")
        return c

    variants = [("unix", unix), ("shoal MEMORY", shoal("MEMORY")), ("shoal DELETE", shoal("DELETE"))]
    best = {}
    for _ in range(args.runs):  # variants alternate, so each sees the same noise
        for name, open_db in variants:
            times = run(open_db, args.rows)
            if name not in best or sum(t for _, t in times) < sum(t for _, t in best[name]):
                best[name] = times
    print("# /usr/bin/python3 ext/bench/mixed.py --rows %d --runs %d" % (args.rows, args.runs))
    print("# nproc %d, SQLite %s, %s" % (os.cpu_count(), sqlite3.sqlite_version,
                                         time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    names = [n for n, _ in variants]
    print("| step | " + " | ".join("%s s" % n for n in names)
          + " | MEMORY / unix | DELETE / unix |")
    print("|" + " --- |" * (len(names) + 3))
    rowsets = list(zip(*(best[n] for n in names)))
    for per in rowsets + [tuple(("total", sum(t for _, t in best[n])) for n in names)]:
        secs = [t for _, t in per]
        print("| %s | " % per[0][0] + " | ".join("%.3f" % t for t in secs)
              + " | %.2f | %.2f |" % (secs[1] / secs[0], secs[2] / secs[0]))


if __name__ == "__main__":
    main()
