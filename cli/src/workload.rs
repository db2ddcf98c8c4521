//! The agent-workspace workload `shoal wake` replays: each actor is one task with its
//! sessions, transcript messages of about 1 KB, and git state (a few hundred KB), and
//! waking it runs what opening the task's detail view runs.

use shoal::rusqlite::{self, Connection, params};

pub const SCHEMA: &str = "
    CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT NOT NULL, status TEXT NOT NULL,
                       created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, detail TEXT);
    CREATE TABLE sessions(id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL REFERENCES tasks(id),
                          started_at INTEGER NOT NULL, model TEXT NOT NULL);
    CREATE TABLE messages(id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id),
                          role TEXT NOT NULL, created_at INTEGER NOT NULL, body TEXT NOT NULL);
    CREATE INDEX messages_by_session ON messages(session_id, created_at);
    CREATE INDEX messages_by_time ON messages(created_at);
    CREATE TABLE git_state(task_id INTEGER PRIMARY KEY REFERENCES tasks(id), branch TEXT NOT NULL,
                           head TEXT NOT NULL, dirty INTEGER NOT NULL, diff_stat TEXT);
";

const SESSIONS: i64 = 5;
const WORDS: [&str; 24] = [
    "the", "build", "failed", "because", "a", "test", "expects", "stable", "ordering", "let", "me",
    "check", "diff", "patch", "applied", "cleanly", "rerun", "green", "review", "comment", "fixed",
    "merge", "branch", "now",
];

fn text(rng: &mut fastrand::Rng, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        s.push_str(WORDS[rng.usize(..WORDS.len())]);
        s.push(' ');
    }
    s
}

/// The tables [`SCHEMA`] creates, dropped (with their indexes) before an actor is built
/// again.
const DROP_SCHEMA: &str = "
    DROP TABLE IF EXISTS git_state; DROP TABLE IF EXISTS messages;
    DROP TABLE IF EXISTS sessions; DROP TABLE IF EXISTS tasks;
";

/// Whether the actor holds everything [`populate`] writes for `messages` messages.
fn populated(conn: &Connection, messages: usize) -> rusqlite::Result<bool> {
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'
            AND name IN ('tasks', 'sessions', 'messages', 'git_state')",
        [],
        |r| r.get(0),
    )?;
    if tables != 4 {
        return Ok(false);
    }
    conn.query_row(
        "SELECT (SELECT count(*) FROM tasks) = 1 AND (SELECT count(*) FROM sessions) = ?1
            AND (SELECT count(*) FROM messages) = ?2 AND (SELECT count(*) FROM git_state) = 1",
        params![SESSIONS, i64::try_from(messages).unwrap_or(i64::MAX)],
        |r| r.get(0),
    )
}

/// Creates one actor's schema and data (one task, its sessions, `messages` messages) in
/// ONE transaction, so a population killed at any instant leaves each actor either
/// complete or without a schema. An actor that holds anything else (a different message
/// count, or a schema without its rows, as populations made the schema in a transaction
/// of its own) is built again from scratch. Returns whether it wrote anything.
pub fn populate(conn: &Connection, messages: usize, seed: u64) -> rusqlite::Result<bool> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let tx = conn.unchecked_transaction()?;
    if populated(&tx, messages)? {
        return Ok(false);
    }
    tx.execute_batch(DROP_SCHEMA)?;
    tx.execute_batch(SCHEMA)?;
    tx.execute(
        "INSERT INTO tasks VALUES (1, ?1, 'open', 1700000000, 1700000000, ?2)",
        params![text(&mut rng, 40), text(&mut rng, 400)],
    )?;
    for s in 1..=SESSIONS {
        tx.execute(
            "INSERT INTO sessions VALUES (?1, 1, ?2, 'model-x')",
            params![s, 1700000000 + s],
        )?;
    }
    {
        let mut insert = tx.prepare(
            "INSERT INTO messages(session_id, role, created_at, body) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for i in 0..messages {
            let i = i64::try_from(i).unwrap_or(i64::MAX);
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            insert.execute(params![
                i % SESSIONS + 1,
                role,
                1700000000 + i * 7,
                text(&mut rng, 1000)
            ])?;
        }
    }
    tx.execute(
        "INSERT INTO git_state VALUES (1, 'agent/task-1', ?1, 1, ?2)",
        params![format!("{:040x}", rng.u128(..)), text(&mut rng, 200)],
    )?;
    tx.commit()?;
    Ok(true)
}

/// What opening a task's detail view runs: the task row, the latest 50 messages, the
/// message count per session, the git state, and one update. Returns bytes read.
pub fn open_task_detail(conn: &Connection, now: i64) -> rusqlite::Result<usize> {
    let mut bytes = 0;
    let (title, status): (String, String) =
        conn.query_row("SELECT title, status FROM tasks WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    bytes += title.len() + status.len();
    {
        let mut latest = conn.prepare(
            "SELECT id, session_id, role, body FROM messages ORDER BY created_at DESC LIMIT 50",
        )?;
        let mut rows = latest.query([])?;
        while let Some(row) = rows.next()? {
            bytes += row.get_ref(3)?.as_str()?.len();
        }
    }
    {
        let mut counts =
            conn.prepare("SELECT session_id, count(*) FROM messages GROUP BY session_id")?;
        let mut rows = counts.query([])?;
        while let Some(row) = rows.next()? {
            bytes += usize::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
        }
    }
    let head: String = conn.query_row("SELECT head FROM git_state WHERE task_id = 1", [], |r| {
        r.get(0)
    })?;
    bytes += head.len();
    conn.execute("UPDATE tasks SET updated_at = ?1 WHERE id = 1", [now])?;
    Ok(bytes)
}
