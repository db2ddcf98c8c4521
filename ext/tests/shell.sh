#!/usr/bin/env bash
# Host test: the shoal loadable extension driven through Debian's sqlite3 shell.
#
# Why: hosts (the sqlite3 shell, Python's sqlite3, Node, Bun) ship SQLite builds without
# SQLITE_ENABLE_BATCH_ATOMIC_WRITE, so the extension itself must make every commit atomic
# on them. This script checks that through a stock /usr/bin/sqlite3 (3.40) only, fed
# non-interactively from heredocs and fifos:
#   - .load (with and without the .so suffix, and the sqlite3_shoal_default_init entry
#     point), .open of "file:actor-1?vfs=shoal&store=DIR", store= from SHOAL_STORE;
#   - CREATE / INSERT / SELECT, BEGIN..COMMIT, BEGIN..ROLLBACK (rows gone), persistence
#     across processes, journal_mode MEMORY by default and WAL refused;
#   - a transaction larger than the memory share (budget_mb=16: 4000 rows of 1000 bytes),
#     committed and rolled back;
#   - .dump (loads into a plain SQLite file with the same content), shoal_export (a plain
#     SQLite file with the same content), shoal_check, PRAGMA shoal_stats and
#     shoal_durability;
#   - SIGKILL in the middle of a transaction (small, and larger than the memory share):
#     the next process sees an intact database holding exactly the committed rows;
#   - a second process opening a store that another one holds: a clear "shoal: ... locked /
#     in use" error within seconds, not a hang or a crash;
#   - errors: no store at all, a store path that is a regular file, a directory that is not
#     a shoal store, a second store in the same process.
# Output: one "ok - ..." / "not ok - ..." line per check (diagnostics as "# ..." lines);
# the exit status is nonzero if any check failed.
#
# Usage: ext/tests/shell.sh   (SHOAL_EXT=path/to/libshoal.so to test another build)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
SQLITE=/usr/bin/sqlite3
EXT=${SHOAL_EXT:-$repo/ext/target/release/libshoal.so}
case $EXT in /*) ;; *) EXT=$PWD/$EXT ;; esac
EXT_NOSO=${EXT%.so}
TIMEOUT=${SHOAL_TEST_TIMEOUT:-120} # seconds any one sqlite3 run may take

if [[ ! -x $SQLITE ]]; then
    echo "not ok - $SQLITE is missing (install the Debian package sqlite3)"
    exit 1
fi
if [[ ! -f $EXT ]]; then
    echo "not ok - no extension at $EXT" \
        "(build it with cargo build --release --manifest-path ext/Cargo.toml)"
    exit 1
fi

# Nothing from the caller's environment decides the store or the budget.
unset SHOAL_STORE SHOAL_BUDGET_MB

T=$(mktemp -d)
bg_pids=()
cleanup() {
    local pid
    for pid in "${bg_pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$T"
}
trap cleanup EXIT
reaped() { # reaped PID: PID has been waited for; the cleanup must not signal it any more
    local p kept=()
    for p in "${bg_pids[@]}"; do
        [[ $p == "$1" ]] || kept+=("$p")
    done
    bg_pids=("${kept[@]}")
}

passed=0
failed=0
ok() {
    echo "ok - $*"
    passed=$((passed + 1))
}
notok() {
    echo "not ok - $*"
    failed=$((failed + 1))
}
# diag [LINES]: stdin as diagnostic lines (at most LINES, 15 by default).
diag() { sed 's/^/#   /' | head -n "${1:-15}" || true; }

# urlenc STRING: STRING percent-encoded for a URI parameter.
urlenc() {
    local LC_ALL=C s=$1 out='' c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
            [A-Za-z0-9/._~-]) out+=$c ;;
            *) printf -v c '%%%02X' "'$c" && out+=$c ;;
        esac
    done
    printf '%s' "$out"
}
# uri ACTOR STORE [EXTRA]: the URI of an actor database (budget_mb=16 unless EXTRA says).
uri() { printf 'file:%s?vfs=shoal&store=%s%s' "$1" "$(urlenc "$2")" "${3-&budget_mb=16}"; }

# sq NAME [SQLITE ARGS...] <SCRIPT: runs the sqlite3 shell on SCRIPT; leaves its stdout,
# stderr and exit status in $T/NAME.out, $T/NAME.err, $T/NAME.rc. Never fails itself.
sq() {
    local name=$1 rc=0
    shift
    timeout -k 5 "$TIMEOUT" "$SQLITE" "$@" >"$T/$name.out" 2>"$T/$name.err" || rc=$?
    echo "$rc" >"$T/$name.rc"
}
# A run is clean if it exited 0 and wrote nothing to stderr (a failed .open does not stop
# the shell, even with -bail: it prints "Error: unable to open database" and goes on).
clean() { [[ $(cat "$T/$1.rc") == 0 && ! -s "$T/$1.err" ]]; }
show() {
    echo "#   exit status $(cat "$T/$1.rc")"
    if [[ -s $T/$1.err ]]; then
        echo "#   stderr:"
        diag <"$T/$1.err"
    fi
    if [[ -s $T/$1.out ]]; then
        echo "#   stdout:"
        diag <"$T/$1.out"
    fi
}
check_clean() { # check_clean NAME DESCRIPTION
    if clean "$1"; then ok "$2"; else
        notok "$2"
        show "$1"
    fi
}
# val NAME KEY: the value of the first "KEY=value" line of NAME's stdout.
# (These helpers never fail: a missing file or line is an empty answer, which the check
# then reports.)
val() {
    local f=$T/$1.out
    [[ -f $f ]] || f=$T/$1
    { sed -n "s/^$2=//p" "$f" | head -n 1; } 2>/dev/null || true
}
# after NAME MARKER: the line after the first line that is exactly MARKER.
after() { awk -v m="$2" 'f { print; exit } $0 == m { f = 1 }' "$T/$1.out" 2>/dev/null || true; }
check_eq() { # check_eq DESCRIPTION ACTUAL EXPECTED [RUN NAME for diagnostics]
    if [[ $2 == "$3" ]]; then ok "$1"; else
        notok "$1"
        echo "#   got:      '$2'"
        echo "#   expected: '$3'"
        if [[ -n ${4-} ]]; then show "$4"; fi
    fi
}
check_re() { # check_re DESCRIPTION ACTUAL EXTENDED-REGEX [RUN NAME]
    if [[ $2 =~ $3 ]]; then ok "$1"; else
        notok "$1"
        echo "#   got:      '$2'"
        echo "#   expected to match: $3"
        if [[ -n ${4-} ]]; then show "$4"; fi
    fi
}
# stat_of LINE KEY: the counter KEY of a shoal_stats line ("" if absent).
stat_of() { { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1; } || true; }
# wait_for FILE SECONDS PID: waits until FILE exists; fails if PID dies or time runs out.
wait_for() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        [[ -e $1 ]] && return 0
        kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
now_ms() { date +%s%3N; }
# opened_shoal NAME: whether NAME's run, after its marker "--vfs_after_open", had a shoal
# database open that answered a query (a failed .open leaves the shell on :memory:, where
# .vfsinfo prints nothing).
opened_shoal() {
    [[ $(after "$1" --vfs_after_open) =~ vfs\.zName\ *=\ *\"shoal\" && -n $(val "$1" schema) ]]
}

S=$T/store # the store of most checks
A1=$(uri actor-1 "$S")

echo "# extension: $EXT"
echo "# sqlite3: $("$SQLITE" --version | cut -d' ' -f1)"

# ---------------------------------------------------------------- basics
sq basic -bail <<EOF
.load "$EXT_NOSO"
.open "$A1"
.vfsinfo
.print --journal_mode
PRAGMA journal_mode;
.print --durability
PRAGMA shoal_durability;
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);
INSERT INTO t(v) VALUES ('one'), ('two'), ('three');
SELECT 'count=' || count(*) FROM t;
SELECT 'values=' || group_concat(v, ',') FROM (SELECT v FROM t ORDER BY id);
EOF
check_clean basic ".load without the .so suffix, .open of a shoal URI, CREATE TABLE, INSERT"
check_re "the database's VFS is shoal (.vfsinfo)" "$(grep -m1 'vfs.zName' "$T/basic.out" || true)" \
    'vfs\.zName *= *"shoal"' basic
check_eq "journal_mode defaults to memory" "$(after basic --journal_mode)" memory basic
check_re "PRAGMA shoal_durability is full or relaxed" "$(after basic --durability)" \
    '^(full|relaxed)$' basic
check_eq "SELECT sees the inserted rows" "$(val basic count)/$(val basic values)" \
    "3/one,two,three" basic

sq txn -bail <<EOF
.load "$EXT"
.open "$A1"
SELECT 'reopened=' || count(*) FROM t;
BEGIN;
INSERT INTO t(v) VALUES ('four'), ('five');
COMMIT;
SELECT 'committed=' || count(*) FROM t;
BEGIN;
INSERT INTO t(v) SELECT 'doomed' FROM generate_series(1, 10);
UPDATE t SET v = 'changed' WHERE id = 1;
SELECT 'inside=' || count(*) FROM t;
ROLLBACK;
SELECT 'rolledback=' || count(*) FROM t;
SELECT 'row1=' || v FROM t WHERE id = 1;
EOF
check_clean txn ".load with the .so suffix, BEGIN..COMMIT, BEGIN..ROLLBACK"
check_eq "rows persist across processes" "$(val txn reopened)" 3 txn
check_eq "BEGIN..COMMIT adds its rows" "$(val txn committed)" 5 txn
check_eq "the open transaction sees its own rows" "$(val txn inside)" 15 txn
check_eq "ROLLBACK removes the transaction's rows and undoes its update" \
    "$(val txn rolledback)/$(val txn row1)" "5/one" txn

# PRAGMA journal_mode=WAL may fail or answer the mode it kept: either is a refusal (no -bail).
sq wal <<EOF
.load "$EXT"
.open "$A1"
SELECT 'opened=' || count(*) FROM t;
.print --wal
PRAGMA journal_mode = WAL;
.print --journal_mode_after
PRAGMA journal_mode;
SELECT 'count=' || count(*) FROM t;
EOF
wal=$(after wal --wal)
if [[ $wal == "--journal_mode_after" ]]; then wal="(error: $(head -n 1 "$T/wal.err"))"; fi
echo "#   PRAGMA journal_mode=WAL answered: $wal"
check_re "PRAGMA journal_mode=WAL is refused" "$wal" '^(memory|\(error.*)$' wal
if [[ $wal == "(error"* ]]; then
    check_re "the WAL refusal is shoal's error" "$wal" '^\(error: [^:]*: shoal[: ]' wal
fi
check_eq "journal_mode is still memory after asking for WAL, the database still reads" \
    "$(after wal --journal_mode_after)/$(val wal opened)/$(val wal count)" memory/5/5 wal

sq reopen -bail <<EOF
.load "$EXT"
.open "$A1"
SELECT 'count=' || count(*) FROM t;
SELECT 'doomed=' || count(*) FROM t WHERE v = 'doomed';
EOF
check_eq "the rolled-back rows are absent in the next process" \
    "$(val reopen count)/$(val reopen doomed)" "5/0" reopen

# ---------------------------------------------------------------- larger than the memory share
# budget_mb=16: the share is 1 MiB; 4000 rows of 1000 bytes is about 4 MB of pages.
sq big -bail <<EOF
.load "$EXT"
.open "$A1"
.print --stats_before
PRAGMA shoal_stats;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
INSERT INTO t(v, b) SELECT 'big' || i, randomblob(1000) FROM n;
SELECT 'inside=' || count(*) FROM t;
COMMIT;
.print --stats_after
PRAGMA shoal_stats;
SELECT 'count=' || count(*) FROM t;
SELECT 'bytes=' || sum(length(b)) FROM t;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
INSERT INTO t(v, b) SELECT 'bigdoomed' || i, randomblob(1000) FROM n;
DELETE FROM t WHERE v = 'one';
SELECT 'inside2=' || count(*) FROM t;
ROLLBACK;
SELECT 'after_rollback=' || count(*) FROM t;
SELECT 'one=' || count(*) FROM t WHERE v = 'one';
.print --integrity
PRAGMA integrity_check;
EOF
check_clean big "a transaction larger than the memory share runs (budget_mb=16, ~4 MB)"
check_eq "the large transaction sees its rows before COMMIT" "$(val big inside)" 4005 big
check_eq "the large transaction commits all its rows" "$(val big count)/$(val big bytes)" \
    "4005/4000000" big
before=$(after big --stats_before)
afterc=$(after big --stats_after)
sb=$(stat_of "$before" staged_commits)
sa=$(stat_of "$afterc" staged_commits)
if [[ $sb =~ ^[0-9]+$ && $sa =~ ^[0-9]+$ && $sa -gt $sb ]]; then
    ok "the large transaction went through the staging area (staged_commits $sb -> $sa)"
else
    notok "the large transaction went through the staging area (staged_commits '$sb' -> '$sa')"
    echo "#   before: $before"
    echo "#   after:  $afterc"
fi
check_eq "a large transaction rolled back leaves nothing (rows and delete undone)" \
    "$(val big after_rollback)/$(val big one)" "4005/1" big
check_eq "integrity_check after the large transactions" "$(after big --integrity)" ok big

sq bigreopen -bail <<EOF
.load "$EXT"
.open "$A1"
SELECT 'count=' || count(*) FROM t;
SELECT 'bytes=' || sum(length(b)) FROM t;
SELECT 'doomed=' || count(*) FROM t WHERE v LIKE 'bigdoomed%';
.print --integrity
PRAGMA integrity_check;
.print --check
SELECT shoal_check('actor-1');
.print --sha3
.sha3sum
EOF
check_clean bigreopen "reopen after the large transactions"
check_eq "the next process sees the large commit and not the large rollback" \
    "$(val bigreopen count)/$(val bigreopen bytes)/$(val bigreopen doomed)" "4005/4000000/0" bigreopen
check_eq "PRAGMA integrity_check is ok in the next process" "$(after bigreopen --integrity)" ok bigreopen
check_eq "shoal_check('actor-1') is ok" "$(after bigreopen --check)" ok bigreopen
sha_shoal=$(after bigreopen --sha3)
sha_shoal=${sha_shoal:-(no .sha3sum of actor-1)}

# ---------------------------------------------------------------- .dump
sq dump -bail <<EOF
.load "$EXT"
.open "$A1"
.output $T/dump.sql
.dump
.output stdout
SELECT 'done=1';
EOF
check_clean dump ".dump of a shoal database"
if grep -q '^CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB);' "$T/dump.sql" \
    && grep -q "^INSERT INTO t VALUES(1,'one',NULL);" "$T/dump.sql" \
    && [[ $(grep -c '^INSERT INTO t VALUES' "$T/dump.sql") == 4005 ]]; then
    ok "the dump holds the CREATE TABLE and all 4005 rows"
else
    notok "the dump holds the CREATE TABLE and all 4005 rows"
    echo "#   INSERT lines: $(grep -c '^INSERT INTO t VALUES' "$T/dump.sql" || true)"
    { cut -c1-120 "$T/dump.sql" | head -n 5 || true; } | diag
fi
touch "$T/dump.sql"
sq dumpload -bail "$T/plain-from-dump.db" <"$T/dump.sql"
sq dumpread -bail "$T/plain-from-dump.db" <<EOF
SELECT 'count=' || count(*) FROM t;
.print --sha3
.sha3sum
EOF
check_clean dumpload "the dump loads into a plain SQLite file"
check_eq "the plain file from the dump has the same rows" "$(val dumpread count)" 4005 dumpread
check_eq "the plain file from the dump has the same content (.sha3sum)" \
    "$(after dumpread --sha3)" "$sha_shoal" dumpread

# ---------------------------------------------------------------- shoal_export, shoal_stats
sq export -bail <<EOF
.load "$EXT"
.open "$A1"
.print --export
SELECT shoal_export('actor-1', '$T/out.db');
EOF
check_clean export "SELECT shoal_export('actor-1', path) runs"
sq stats -bail <<EOF
.load "$EXT"
.open "$A1"
.print --stats1
PRAGMA shoal_stats;
INSERT INTO t(v) VALUES ('after-export');
.print --stats2
PRAGMA shoal_stats;
DELETE FROM t WHERE v = 'after-export';
EOF
echo "#   shoal_export returned: '$(after export --export)'"
if [[ -f $T/out.db ]] && [[ $(head -c 15 "$T/out.db") == "SQLite format 3" ]]; then
    ok "shoal_export wrote a SQLite file"
else
    notok "shoal_export wrote a SQLite file"
    ls -l "$T"/out.db* 2>&1 | diag || true
fi
sq exportread -bail "$T/out.db" <<EOF
.print --vfs
.vfsinfo
SELECT 'count=' || count(*) FROM t;
.print --integrity
PRAGMA integrity_check;
.print --sha3
.sha3sum
EOF
check_clean exportread "plain sqlite3 (no extension) opens the exported file"
check_clean stats "PRAGMA shoal_stats before and after a commit"
check_eq "the exported file has the actor's rows" "$(val exportread count)" 4005 exportread
check_eq "the exported file passes integrity_check" "$(after exportread --integrity)" ok exportread
check_eq "the exported file has the actor's content (.sha3sum)" "$(after exportread --sha3)" \
    "$sha_shoal" exportread
stats1=$(after stats --stats1)
stats2=$(after stats --stats2)
check_re "PRAGMA shoal_stats is one line of key=value counters with batch_commits" "$stats1" \
    '^([a-z_]+=[0-9]+ )*batch_commits=[0-9]+( [a-z_]+=[0-9]+)*$' stats
b1=$(stat_of "$stats1" batch_commits)
b2=$(stat_of "$stats2" batch_commits)
if [[ $b1 =~ ^[0-9]+$ && $b2 =~ ^[0-9]+$ && $b2 -gt $b1 ]]; then
    ok "a commit counts as a batch commit (batch_commits $b1 -> $b2)"
else
    notok "a commit counts as a batch commit (batch_commits '$b1' -> '$b2')"
    echo "#   before: $stats1"
    echo "#   after:  $stats2"
fi

# ---------------------------------------------------------------- other ways in
sq deflt -bail <<EOF
.load "$EXT" sqlite3_shoal_default_init
.open "file:actor-1?store=$(urlenc "$S")&budget_mb=16"
.vfsinfo
SELECT 'count=' || count(*) FROM t;
EOF
check_clean deflt ".load ... sqlite3_shoal_default_init, .open without vfs="
check_re "sqlite3_shoal_default_init makes shoal the default VFS" \
    "$(grep -m1 'vfs.zName' "$T/deflt.out" || true)" 'vfs\.zName *= *"shoal"' deflt
check_eq "the default VFS opens the same actor" "$(val deflt count)" 4005 deflt

SHOAL_STORE=$S SHOAL_BUDGET_MB=16 sq envstore -bail <<EOF
.load "$EXT"
.open "file:actor-1?vfs=shoal"
SELECT 'count=' || count(*) FROM t;
EOF
check_clean envstore "store from SHOAL_STORE (no store= in the URI)"
check_eq "SHOAL_STORE opens the same store" "$(val envstore count)" 4005 envstore

sq second_actor -bail <<EOF
.load "$EXT"
.open "$(uri actor-2 "$S")"
CREATE TABLE u(x);
INSERT INTO u VALUES (42);
SELECT 'u=' || group_concat(x) FROM u;
SELECT 'has_t=' || count(*) FROM sqlite_schema WHERE name = 't';
.open "$A1"
SELECT 'count=' || count(*) FROM t;
.open "$T/plain.db"
.print --plain_journal_mode
PRAGMA journal_mode;
EOF
check_clean second_actor "a second actor in the same store, then reopening the first"
check_eq "actors are separate databases" "$(val second_actor u)/$(val second_actor has_t)" "42/0" \
    second_actor
check_eq "reopening actor-1 in the same process" "$(val second_actor count)" 4005 second_actor
check_eq "a plain file opened after loading the extension keeps journal_mode delete" \
    "$(after second_actor --plain_journal_mode)" delete second_actor

# ---------------------------------------------------------------- SIGKILL mid-transaction
# kill_mid_txn LABEL ACTOR ROWS BLOB_BYTES: a shell, fed from a fifo, opens ACTOR, BEGINs,
# inserts ROWS rows of BLOB_BYTES, touches a marker and waits for more input; it is then
# killed with SIGKILL. The next process must find the database intact with only the
# committed rows.
sq killsetup -bail <<EOF
.load "$EXT"
.open "$(uri actor-k "$S")"
CREATE TABLE k(id INTEGER PRIMARY KEY, tag TEXT, b BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
INSERT INTO k(tag, b) SELECT 'committed', randomblob(100) FROM n;
SELECT 'count=' || count(*) FROM k;
EOF
check_clean killsetup "setup for the SIGKILL checks: 100 committed rows"
committed=100

kill_mid_txn() {
    local label=$1 actor=$2 rows=$3 bytes=$4 fifo=$T/$1.fifo marker=$T/$1.marker pid
    mkfifo "$fifo"
    "$SQLITE" -bail <"$fifo" >"$T/$label.out" 2>"$T/$label.err" &
    pid=$!
    bg_pids+=("$pid")
    exec 3>"$fifo"
    cat >&3 <<EOF || true
.load "$EXT"
.open "$(uri "$actor" "$S")"
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows)
INSERT INTO k(tag, b) SELECT 'killed', randomblob($bytes) FROM n;
UPDATE k SET tag = 'killed-update' WHERE id <= 10;
.output "$T/$label.inside"
SELECT 'inside=' || count(*) FROM k;
.output stdout
.system touch "$marker"
EOF
    if wait_for "$marker" "$TIMEOUT" "$pid"; then
        sleep 0.2
        kill -9 "$pid" 2>/dev/null || true
        local rc=0
        wait "$pid" 2>/dev/null || rc=$?
        reaped "$pid"
        exec 3>&-
        if [[ $rc == 137 ]]; then
            ok "$label: the shell was killed with SIGKILL inside its transaction" \
                "(inside=$(val "$label.inside" inside))"
        else
            notok "$label: the shell was killed with SIGKILL inside its transaction (status $rc)"
        fi
    else
        notok "$label: the transaction got under way (no marker; the shell died or hung)"
        echo 1 >"$T/$label.rc"
        show "$label"
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        reaped "$pid"
        exec 3>&-
        return 0
    fi
    local t0 t1
    t0=$(now_ms)
    sq "$label-after" -bail <<EOF
.load "$EXT"
.open "$(uri "$actor" "$S")"
.print --integrity
PRAGMA integrity_check;
SELECT 'count=' || count(*) FROM k;
SELECT 'killed=' || count(*) FROM k WHERE tag LIKE 'killed%';
.print --check
SELECT shoal_check('$actor');
INSERT INTO k(tag) VALUES ('after');
SELECT 'after=' || count(*) FROM k;
EOF
    t1=$(now_ms)
    check_clean "$label-after" "$label: a new process opens the store after the kill ($((t1 - t0)) ms)"
    check_eq "$label: PRAGMA integrity_check is ok" "$(after "$label-after" --integrity)" ok \
        "$label-after"
    check_eq "$label: exactly the committed rows, none of the killed transaction's" \
        "$(val "$label-after" count)/$(val "$label-after" killed)" "$committed/0" "$label-after"
    check_eq "$label: shoal_check is ok" "$(after "$label-after" --check)" ok "$label-after"
    check_eq "$label: the store takes new commits" "$(val "$label-after" after)" \
        "$((committed + 1))" "$label-after"
    committed=$((committed + 1))
}
kill_mid_txn kill-small actor-k 1000 100
kill_mid_txn kill-large actor-k 4000 1000

# ---------------------------------------------------------------- a second process
fifo=$T/holder.fifo
mkfifo "$fifo"
"$SQLITE" -bail <"$fifo" >"$T/holder.out" 2>"$T/holder.err" &
holder=$!
bg_pids+=("$holder")
exec 3>"$fifo"
cat >&3 <<EOF || true
.load "$EXT"
.open "$A1"
SELECT 'count=' || count(*) FROM t;
.system touch "$T/holder.marker"
EOF
if wait_for "$T/holder.marker" "$TIMEOUT" "$holder"; then
    ok "a first process holds the store open"
    t0=$(now_ms)
    sq second <<EOF
.load "$EXT"
.open "$A1"
SELECT 'opened=' || count(*) FROM t;
.print --last_error
SELECT shoal_last_error();
EOF
    t1=$(now_ms)
    elapsed=$((t1 - t0))
    rc=$(cat "$T/second.rc")
    text=$(cat "$T/second.err" "$T/second.out")
    text=${text//"$A1"/} # the shell echoes the URI; only the error's own words count
    if [[ $rc != 124 && $rc != 137 && $elapsed -lt 10000 ]]; then
        ok "a second process's open returns within seconds ($elapsed ms, status $rc)"
    else
        notok "a second process's open returns within seconds ($elapsed ms, status $rc)"
    fi
    if [[ -z $(val second opened) ]]; then
        ok "a second process cannot open a store another process holds"
    else
        notok "a second process cannot open a store another process holds"
        show second
    fi
    if grep -q 'shoal:' <<<"$text" && grep -Eqi 'lock|in use|already open' <<<"$text"; then
        ok "the second process gets a shoal error saying the store is locked / in use"
    else
        notok "the second process gets a shoal error saying the store is locked / in use"
        show second
    fi
    echo "#   open error: $(grep -m1 'unable to open' "$T/second.err" || echo '(none)')"
    echo "#   shoal_last_error(): '$(after second --last_error)'"
    cat >&3 <<EOF || true
SELECT 'still=' || count(*) FROM t;
.quit
EOF
    exec 3>&-
    # It exits at .quit; one that does not within the time limit is killed and fails.
    for ((i = 0; i < TIMEOUT * 10; i++)); do
        kill -0 "$holder" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$holder" 2>/dev/null || true
    rc=0
    wait "$holder" 2>/dev/null || rc=$?
    reaped "$holder"
    echo "$rc" >"$T/holder.rc"
    check_clean holder "the first process was not disturbed by the second"
    check_eq "the first process still reads its database" "$(val holder still)" 4005 holder
    sq third -bail <<EOF
.load "$EXT"
.open "$A1"
SELECT 'count=' || count(*) FROM t;
EOF
    check_eq "once the first process has exited, another one opens the store" \
        "$(val third count)" 4005 third
else
    notok "a first process holds the store open"
    echo 1 >"$T/holder.rc"
    show holder
    exec 3>&-
    kill -9 "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    reaped "$holder"
fi

# ---------------------------------------------------------------- errors
# open_refused NAME URI: a shell that loads the extension and opens URI (after the marker
# "--vfs_after_open", it reads the schema, as an open that worked would let it).
open_refused() {
    sq "$1" <<EOF
.load "$EXT"
.open "$2"
.print --vfs_after_open
.vfsinfo
SELECT 'schema=' || count(*) FROM sqlite_schema;
EOF
}

# expect_refused NAME WHAT [PATTERN]: NAME's run has no shoal database open after its
# marker, and its output a shoal: error (matching PATTERN too, if given).
expect_refused() {
    local name=$1 what=$2 pattern=${3:-shoal:} text
    text=$(cat "$T/$name.err" "$T/$name.out")
    text=${text//file:actor-1?vfs=shoal/}
    if ! opened_shoal "$name" && grep -q 'shoal:' <<<"$text" && grep -Eqi "$pattern" <<<"$text"; then
        ok "$what"
    else
        notok "$what"
        show "$name"
    fi
    echo "#   error: $(grep -m1 -i 'error' "$T/$name.err" || echo '(none)')"
}

sq twostores <<EOF
.load "$EXT"
.open "$A1"
SELECT 'count=' || count(*) FROM t;
.open "$(uri actor-1 "$T/other-store")"
.print --vfs_after_open
.vfsinfo
SELECT 'schema=' || count(*) FROM sqlite_schema;
EOF
check_eq "the process's store read before the second store was asked for" \
    "$(val twostores count)" 4005 twostores
expect_refused twostores "a second store in the same process is a shoal error"

mkdir "$T/cwd"
(cd "$T/cwd" && open_refused nostore "file:actor-1?vfs=shoal")
expect_refused nostore "no store= and no SHOAL_STORE is a clear shoal error" store
if [[ -z $(ls -A "$T/cwd") ]]; then
    ok "an open without a store creates nothing in the working directory"
else
    notok "an open without a store creates nothing in the working directory"
    ls -la "$T/cwd" | diag || true
fi

echo "not a store" >"$T/a-file"
open_refused filestore "$(uri actor-1 "$T/a-file")"
expect_refused filestore "a store path that is a regular file is a clear shoal error"

mkdir "$T/not-a-store"
echo "someone else's file" >"$T/not-a-store/notes.txt"
open_refused junkstore "$(uri actor-1 "$T/not-a-store")"
expect_refused junkstore \
    "a directory that is not a shoal store (it holds other files) is a clear shoal error"
check_eq "nothing is written into a directory that is not a shoal store" \
    "$(ls -A "$T/not-a-store" | tr '\n' ' ')" "notes.txt "

echo "# $passed passed, $failed failed"
[[ $failed == 0 ]]
