//! The `shoal` command: the mass-wake replay (`shoal wake`) and actor housekeeping.
//!
//! Errors print one line on stderr (`shoal: <what went wrong>`) and exit with status 1;
//! a command given bad input writes nothing.

mod bench;
mod plot;
mod wake;
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use shoal::rusqlite::{self, fallible_iterator::FallibleIterator as _};
use shoal::{Backing, Config, KvEngine, Store, StoreLayout};

/// Many SQLite databases, one per actor, in one shared key-value store.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    /// The store directory.
    #[arg(long, global = true, default_value = "./shoal-data")]
    store: PathBuf,
    /// Where actors live: kv (the shared store), files (one SQLite file per actor with
    /// SQLite's defaults), files-tuned (one file per actor with shoal's pragmas).
    #[arg(long, global = true, default_value = Backing::DEFAULT.as_str())]
    backing: Backing,
    /// The key-value store under the kv backing: fjall (bounded memory), sled, or a
    /// PostgreSQL server that several hosts share: its URL (postgresql://user@host/db),
    /// or `postgres` for the URL in SHOAL_PG_URL. With PostgreSQL the store directory
    /// keeps only this host's lock.
    #[arg(long, global = true, default_value = "fjall", value_parser = parse_kv)]
    kv: KvChoice,
    /// The process memory budget in MiB (kv cache, SQLite heap limit, awake actors).
    #[arg(long, global = true, default_value_t = 256)]
    budget_mb: u64,
    /// Most actors kept awake at once; by default derived from the budget (a quarter of
    /// it at 32 KiB each). A larger bound lets awake actors outgrow the budget.
    #[arg(long, global = true)]
    max_awake: Option<usize>,
    /// How long each actor's history is kept (with the kv backing): a duration such as
    /// 7d or 12h, or `off`.
    #[arg(long, global = true, default_value = "7d", value_parser = parse_keep)]
    history: Keep,
    /// The most MiB of history one actor keeps (its oldest commits go first).
    #[arg(long, global = true, default_value_t = 64)]
    history_mb: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay a mass wake: populate actors (once), wake them all at once, put them to
    /// sleep, and report memory and wake latency.
    Wake(wake::WakeArgs),
    /// Benchmarks against the peers, each a ratio against a baseline in the same run.
    Bench(bench::BenchArgs),
    /// Populate actors for `wake` (run by `wake` in a child process).
    #[command(hide = true)]
    Populate(wake::PopulateArgs),
    /// Commit to one actor in a loop, printing `ok N` after each (the host that `bench
    /// takeover` kills).
    #[command(hide = true)]
    Hold(bench::HoldArgs),
    /// List actors.
    Ls,
    /// Store-wide statistics, or one actor's (its I/O counters, `*_since_open`, count
    /// only what this command did since it opened the store).
    Stats {
        /// An actor name.
        name: Option<String>,
    },
    /// Write an actor to a standard SQLite file.
    Export {
        /// The actor.
        name: String,
        /// The file to create (must not exist).
        file: PathBuf,
    },
    /// Create an actor from a SQLite file.
    Import {
        /// The SQLite database file.
        file: PathBuf,
        /// The new actor's name (must not exist).
        name: String,
    },
    /// Delete an actor.
    Rm {
        /// The actor.
        name: String,
    },
    /// Check an actor (or every actor): integrity_check and a checksum audit. One line
    /// per actor; fails at the end, naming every actor that failed.
    Check {
        /// An actor name.
        name: Option<String>,
    },
    /// An actor's commits, oldest first, one per line, tab-separated: bookmark, time
    /// (UTC), size in bytes, restore points pinned to it.
    History {
        /// The actor.
        name: String,
    },
    /// Restore an actor in place to an earlier commit (itself a new commit, which a
    /// restore to the commit before it undoes). Prints the new commit's bookmark.
    Restore {
        /// The actor.
        name: String,
        /// A bookmark (from `shoal history`), a time (RFC 3339, e.g.
        /// 2026-12-03T18:00:00Z: the last commit at or before it), or a restore point's
        /// label.
        #[arg(long)]
        to: String,
    },
    /// Fork an actor into a new one, copying no page. Prints the bookmark forked.
    Fork {
        /// The actor forked.
        src: String,
        /// The new actor (must not exist).
        new: String,
        /// The point to fork at, as `restore --to` takes it; the current state when
        /// absent.
        #[arg(long)]
        at: Option<String>,
    },
    /// Pin a restore point: a label for a commit, kept whatever the retention.
    Pin {
        /// The actor.
        name: String,
        /// The label: letters, digits and -_.: (up to 128 bytes).
        label: String,
        /// The commit, as `restore --to` takes it; the current one when absent.
        #[arg(long)]
        at: Option<String>,
    },
    /// Remove a restore point.
    Unpin {
        /// The actor.
        name: String,
        /// The label.
        label: String,
    },
    /// Collect every actor's history past its retention now, and print what went.
    Gc,
    /// Run SQL statements on an actor and print result rows, tab-separated.
    Sql {
        /// Create the actor (and the store) if missing; if a statement then fails, the
        /// new actor is removed again.
        #[arg(long)]
        create: bool,
        /// The actor (must exist, unless --create).
        name: String,
        /// One or more SQL statements; read from standard input when none are given.
        statements: Option<String>,
    },
}

fn main() -> ExitCode {
    // Before any thread starts: glibc's malloc arenas capped at two per core (glibc's own
    // bound is eight), so that many writer threads share what they free instead of each
    // arena keeping its own (see `shoal::cap_malloc_arenas`; one per core cost relaxed
    // commits a fifth of their rate). A cap the environment sets is left as is.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        shoal::cap_malloc_arenas(2 * cores);
    }
    // Before anything uses SQLite: its heap on an arena of its own, so that memory freed
    // by sleeping actors goes back to the kernel. main runs on the process's only thread,
    // so the call is not refused where it can be made (Linux); elsewhere SQLite keeps its
    // heap, which costs memory, not correctness, so the command goes on.
    if let Err(refused) = shoal::configure_sqlite_heap()
        && cfg!(target_os = "linux")
    {
        eprintln!("shoal: {refused}");
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes on one line, each said once: shoal's errors name their cause in
/// their own message and also chain it as their source.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// A point in an actor's history as the command line names it: a bookmark, an RFC 3339
/// time, or a restore point's label.
#[cfg(feature = "kv-vfs")]
fn point(text: &str) -> shoal::PointInTime {
    if let Some(b) = shoal::Bookmark::parse(text) {
        return shoal::PointInTime::Bookmark(b);
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(t) => shoal::PointInTime::Time(t),
        Err(_) => shoal::PointInTime::Label(text.to_owned()),
    }
}

/// `history`, `restore`, `fork`, `pin`, `unpin` and `gc`.
#[cfg(feature = "kv-vfs")]
fn history_command(cli: &Cli, out: &mut impl Write) -> anyhow::Result<()> {
    match &cli.command {
        Command::History { name } => {
            for c in open_read_only(cli)?.actor_history(name)? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    c.bookmark,
                    humantime::format_rfc3339_millis(c.time),
                    c.size,
                    c.labels.join(",")
                )?;
            }
        }
        Command::Restore { name, to } => {
            let b = open_existing(cli)?.restore_actor(name, &point(to))?;
            writeln!(out, "{b}")?;
        }
        Command::Fork { src, new, at } => {
            let at = at.as_deref().map(point);
            let b = open_existing(cli)?.fork_actor(src, at.as_ref(), new)?;
            writeln!(out, "{b}")?;
        }
        Command::Pin { name, label, at } => {
            let at = at.as_deref().map(point);
            let b = open_existing(cli)?.pin_actor(name, label, at.as_ref())?;
            writeln!(out, "{b}")?;
        }
        Command::Unpin { name, label } => open_existing(cli)?.unpin_actor(name, label)?,
        Command::Gc => {
            let c = open_existing(cli)?.collect_history()?;
            writeln!(
                out,
                "collected_commits\t{}\ncollected_pages\t{}\ncollected_bytes\t{}",
                c.commits, c.pages, c.bytes
            )?;
        }
        _ => unreachable!("not a history command"),
    }
    Ok(())
}

#[cfg(not(feature = "kv-vfs"))]
fn history_command(_cli: &Cli, _out: &mut impl Write) -> anyhow::Result<()> {
    bail!("history, restore and fork need the kv backing, which this shoal was built without")
}

/// What `--history` names: how long history is kept, or `None` for off.
#[derive(Debug, Clone, Copy)]
struct Keep(Option<std::time::Duration>);

fn parse_keep(s: &str) -> Result<Keep, String> {
    if s == "off" {
        return Ok(Keep(None));
    }
    humantime::parse_duration(s)
        .map(|d| Keep(Some(d)))
        .map_err(|e| format!("{e} (a duration such as 7d or 12h, or off)"))
}

/// What `--kv` names: an embedded engine, or a PostgreSQL server's URL.
#[derive(Debug, Clone)]
enum KvChoice {
    Embedded(KvEngine),
    Postgres(String),
}

fn parse_kv(s: &str) -> Result<KvChoice, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return Ok(KvChoice::Postgres(s.to_owned()));
    }
    match s.parse::<KvEngine>().map_err(|e| e.to_string())? {
        KvEngine::Postgres => match std::env::var("SHOAL_PG_URL") {
            Ok(url) if !url.is_empty() => Ok(KvChoice::Postgres(url)),
            _ => Err("--kv postgres needs SHOAL_PG_URL set to the server's URL \
                      (or give the URL itself: --kv postgresql://user@host/db)"
                .to_owned()),
        },
        engine => Ok(KvChoice::Embedded(engine)),
    }
}

fn config(cli: &Cli) -> Config {
    let config = Config::default()
        .with_backing(cli.backing)
        .with_memory_budget(cli.budget_mb << 20)
        .with_max_awake(cli.max_awake)
        .with_history(cli.history.0, cli.history_mb << 20);
    match &cli.kv {
        KvChoice::Embedded(engine) => config.with_kv_engine(*engine),
        KvChoice::Postgres(url) => config.with_postgres(url.clone()),
    }
}

fn open_existing(cli: &Cli) -> anyhow::Result<Store> {
    opened(Store::open_existing(&cli.store, config(cli)))
}

/// For the commands that only read: works on a store without write permission (with
/// the files backing; the kv engines need write access and say so).
fn open_read_only(cli: &Cli) -> anyhow::Result<Store> {
    opened(Store::open_read_only(&cli.store, config(cli)))
}

/// An open's error, in the command line's words where it names a backing.
fn opened(result: shoal::Result<Store>) -> anyhow::Result<Store> {
    result.map_err(|e| match e {
        shoal::Error::WrongLayout { path, holds, .. } => anyhow!(
            "the store at {} holds its actors in {holds}; open it with {}",
            path.display(),
            match holds {
                StoreLayout::Kv(engine) => format!("--backing kv --kv {}", engine.as_str()),
                StoreLayout::Files => "--backing files (or files-tuned)".to_owned(),
                _ => "that backing".to_owned(),
            }
        ),
        other => other.into(),
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Wake(args) => wake::wake(&cli.store, config(&cli), args)?,
        Command::Bench(args) => {
            if let KvChoice::Postgres(url) = &cli.kv {
                let _ = bench::POSTGRES.set(url.clone());
            }
            bench::bench(&cli.store, args)?
        }
        Command::Populate(args) => wake::populate(&cli.store, config(&cli), args)?,
        Command::Hold(args) => bench::hold(&cli.store, config(&cli), args)?,
        Command::Ls => {
            for name in open_read_only(&cli)?.list_actors()? {
                writeln!(out, "{name}")?;
            }
        }
        Command::Stats { name: Some(name) } => {
            let store = open_read_only(&cli)?;
            let s = store.actor_stats(name)?;
            writeln!(out, "actor\t{}\nsize_bytes\t{}", s.name, s.size)?;
            // The VFS counts in memory, from when this process opened the store: the
            // names say so, or a fresh command's zeros would read as an idle actor.
            #[cfg(feature = "kv-vfs")]
            if store.vfs().is_some() {
                let h = store.actor_history_usage(name)?;
                writeln!(
                    out,
                    "history_commits\t{}\nhistory_pages\t{}\nhistory_bytes\t{}\nrestore_points\t{}\nforks_sharing_pages\t{}",
                    h.commits, h.pages, h.bytes, h.pins, h.forks
                )?;
            }
            if let Some(io) = s.io {
                for field in io.to_string().split(' ') {
                    if let Some((counter, value)) = field.split_once('=') {
                        writeln!(out, "{counter}_since_open\t{value}")?;
                    }
                }
            }
        }
        Command::Stats { name: None } => {
            let store = open_read_only(&cli)?;
            let actors = store.list_actors()?;
            writeln!(
                out,
                "backing\t{}\nactors\t{}",
                store.backing().as_str(),
                actors.len()
            )?;
            #[cfg(feature = "kv-vfs")]
            if let Some(vfs) = store.vfs() {
                let kv = vfs.kv().stats()?;
                writeln!(
                    out,
                    "kv_keys\t{}\nkv_logical_bytes\t{}\nkv_disk_bytes\t{}\nkv_cache_capacity\t{}",
                    kv.keys, kv.logical_bytes, kv.disk_bytes, kv.cache_capacity
                )?;
                // Current pages and history apart, summed over the actors.
                let (mut pages, mut history) = (0u64, 0u64);
                for name in &actors {
                    pages += store.actor_stats(name)?.size;
                    history += store.actor_history_usage(name)?.bytes;
                }
                writeln!(out, "actor_bytes\t{pages}\nhistory_bytes\t{history}")?;
            }
        }
        Command::Export { name, file } => {
            open_read_only(&cli)?.export_actor(name, file)?;
        }
        Command::Import { file, name } => {
            shoal::validate_actor_name(name)?;
            std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
            opened(Store::open(&cli.store, config(&cli)))?.import_actor(name, file)?;
        }
        Command::Rm { name } => open_existing(&cli)?.delete_actor(name)?,
        Command::Check { name } => {
            let store = open_read_only(&cli)?;
            let names = match name {
                Some(n) if store.actor_exists(n)? => vec![n.clone()],
                Some(n) => return Err(shoal::Error::NoSuchActor(n.clone()).into()),
                None => store.list_actors()?,
            };
            // Every actor is checked: one that cannot even be opened or read is that
            // actor's failure, reported beside the others, not the end of the check.
            let mut failed = Vec::new();
            for n in &names {
                match store.check_actor(n) {
                    Ok(report) if report.is_ok() => {
                        #[cfg(feature = "kv-vfs")]
                        let audited = report
                            .audit
                            .map(|a| format!(", {} chunks verified", a.chunks))
                            .unwrap_or_default();
                        #[cfg(not(feature = "kv-vfs"))]
                        let audited = "";
                        writeln!(out, "{n}: ok{audited}")?;
                    }
                    Ok(report) => {
                        // One line per actor: integrity_check's first line holds a
                        // newline of its own ("*** in database main ***\n...").
                        #[cfg_attr(not(feature = "kv-vfs"), allow(unused_mut))]
                        let mut problems = report
                            .integrity
                            .iter()
                            .filter(|l| *l != "ok")
                            .cloned()
                            .collect::<Vec<_>>();
                        #[cfg(feature = "kv-vfs")]
                        problems.extend(report.audit.into_iter().flat_map(|a| a.problems));
                        let problems = problems
                            .into_iter()
                            .map(|p| p.replace('\n', " "))
                            .collect::<Vec<_>>();
                        writeln!(out, "{n}: {}", problems.join("; "))?;
                        failed.push(n.as_str());
                    }
                    Err(e) => {
                        // SQLite's error says little ("disk I/O error"); the audit of the
                        // stored records, which needs no SQLite, says which one is bad.
                        let found = std::iter::once(format!("cannot be checked: {e}"))
                            .chain(audit_problems(&store, n))
                            .collect::<Vec<_>>();
                        writeln!(out, "{n}: {}", found.join("; ").replace('\n', " "))?;
                        failed.push(n.as_str());
                    }
                }
            }
            if !failed.is_empty() {
                bail!(
                    "{} of {} actors failed the check: {}",
                    failed.len(),
                    names.len(),
                    failed.join(", ")
                );
            }
        }
        Command::History { .. }
        | Command::Restore { .. }
        | Command::Fork { .. }
        | Command::Pin { .. }
        | Command::Unpin { .. }
        | Command::Gc => history_command(&cli, &mut out)?,
        Command::Sql {
            create,
            name,
            statements,
        } => {
            // Everything that can refuse the command comes before anything is created.
            shoal::validate_actor_name(name)?;
            let store = if *create {
                opened(Store::open(&cli.store, config(&cli)))?
            } else {
                match Store::open_existing(&cli.store, config(&cli)) {
                    Err(e @ shoal::Error::NoStore { .. }) => {
                        bail!("{e}; `shoal sql --create {name}` creates it and the actor")
                    }
                    store => opened(store)?,
                }
            };
            let existed = store.actor_exists(name)?;
            if !existed && !*create {
                bail!(
                    "{}; `shoal sql --create {name}` creates it",
                    shoal::Error::NoSuchActor(name.clone())
                );
            }
            let statements = match statements {
                Some(s) => s.clone(),
                None => std::io::read_to_string(std::io::stdin())
                    .context("cannot read SQL statements from standard input")?,
            };
            let ran = run_sql(&store, name, *create, &statements, &mut out);
            if ran.is_err() && !existed && store.actor_exists(name).unwrap_or(false) {
                // The command created the actor for these statements; they failed.
                let _ = store.delete_actor(name);
            }
            ran?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `statements` on actor `name`, writing each result row to `out`.
fn run_sql(
    store: &Store,
    name: &str,
    create: bool,
    statements: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    // Without --create the actor is never created, even if it is deleted meanwhile.
    let actor = if create {
        store.actor(name)?
    } else {
        store.existing_actor(name)?
    };
    let mut batch = rusqlite::Batch::new(&actor, statements);
    while let Some(mut stmt) = batch.next()? {
        let columns = stmt.column_count();
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next()? {
            let cells = (0..columns)
                .map(|i| row.get_ref(i).map(render))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            writeln!(out, "{}", cells.join("\t"))?;
        }
    }
    Ok(())
}

/// What the checksum audit of actor `name`'s stored records finds (nothing on a file
/// backing, or when the audit itself fails).
#[cfg_attr(not(feature = "kv-vfs"), allow(unused_variables))]
fn audit_problems(store: &Store, name: &str) -> Vec<String> {
    #[cfg(feature = "kv-vfs")]
    if let Some(Ok(Some(audit))) = store.vfs().map(|v| v.audit(name)) {
        return audit.problems;
    }
    Vec::new()
}

fn render(v: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!(
            "x'{}'",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        ),
    }
}
