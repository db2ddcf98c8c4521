#!/usr/bin/python3
"""The entry point's checks of the API table it is given, which no SQLite on this machine
can exercise: a SQLite older than 3.40.0, and a second SQLite library in a process that
already loaded the extension into another. The entry point is called directly (ctypes)
with a table of SQLite's layout whose `libversion_number` reports the version under test
and whose `malloc` is libc's (the error message is allocated with the host's malloc);
every other field is NULL, so a check that let it through would crash rather than pass.

    /usr/bin/python3 ext/tests/api_table.py      (SHOAL_EXT overrides the library)
"""

import ctypes
import os
import sqlite3
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EXT = os.path.abspath(
    os.environ.get("SHOAL_EXT", os.path.join(HERE, "..", "target", "release", "libshoal.so")))

# sqlite3_api_routines as of 3.44/3.45: 270 pointer-sized fields; the indices of the two
# this test fills (sqlite3ext.h order: ... libversion_number, malloc, ...).
FIELDS = 270
LIBVERSION_NUMBER = 67
MALLOC = 68

VersionFn = ctypes.CFUNCTYPE(ctypes.c_int)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
shoal = ctypes.CDLL(EXT)
init = shoal.sqlite3_shoal_init
init.restype = ctypes.c_int
init.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]

failed = 0


def check(what, cond, detail):
    global failed
    print("%s - %s" % ("ok" if cond else "not ok", what))
    if not cond:
        failed += 1
        print("#   %s" % detail)


def enter(version):
    """Calls the entry point with a table reporting `version`: (code, message)."""
    version_fn = VersionFn(lambda: version)
    table = (ctypes.c_void_p * FIELDS)()
    table[LIBVERSION_NUMBER] = ctypes.cast(version_fn, ctypes.c_void_p)
    table[MALLOC] = ctypes.cast(libc.malloc, ctypes.c_void_p)
    err = ctypes.c_void_p()
    rc = init(None, ctypes.byref(err), ctypes.cast(table, ctypes.c_void_p))
    message = ctypes.string_at(err.value).decode() if err.value else None
    return rc, message


rc, message = enter(3_039_004)
check("a SQLite older than 3.40.0 is refused with SQLITE_ERROR and says why",
      rc == 1 and message is not None and "3.39.4" in message and "3.40.0" in message,
      "rc %d, message %r" % (rc, message))

# Now load it for real, into this process's SQLite (Debian's, through Python).
conn = sqlite3.connect(":memory:")
conn.enable_load_extension(True)
conn.load_extension(EXT)
check("the extension then loads into the real SQLite", True, "")

rc, message = enter(3_045_000)
check("a second SQLite library in the same process is refused and says why",
      rc == 1 and message is not None and "another SQLite" in message,
      "rc %d, message %r" % (rc, message))

check("the real SQLite keeps working with the extension after the refusals",
      conn.execute("SELECT shoal_last_error() IS NULL").fetchone()[0] == 1, "")

print("# %d failed" % failed)
sys.exit(1 if failed else 0)
