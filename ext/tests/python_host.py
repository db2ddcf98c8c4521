#!/usr/bin/python3
"""Host test: the shoal loadable extension in Python's stdlib sqlite3 (Debian's python3).

Why: hosts ship SQLite builds without SQLITE_ENABLE_BATCH_ATOMIC_WRITE (Debian's
libsqlite3, which Python's sqlite3 module links, is one), so the extension itself must make
every commit atomic there. This script loads it the way a Python program would
(enable_load_extension + load_extension on a :memory: connection, then
sqlite3.connect('file:actor-1?vfs=shoal&store=...', uri=True)) and checks:
  - CREATE / INSERT / SELECT, BEGIN..COMMIT, BEGIN..ROLLBACK (rows gone), reopening,
    journal_mode MEMORY by default and WAL refused;
  - a transaction larger than the memory share (budget_mb=16: 4000 rows of 1000 bytes),
    committed and rolled back;
  - shoal_export (a plain SQLite file with the same content), shoal_check,
    PRAGMA shoal_stats and shoal_durability;
  - SIGKILL in the middle of a transaction (small, and larger than the memory share): a
    child process begins, inserts, prints READY and sleeps; after the kill a new process
    finds the database intact with exactly the committed rows;
  - a second process opening a store this one holds: sqlite3.OperationalError with shoal's
    text (locked / in use), within seconds;
  - errors: no store at all, a store path that is a regular file, a directory that is not
    a shoal store, a second store in the same process;
  - the sqlite3_shoal_default_init entry point and SHOAL_STORE.
Every store-touching step that needs its own process runs as a child mode of this script
(a process has one store). Output: one "ok - ..." / "not ok - ..." line per check; the exit
status is nonzero if any failed.

Usage: /usr/bin/python3 ext/tests/python_host.py   (SHOAL_EXT=path/to/libshoal.so)
Not the pyenv python3 that may come first on PATH: it lacks enable_load_extension.
"""

import hashlib
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

PYTHON = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXT = os.path.abspath(
    os.environ.get("SHOAL_EXT") or os.path.join(REPO, "ext", "target", "release", "libshoal.so")
)
TIMEOUT = float(os.environ.get("SHOAL_TEST_TIMEOUT", "120"))  # seconds for any one child
LOCK_WORDS = ("lock", "in use", "already open")


def uri(actor, store=None, budget_mb=16, vfs=True):
    params = []
    if vfs:
        params.append("vfs=shoal")
    if store is not None:
        params.append("store=" + urllib.parse.quote(store, safe="/"))
    if budget_mb is not None:
        params.append("budget_mb=%d" % budget_mb)
    return "file:%s?%s" % (actor, "&".join(params))


def load_extension(entry_point=None):
    """A :memory: connection with the extension loaded into it (keep it: it is also where
    shoal_last_error() is asked)."""
    loader = sqlite3.connect(":memory:")
    loader.enable_load_extension(True)
    if entry_point is None:
        loader.load_extension(EXT)
    else:  # Python 3.11's load_extension() takes no entry point; the SQL function does.
        loader.execute("SELECT load_extension(?, ?)", (EXT, entry_point)).fetchall()
    return loader


def connect(u):
    return sqlite3.connect(u, uri=True, isolation_level=None)


def one(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


def last_error(loader):
    try:
        return one(loader, "SELECT shoal_last_error()")
    except sqlite3.Error as e:
        return "(shoal_last_error() failed: %s)" % e


def stat_of(line, key):
    for field in (line or "").split():
        k, _, v = field.partition("=")
        if k == key and v.isdigit():
            return int(v)
    return None


def content(conn, table="t"):
    rows = conn.execute("SELECT * FROM %s ORDER BY 1" % table).fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


INSERT_BIG = """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO {table}({cols}) SELECT {vals} FROM n"""


# ----------------------------------------------------------------------------- child modes
# Each prints one JSON line as its last line of output.


def child_main(mode, args):
    if mode == "setup":  # STORE ACTOR ROWS: a table k with ROWS committed rows
        store, actor, rows = args[0], args[1], int(args[2])
        loader = load_extension()
        conn = connect(uri(actor, store))
        conn.execute("CREATE TABLE k(id INTEGER PRIMARY KEY, tag TEXT, b BLOB)")
        conn.execute(
            INSERT_BIG.format(table="k", cols="tag, b", vals="'committed', randomblob(100)"), (rows,)
        )
        out = {"count": one(conn, "SELECT count(*) FROM k")}
        conn.close()
        del loader
        print(json.dumps(out), flush=True)
    elif mode == "kill-target":  # STORE ACTOR ROWS BYTES: BEGIN, insert, READY, sleep
        store, actor, rows, nbytes = args[0], args[1], int(args[2]), int(args[3])
        loader = load_extension()  # noqa: F841 (kept alive)
        conn = connect(uri(actor, store))
        conn.execute("BEGIN")
        conn.execute(
            INSERT_BIG.format(table="k", cols="tag, b", vals="'killed', randomblob(%d)" % nbytes),
            (rows,),
        )
        conn.execute("UPDATE k SET tag = 'killed-update' WHERE id <= 10")
        print("READY %d" % one(conn, "SELECT count(*) FROM k"), flush=True)
        time.sleep(TIMEOUT * 2)
    elif mode == "verify":  # STORE ACTOR: integrity, counts, shoal_check, one more commit
        store, actor = args[0], args[1]
        loader = load_extension()
        t0 = time.monotonic()
        conn = connect(uri(actor, store))
        out = {
            "open_ms": int((time.monotonic() - t0) * 1000),
            "integrity": one(conn, "PRAGMA integrity_check"),
            "count": one(conn, "SELECT count(*) FROM k"),
            "killed": one(conn, "SELECT count(*) FROM k WHERE tag LIKE 'killed%'"),
            "check": one(conn, "SELECT shoal_check(?)", actor),
        }
        conn.execute("INSERT INTO k(tag) VALUES ('after')")
        out["after"] = one(conn, "SELECT count(*) FROM k")
        conn.close()
        del loader
        print(json.dumps(out), flush=True)
    elif mode == "try-open":  # URI [ENTRY_POINT] [SQL]: open, report what happened
        u = args[0]
        entry = args[1] if len(args) > 1 and args[1] else None
        sql = args[2] if len(args) > 2 else "SELECT count(*) FROM sqlite_schema"
        out = {}
        loader = load_extension(entry)
        t0 = time.monotonic()
        try:
            conn = connect(u)
            out["result"] = one(conn, sql)
            try:
                out["durability"] = one(conn, "PRAGMA shoal_durability")
            except (sqlite3.Error, TypeError) as e:
                out["durability"] = "(%s)" % e
            conn.close()
            out["opened"] = True
        except Exception as e:  # noqa: BLE001 (reported, whatever it is)
            out["opened"] = False
            out["error_type"] = type(e).__name__
            out["error"] = str(e)
            out["last_error"] = last_error(loader)
        out["elapsed_ms"] = int((time.monotonic() - t0) * 1000)
        print(json.dumps(out), flush=True)
    else:
        raise SystemExit("unknown child mode %r" % mode)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_STORE", "SHOAL_BUDGET_MB")}
    env.update(extra)
    return env


def run_child(mode, *args, env=None, cwd=None):
    """Runs a child mode to completion: (its JSON answer or None, returncode, stderr)."""
    p = subprocess.run(
        [PYTHON, os.path.abspath(__file__), "--child", mode, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env or clean_env(),
        cwd=cwd,
    )
    answer = None
    lines = p.stdout.strip().splitlines()
    if lines:
        try:
            answer = json.loads(lines[-1])
        except ValueError:
            pass
    return answer, p.returncode, p.stderr


# ----------------------------------------------------------------------------- the checks


class Run:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, desc, cond, *diag):
        if cond:
            self.passed += 1
            print("ok - %s" % desc, flush=True)
        else:
            self.failed += 1
            print("not ok - %s" % desc, flush=True)
            for d in diag:
                for line in str(d).splitlines()[:20]:
                    print("#   %s" % line, flush=True)
        return cond

    def eq(self, desc, got, want, *diag):
        return self.check(desc, got == want, "got:      %r" % (got,), "expected: %r" % (want,), *diag)

    def group(self, name, fn, *args):
        try:
            fn(self, *args)
        except Exception:  # noqa: BLE001 (a failing group is a failed check, not a stop)
            self.check("%s (raised)" % name, False, traceback.format_exc())


def test_basics(r, st):
    conn = connect(st["a1"])
    st["conn"] = conn
    r.eq("journal_mode defaults to memory", one(conn, "PRAGMA journal_mode"), "memory")
    dur = conn.execute("PRAGMA shoal_durability").fetchone()
    r.check("PRAGMA shoal_durability is full or relaxed", dur is not None and dur[0] in ("full", "relaxed"), dur)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
    conn.execute("INSERT INTO t(v) VALUES ('one'), ('two'), ('three')")
    r.eq(
        "SELECT sees the inserted rows",
        conn.execute("SELECT v FROM t ORDER BY id").fetchall(),
        [("one",), ("two",), ("three",)],
    )
    conn.close()
    conn = connect(st["a1"])
    st["conn"] = conn
    r.eq("rows persist across a reopen", one(conn, "SELECT count(*) FROM t"), 3)


def test_transactions(r, st):
    conn = st["conn"]
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t(v) VALUES (?)", ("four",))
    conn.execute("INSERT INTO t(v) VALUES (?)", ("five",))
    conn.execute("COMMIT")
    r.eq("BEGIN..COMMIT adds its rows", one(conn, "SELECT count(*) FROM t"), 5)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t(v) VALUES (?)", [("doomed",)] * 10)
    conn.execute("UPDATE t SET v = 'changed' WHERE id = 1")
    r.eq("the open transaction sees its own rows", one(conn, "SELECT count(*) FROM t"), 15)
    conn.execute("ROLLBACK")
    r.eq(
        "ROLLBACK removes the transaction's rows and undoes its update",
        (one(conn, "SELECT count(*) FROM t"), one(conn, "SELECT v FROM t WHERE id = 1")),
        (5, "one"),
    )
    try:
        wal = one(conn, "PRAGMA journal_mode = WAL")
    except sqlite3.Error as e:
        wal = "(error: %s)" % e
    print("#   PRAGMA journal_mode=WAL answered: %s" % wal)
    r.check("PRAGMA journal_mode=WAL is refused", wal == "memory" or wal.startswith("(error"), wal)
    if wal.startswith("(error"):
        r.check("the WAL refusal is shoal's error", wal.startswith(("(error: shoal:", "(error: shoal refuses")), wal)
    r.eq(
        "journal_mode is still memory after asking for WAL, the database still reads",
        (one(conn, "PRAGMA journal_mode"), one(conn, "SELECT count(*) FROM t")),
        ("memory", 5),
    )


def test_large(r, st):
    conn = st["conn"]
    before = one(conn, "PRAGMA shoal_stats")
    conn.execute("BEGIN")
    conn.execute(INSERT_BIG.format(table="t", cols="v, b", vals="'big' || i, randomblob(1000)"), (4000,))
    r.eq("the large transaction sees its rows before COMMIT", one(conn, "SELECT count(*) FROM t"), 4005)
    conn.execute("COMMIT")
    after = one(conn, "PRAGMA shoal_stats")
    r.eq(
        "a transaction larger than the memory share commits all its rows (budget_mb=16, ~4 MB)",
        (one(conn, "SELECT count(*) FROM t"), one(conn, "SELECT sum(length(b)) FROM t")),
        (4005, 4000000),
    )
    sb, sa = stat_of(before, "staged_commits"), stat_of(after, "staged_commits")
    r.check(
        "the large transaction went through the staging area (staged_commits %s -> %s)" % (sb, sa),
        sb is not None and sa is not None and sa > sb,
        "before: %s" % before,
        "after:  %s" % after,
    )
    conn.execute("BEGIN")
    conn.execute(
        INSERT_BIG.format(table="t", cols="v, b", vals="'bigdoomed' || i, randomblob(1000)"), (4000,)
    )
    conn.execute("DELETE FROM t WHERE v = 'one'")
    conn.execute("ROLLBACK")
    r.eq(
        "a large transaction rolled back leaves nothing (rows and delete undone)",
        (one(conn, "SELECT count(*) FROM t"), one(conn, "SELECT count(*) FROM t WHERE v = 'one'")),
        (4005, 1),
    )
    r.eq("integrity_check after the large transactions", one(conn, "PRAGMA integrity_check"), "ok")
    conn.close()
    conn = connect(st["a1"])
    st["conn"] = conn
    r.eq(
        "a reopen sees the large commit and not the large rollback",
        (
            one(conn, "SELECT count(*) FROM t"),
            one(conn, "SELECT count(*) FROM t WHERE v LIKE 'bigdoomed%'"),
            one(conn, "PRAGMA integrity_check"),
        ),
        (4005, 0, "ok"),
    )


def test_export_check(r, st):
    conn = st["conn"]
    r.eq("shoal_check('actor-1') is ok", one(conn, "SELECT shoal_check('actor-1')"), "ok")
    out = os.path.join(st["tmp"], "out.db")
    ret = one(conn, "SELECT shoal_export('actor-1', ?)", out)
    print("#   shoal_export returned: %r" % (ret,))
    with open(out, "rb") as f:
        header = f.read(16)
    r.eq("shoal_export wrote a SQLite file", header, b"SQLite format 3\x00")
    plain = sqlite3.connect("file:%s?vfs=unix" % urllib.parse.quote(out), uri=True)
    r.eq(
        "the exported file opens in plain sqlite3 with the actor's rows, integrity ok",
        (one(plain, "SELECT count(*) FROM t"), one(plain, "PRAGMA integrity_check")),
        (4005, "ok"),
    )
    r.eq("the exported file has the actor's content", content(plain), content(conn))
    plain.close()


def test_stats(r, st):
    conn = st["conn"]
    s1 = one(conn, "PRAGMA shoal_stats")
    r.check(
        "PRAGMA shoal_stats is one line of key=value counters with batch_commits",
        isinstance(s1, str)
        and "\n" not in s1
        and all(f.partition("=")[2].isdigit() for f in s1.split())
        and stat_of(s1, "batch_commits") is not None,
        s1,
    )
    conn.execute("INSERT INTO t(v) VALUES ('after-export')")
    s2 = one(conn, "PRAGMA shoal_stats")
    b1, b2 = stat_of(s1, "batch_commits"), stat_of(s2, "batch_commits")
    r.check(
        "a commit counts as a batch commit (batch_commits %s -> %s)" % (b1, b2),
        b1 is not None and b2 is not None and b2 > b1,
        "before: %s" % s1,
        "after:  %s" % s2,
    )
    conn.execute("DELETE FROM t WHERE v = 'after-export'")


def test_history(r, st):
    conn = st["conn"]
    before = one(conn, "SELECT count(*) FROM t")
    first = one(conn, "PRAGMA shoal_bookmark")
    r.check("PRAGMA shoal_bookmark is 16 hex digits", len(first or "") == 16, first)
    r.eq("PRAGMA shoal_pin answers with the bookmark pinned", one(conn, "PRAGMA shoal_pin = 'py-before'"), first)
    conn.execute("INSERT INTO t(v) VALUES ('history')")
    second = one(conn, "PRAGMA shoal_bookmark")
    r.check("a commit's bookmark sorts after the one before", second > first, first, second)
    r.eq("PRAGMA shoal_fork forks the current state", one(conn, "PRAGMA shoal_fork = 'actor-1-fork'"), second)
    listed = one(conn, "PRAGMA shoal_history").splitlines()
    r.check("PRAGMA shoal_history lists both commits", any(l.startswith(first + "\t") for l in listed) and any(l.startswith(second + "\t") for l in listed), listed[-3:])
    one(conn, "PRAGMA shoal_restore = 'py-before'")
    r.eq("a restore to the pinned point is seen by the open connection", one(conn, "SELECT count(*) FROM t"), before)
    one(conn, "PRAGMA shoal_restore = '%s'" % second)
    r.eq("and undone by a restore to the commit before it", one(conn, "SELECT count(*) FROM t"), before + 1)
    fork = connect(uri("actor-1-fork", os.path.join(st["tmp"], "store")))
    r.eq("the fork holds the state it was made of", one(fork, "SELECT count(*) FROM t"), before + 1)
    fork.close()
    conn.execute("DELETE FROM t WHERE v = 'history'")


def test_second_process(r, st):
    # This process holds the store (st["conn"] is open on it).
    r.eq("this process holds the store open", one(st["conn"], "SELECT count(*) FROM t"), 4005)
    t0 = time.monotonic()
    try:
        ans, rc, err = run_child("try-open", st["a1"], "", "SELECT count(*) FROM t")
    except subprocess.TimeoutExpired:
        r.check("a second process's open returns within seconds", False, "timed out (hang)")
        return
    wall = int((time.monotonic() - t0) * 1000)
    r.check(
        "a second process's open returns within seconds (open %s ms, child %d ms)"
        % (ans and ans.get("elapsed_ms"), wall),
        rc == 0 and ans is not None and ans["elapsed_ms"] < 10000,
        "status %d" % rc,
        err,
    )
    if ans is None:
        return
    r.check("a second process cannot open a store another process holds", not ans["opened"], ans)
    if ans["opened"]:
        return
    print("#   error: %s: %s" % (ans["error_type"], ans["error"]))
    print("#   shoal_last_error(): %r" % ans["last_error"])
    r.eq("the second process's error is sqlite3.OperationalError", ans["error_type"], "OperationalError")
    text = ("%s\n%s" % (ans["error"], ans["last_error"])).lower()
    r.check(
        "the second process gets a shoal error saying the store is locked / in use",
        "shoal:" in text and any(w in text for w in LOCK_WORDS),
        ans,
    )
    if "shoal:" not in ans["error"] and "shoal:" in str(ans["last_error"]):
        print("#   note: shoal's text is only in shoal_last_error(), not in the OperationalError")
    r.eq(
        "this process's connection is undisturbed by the second",
        (one(st["conn"], "SELECT count(*) FROM t"), one(st["conn"], "PRAGMA integrity_check")),
        (4005, "ok"),
    )


def test_errors_in_process(r, st):
    other = uri("actor-1", os.path.join(st["tmp"], "other-store"))
    try:
        c = connect(other)
        c.execute("SELECT count(*) FROM sqlite_schema").fetchall()
        r.check("a second store in the same process is an error", False, "it opened")
        c.close()
    except sqlite3.Error as e:
        le = last_error(st["loader"])
        print("#   error: %s: %s; shoal_last_error(): %r" % (type(e).__name__, e, le))
        r.check(
            "a second store in the same process is a shoal error (sqlite3.OperationalError)",
            isinstance(e, sqlite3.OperationalError) and ("shoal:" in str(e) or "shoal:" in str(le)),
            "%s: %s" % (type(e).__name__, e),
            "shoal_last_error(): %r" % le,
        )
    # ATTACH of a database the store cannot serve fails too (SQLite's own text is generic;
    # shoal_last_error() on the same thread has the reason), and nothing reads it as empty.
    try:
        st["conn"].execute("ATTACH ? AS elsewhere", (other,))
        r.check("ATTACH of another store is an error", False, "it attached")
        st["conn"].execute("DETACH elsewhere")
    except sqlite3.Error as e:
        le = last_error(st["loader"])
        print("#   ATTACH error: %s; shoal_last_error(): %r" % (e, le))
        r.check(
            "ATTACH of another store is an error that shoal_last_error() explains",
            "one store per process" in str(le or ""),
            "%s; shoal_last_error(): %r" % (e, le),
        )
    r.eq(
        "the process's own store still works after the refused open",
        one(st["conn"], "SELECT count(*) FROM t"),
        4005,
    )


def test_kill(r, st):
    store = os.path.join(st["tmp"], "kill-store")  # not this process's store: children use it
    ans, rc, err = run_child("setup", store, "actor-k", "100")
    if not r.eq("setup for the SIGKILL checks: 100 committed rows", ans and ans.get("count"), 100, err):
        return
    committed = 100
    for label, rows, nbytes in (("kill-small", 1000, 100), ("kill-large", 4000, 1000)):
        p = subprocess.Popen(
            [PYTHON, os.path.abspath(__file__), "--child", "kill-target", store, "actor-k", str(rows), str(nbytes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        try:
            ready, _, _ = select.select([p.stdout], [], [], TIMEOUT)
            line = p.stdout.readline() if ready else ""
            if not line.startswith("READY"):
                p.kill()
                _, err = p.communicate()
                r.check("%s: the transaction got under way (READY)" % label, False, repr(line), err)
                return
            time.sleep(0.2)
            os.kill(p.pid, signal.SIGKILL)
            p.wait(TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
        r.eq(
            "%s: the child was killed with SIGKILL inside its transaction (%s)" % (label, line.strip()),
            p.returncode,
            -signal.SIGKILL,
        )
        ans, rc, err = run_child("verify", store, "actor-k")
        r.check("%s: a new process opens the store after the kill" % label, rc == 0 and ans is not None, err)
        if ans is None:
            return
        r.eq("%s: PRAGMA integrity_check is ok" % label, ans["integrity"], "ok")
        r.eq(
            "%s: exactly the committed rows, none of the killed transaction's" % label,
            (ans["count"], ans["killed"]),
            (committed, 0),
        )
        r.eq("%s: shoal_check is ok" % label, ans["check"], "ok")
        r.eq("%s: the store takes new commits" % label, ans["after"], committed + 1)
        committed += 1
    st["kill_store"], st["kill_count"] = store, committed


def test_other_ways_in(r, st):
    store = st.get("kill_store")
    if store is None:
        r.check("SHOAL_STORE and sqlite3_shoal_default_init (need the SIGKILL checks' store)", False)
        return
    ans, rc, err = run_child(
        "try-open", uri("actor-k", budget_mb=None), "", "SELECT count(*) FROM k",
        env=clean_env(SHOAL_STORE=store, SHOAL_BUDGET_MB="16"),
    )
    r.check(
        "store from SHOAL_STORE (no store= in the URI) opens the same store",
        ans is not None and ans.get("result") == st["kill_count"],
        ans,
        err,
    )
    ans, rc, err = run_child(
        "try-open", uri("actor-k", store, vfs=False), "sqlite3_shoal_default_init", "SELECT count(*) FROM k",
    )
    r.check(
        "sqlite3_shoal_default_init makes shoal the default VFS (URI without vfs=)",
        ans is not None
        and ans.get("result") == st["kill_count"]
        and ans.get("durability") in ("full", "relaxed"),
        ans,
        err,
    )


def test_no_store(r, st):
    cwd = os.path.join(st["tmp"], "cwd")
    os.mkdir(cwd)
    ans, rc, err = run_child("try-open", uri("actor-1", budget_mb=None), cwd=cwd)
    ok = ans is not None and not ans["opened"]
    if ok:
        print("#   error: %s: %s; shoal_last_error(): %r" % (ans["error_type"], ans["error"], ans["last_error"]))
        text = "%s\n%s" % (ans["error"], ans["last_error"])
        ok = ans["error_type"] == "OperationalError" and "shoal:" in text and "store" in text.lower()
    r.check("no store= and no SHOAL_STORE is a clear shoal error (sqlite3.OperationalError)", ok, ans, err)
    r.eq("an open without a store creates nothing in the working directory", os.listdir(cwd), [])
    a_file = os.path.join(st["tmp"], "a-file")
    with open(a_file, "w") as f:
        f.write("not a store\n")
    ans, rc, err = run_child("try-open", uri("actor-1", a_file))
    ok = ans is not None and not ans["opened"]
    if ok:
        print("#   error: %s: %s; shoal_last_error(): %r" % (ans["error_type"], ans["error"], ans["last_error"]))
        text = "%s\n%s" % (ans["error"], ans["last_error"])
        ok = ans["error_type"] == "OperationalError" and "shoal:" in text
    r.check("a store path that is a regular file is a clear shoal error (sqlite3.OperationalError)", ok, ans, err)
    junk = os.path.join(st["tmp"], "not-a-store")
    os.mkdir(junk)
    with open(os.path.join(junk, "notes.txt"), "w") as f:
        f.write("someone else's file\n")
    ans, rc, err = run_child("try-open", uri("actor-1", junk))
    ok = ans is not None and not ans["opened"]
    if ok:
        print("#   error: %s: %s; shoal_last_error(): %r" % (ans["error_type"], ans["error"], ans["last_error"]))
        text = "%s\n%s" % (ans["error"], ans["last_error"])
        ok = ans["error_type"] == "OperationalError" and "shoal:" in text
    r.check(
        "a directory that is not a shoal store (it holds other files) is a clear shoal error", ok, ans, err
    )
    r.eq("nothing is written into a directory that is not a shoal store", os.listdir(junk), ["notes.txt"])


def run_tests(tmp):
    r = Run()
    print("# extension: %s" % EXT)
    print("# python %s, sqlite %s" % (sys.version.split()[0], sqlite3.sqlite_version))
    st = {"tmp": tmp}
    try:
        st["loader"] = load_extension()
    except Exception:  # noqa: BLE001
        r.check("load_extension(%s)" % EXT, False, traceback.format_exc())
        return r
    r.check("load_extension() loads the extension into a :memory: connection", True)
    st["a1"] = uri("actor-1", os.path.join(tmp, "store"))
    # The checks of this process's own store, in order (each builds on the last).
    for name, fn in (
        ("basics", test_basics),
        ("transactions", test_transactions),
        ("large transactions", test_large),
        ("shoal_check, shoal_export", test_export_check),
        ("shoal_stats", test_stats),
        ("history pragmas", test_history),
        ("second process", test_second_process),
        ("errors in this process", test_errors_in_process),
    ):
        if "conn" not in st and name != "basics":
            r.check("%s (skipped: the store did not open)" % name, False)
            continue
        r.group(name, fn, st)
    # Checks run in child processes only (their own stores).
    r.group("SIGKILL", test_kill, st)
    r.group("other ways in", test_other_ways_in, st)
    r.group("no store", test_no_store, st)
    if "conn" in st:
        st["conn"].close()
    return r


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3:])
        return 0
    if not hasattr(sqlite3.Connection, "enable_load_extension"):
        print("not ok - %s has no sqlite3 enable_load_extension: run it with %s" % (sys.executable, PYTHON))
        return 1
    if not os.path.isfile(EXT):
        print(
            "not ok - no extension at %s "
            "(build it with cargo build --release --manifest-path ext/Cargo.toml)" % EXT
        )
        return 1
    if len(sys.argv) > 2 and sys.argv[1] == "--run-tests":
        r = run_tests(sys.argv[2])
        print("# %d passed, %d failed" % (r.passed, r.failed), flush=True)
        return 1 if r.failed else 0
    # The tests run in a child process, so that the store is closed (the process gone)
    # before its directory is removed, and a crash at exit is seen.
    for k in ("SHOAL_STORE", "SHOAL_BUDGET_MB"):
        os.environ.pop(k, None)
    tmp = tempfile.mkdtemp(prefix="shoal-python-host.")
    try:
        p = subprocess.run([PYTHON, os.path.abspath(__file__), "--run-tests", tmp])
        if p.returncode not in (0, 1):
            print("not ok - the test process exited cleanly (status %d)" % p.returncode)
            return 1
        return p.returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
