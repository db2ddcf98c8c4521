//! `shoal wake`: the mass wake that made this project necessary, replayed and measured.
//!
//! Population runs once per store and backing, in a child process (`shoal populate`), so
//! the measuring process starts clean: its baseline is a store opened and idle, its
//! spike is every actor woken and as many of them awake at once as the store's awake
//! bound allows (derived from the budget unless `--max-awake` sets it), its post-sleep
//! figure is after all of them were put to sleep. RSS is what the kernel reports (allocator, SQLite, sled, everything), sampled
//! every 10 ms for the peak and the plot.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use shoal::{Config, Durability, MemoryReport, Store};

use crate::{plot, workload};

#[derive(Debug, Args)]
pub struct WakeArgs {
    /// How many actors wake. At most the store's awake bound stay awake at once
    /// (`--max-awake`, by default derived from `--budget-mb`); the least recently used
    /// go back to sleep.
    #[arg(long, default_value_t = 1000)]
    actors: usize,
    /// Worker threads waking them.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Transcript messages (about 1 KB each) per actor when populating.
    #[arg(long, default_value_t = 250)]
    messages: usize,
    /// Other actors whose stored pages are read through the store before the baseline,
    /// so the key-value layer is at its steady-state size (cache full) as in a process
    /// that has been serving actors; 0 measures from a cold store.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Before those, read the pages of the actors about to wake too (first, so the cache
    /// ends up holding the other actors' pages and the wake reads stay cold): reading
    /// the whole store once brings the key-value engine's own memory (its block index
    /// and the cache's bookkeeping, which are not in the budget) to the size it keeps,
    /// so the baseline is what a process that has served these actors holds. `false`
    /// measures from a store that has seen only the warm-up actors.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    warm_woken: bool,
    /// Draw RSS over the run into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct PopulateArgs {
    #[arg(long)]
    actors: usize,
    #[arg(long)]
    messages: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Stop (between two actors) once standard input reaches its end: `wake` holds the
    /// other end of that pipe, so the population ends with the process that started it.
    #[arg(long)]
    until_stdin_closes: bool,
}

pub fn actor_name(i: usize) -> String {
    format!("actor-{i:05}")
}

/// The data a configuration reads: each kv engine its own store, both file backings the
/// same files.
fn data_kind(config: &Config) -> String {
    if config.backing.is_kv() {
        match &config.postgres_url {
            // Each server (and schema) its own data.
            Some(url) if config.kv_engine == shoal::KvEngine::Postgres => format!(
                "kv-postgres-{:016x}",
                xxhash_rust::xxh3::xxh3_64(url.as_bytes())
            ),
            _ => format!("kv-{}", config.kv_engine.as_str()),
        }
    } else {
        "files".to_owned()
    }
}

fn marker(dir: &Path, config: &Config) -> PathBuf {
    dir.join(format!("populated-{}", data_kind(config)))
}

fn populated(dir: &Path, config: &Config, actors: usize, messages: usize) -> bool {
    std::fs::read_to_string(marker(dir, config)).is_ok_and(|s| {
        let mut it = s.split_whitespace().map(str::parse::<usize>);
        matches!((it.next(), it.next()), (Some(Ok(a)), Some(Ok(m))) if a >= actors && m == messages)
    })
}

/// Creates the actors `wake` needs, completing any a killed population left unfinished
/// (each actor is built in one transaction: see [`workload::populate`]), then makes the
/// store durable and writes the marker. So whenever a population is killed, the next one
/// finishes the job, and the marker never vouches for data that is not on disk.
pub fn populate(dir: &Path, mut config: Config, args: &PopulateArgs) -> anyhow::Result<()> {
    config.durability = Durability::Relaxed;
    // Each backing's actors beside the others', so one directory serves all of them.
    let store = Store::open_alongside(dir, config)?;
    let orphaned = Arc::new(AtomicBool::new(false));
    if args.until_stdin_closes {
        watch_parent(Arc::clone(&orphaned));
    }
    let next = AtomicUsize::new(0);
    let bar = progress(args.actors as u64, "populating");
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..args.concurrency.max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        if orphaned.load(Ordering::Relaxed) {
                            bail!("the process that started this population is gone");
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= args.actors {
                            return Ok(());
                        }
                        let name = actor_name(i);
                        let conn = store.open_actor(&name)?;
                        workload::populate(&conn, args.messages, i as u64)
                            .with_context(|| format!("populating {name}"))?;
                        bar.inc(1);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a populating thread panicked"))??;
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    // Relaxed commits are applied but maybe not on disk yet: make them durable before
    // the marker says they are there.
    #[cfg(feature = "kv-vfs")]
    if let Some(vfs) = store.vfs() {
        vfs.kv().commit_durable()?;
    }
    let marker = marker(dir, store.config());
    drop(store);
    std::fs::write(marker, format!("{} {}\n", args.actors, args.messages))?;
    Ok(())
}

/// Sets `orphaned` once standard input ends: when the parent holding the pipe's write
/// end exits, however it exits (a SIGKILL included), the kernel closes that end. Unlike
/// Linux's `PR_SET_PDEATHSIG`, this needs no unsafe code and no signal: it cannot miss a
/// parent that died before the child started watching (the pipe is already closed then),
/// it follows the parent process rather than the thread that spawned the child, and the
/// population stops between two actors and closes the store cleanly.
fn watch_parent(orphaned: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        loop {
            match std::io::stdin().read(&mut sink) {
                Ok(0) => break,
                Err(e) if e.kind() != std::io::ErrorKind::Interrupted => break,
                Ok(_) | Err(_) => {}
            }
        }
        orphaned.store(true, Ordering::Relaxed);
    });
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// RSS sampled every 10 ms on a background thread.
struct Sampler {
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let (Some(rss), Ok(mut s)) = (shoal::memory::rss_kb(), samples.lock()) {
                        s.push((t0.elapsed().as_secs_f64(), rss));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        Sampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Reads every page of the actors in `range` through the store the way the VFS does
/// (one point read per page, not through SQLite), as a process that has served other
/// actors already would have; returns the bytes read.
fn warm_up(store: &Store, range: std::ops::Range<usize>) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for i in range {
        let name = actor_name(i);
        #[cfg(feature = "kv-vfs")]
        if let Some(vfs) = store.vfs() {
            use shoal_kv::{ChunkNo, FileKind};
            let kv = vfs.kv();
            let entry = kv
                .lookup(&name)?
                .with_context(|| format!("warm-up actor {name} is missing"))?;
            let meta = kv
                .read_meta(entry.id, FileKind::Main)?
                .with_context(|| format!("warm-up actor {name} has no database"))?
                .meta;
            let chunks = meta.size.div_ceil(u64::from(meta.chunk_size.max(1)));
            for c in 0..u32::try_from(chunks)? {
                bytes += kv
                    .read_chunk(entry.id, FileKind::Main, ChunkNo(c))?
                    .map_or(0, |b| b.len() as u64);
            }
            continue;
        }
        let file = store
            .actor_file(&name)
            .context("a file backing has actor files")?;
        bytes += std::fs::read(file)
            .with_context(|| format!("reading warm-up actor {name}"))?
            .len() as u64;
    }
    Ok(bytes)
}

struct Phase {
    name: &'static str,
    at: f64,
    report: MemoryReport,
}

pub fn wake(dir: &Path, config: Config, args: &WakeArgs) -> anyhow::Result<()> {
    if args.actors == 0 {
        bail!("--actors must be at least 1");
    }
    let backing = config.backing;
    let total = args.actors + args.warmup;
    if !populated(dir, &config, total, args.messages) {
        let exe = std::env::current_exe().context("cannot find the shoal executable")?;
        let mut child = std::process::Command::new(exe)
            .arg("--store")
            .arg(dir)
            .args(["--backing", backing.as_str(), "--kv"])
            .arg(match (&config.postgres_url, config.kv_engine) {
                (Some(url), shoal::KvEngine::Postgres) => url.as_str(),
                (_, engine) => engine.as_str(),
            })
            .arg("--budget-mb")
            .arg((config.memory_budget >> 20).to_string())
            .arg("--history")
            .arg(config.history_keep.map_or_else(
                || "off".to_owned(),
                |d| humantime::format_duration(d).to_string(),
            ))
            .arg("--history-mb")
            .arg((config.history_max_bytes >> 20).to_string())
            .args(["populate", "--actors", &total.to_string()])
            .args(["--messages", &args.messages.to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .arg("--until-stdin-closes")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("cannot start the populating process")?;
        // The child's standard input stays open while this process lives (`wait` would
        // close it): the child stops when it closes.
        let alive = child.stdin.take();
        let status = child
            .wait()
            .context("cannot wait for the populating process")?;
        drop(alive);
        if !status.success() {
            bail!("populating the store failed ({status})");
        }
    }

    let budget_mb = config.memory_budget >> 20;
    let kv_engine = config.kv_engine;
    // The awake bound is the configuration's (from the budget, or `--max-awake`): a
    // wake that set it to `--actors` would keep every actor's connection open whatever
    // the budget says.
    let store = Store::open_alongside(dir, config.with_max_waking(args.concurrency.max(1)))?;
    let sampler = Sampler::start();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    let cold = store.memory();

    // One pool of worker threads does the warm-up and then the wake, as a server's
    // workers would: memory the allocator hands out per thread is then reused, not
    // stranded in arenas of threads that are gone.
    let workers = args.concurrency.max(1);
    let phase_gate = std::sync::Barrier::new(workers + 1);
    let warm_next = AtomicUsize::new(if args.warm_woken { 0 } else { args.actors });
    let warmed = AtomicUsize::new(0);
    let latencies = Mutex::new(Histogram::<u64>::new(3)?);
    let next = AtomicUsize::new(0);
    let bar = progress(args.actors as u64, "waking");
    let failed = AtomicBool::new(false);
    let mut phases = Vec::new();
    let mut wake_started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let result = (|| -> anyhow::Result<()> {
                        loop {
                            let i = warm_next.fetch_add(1, Ordering::Relaxed);
                            if i >= total || failed.load(Ordering::Relaxed) {
                                break;
                            }
                            let bytes = warm_up(&store, i..i + 1)?;
                            warmed.fetch_add(
                                usize::try_from(bytes).unwrap_or(usize::MAX),
                                Ordering::Relaxed,
                            );
                        }
                        Ok(())
                    })();
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    phase_gate.wait(); // warm-up done
                    phase_gate.wait(); // baseline measured
                    result?;
                    let mut local = Histogram::<u64>::new(3)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= args.actors || failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let name = actor_name(i);
                        let started = Instant::now();
                        let woke = store.actor(&name).and_then(|actor| {
                            workload::open_task_detail(&actor, 1_800_000_000 + i as i64)
                                .map_err(Into::into)
                        });
                        if let Err(e) = woke {
                            failed.store(true, Ordering::Relaxed);
                            return Err(anyhow::Error::from(e).context(format!("waking {name}")));
                        }
                        local.record(
                            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                        )?;
                        bar.inc(1);
                    }
                    latencies
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .add(&local)?;
                    Ok(())
                })
            })
            .collect();
        phase_gate.wait();
        // The baseline gets what the post-sleep figure gets: no actor awake and freed
        // heap handed back (the warm-up's reads churned the caches).
        store.sleep_all();
        std::thread::sleep(Duration::from_millis(100));
        phases.push(Phase {
            name: "baseline",
            at: t0.elapsed().as_secs_f64(),
            report: store.memory(),
        });
        wake_started = Instant::now();
        phase_gate.wait();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        }
        Ok(())
    })?;
    let warmed_bytes = warmed.into_inner() as u64;
    let wake_seconds = wake_started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    phases.push(Phase {
        name: "spike",
        at: t0.elapsed().as_secs_f64(),
        report: store.memory(),
    });
    store.sleep_all();
    std::thread::sleep(Duration::from_millis(100));
    phases.push(Phase {
        name: "post-sleep",
        at: t0.elapsed().as_secs_f64(),
        report: store.memory(),
    });
    let samples = sampler.finish();
    let peak_kb = samples
        .iter()
        .map(|(_, kb)| *kb)
        .chain(phases.iter().map(|p| p.report.rss_kb))
        .max()
        .unwrap_or(0);

    let hist = latencies
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let [baseline, spike, post] = [&phases[0], &phases[1], &phases[2]].map(|p| &p.report);
    // Only the actors still awake hold memory at the spike.
    let per_actor_kb =
        spike.rss_kb.saturating_sub(baseline.rss_kb) as f64 / spike.awake.max(1) as f64;
    if args.json {
        let json = serde_json::json!({
            "backing": backing.as_str(),
            "kv_engine": backing.is_kv().then(|| kv_engine.as_str()),
            "actors": args.actors,
            "concurrency": args.concurrency,
            "messages": args.messages,
            "budget_mb": budget_mb,
            "warmup_actors": args.warmup,
            "warm_woken": args.warm_woken,
            "sqlite_heap": match shoal_vfs::sqlite::heap() {
                shoal::SqliteHeap::OwnArena => "own arena",
                _ => "default",
            },
            "warmup_bytes_read": warmed_bytes,
            "cold_rss_kb": cold.rss_kb,
            "baseline_rss_kb": baseline.rss_kb,
            "spike_rss_kb": spike.rss_kb,
            "peak_rss_kb": peak_kb,
            "post_sleep_rss_kb": post.rss_kb,
            "baseline_rss_anon_kb": baseline.rss_anon_kb,
            "spike_rss_anon_kb": spike.rss_anon_kb,
            "baseline_rss_file_kb": baseline.rss_file_kb,
            "spike_rss_file_kb": spike.rss_file_kb,
            "peak_growth_kb": peak_kb.saturating_sub(baseline.rss_kb),
            "peak_growth_from_cold_kb": peak_kb.saturating_sub(cold.rss_kb),
            "per_actor_kb": (per_actor_kb * 10.0).round() / 10.0,
            "awake_at_spike": spike.awake,
            "max_awake": store.max_awake(),
            "sqlite_heap_baseline_kb": baseline.sqlite_heap / 1024,
            "sqlite_heap_spike_kb": spike.sqlite_heap / 1024,
            "sqlite_heap_post_sleep_kb": post.sqlite_heap / 1024,
            "kv_cache_capacity_kb": spike.kv_cache_capacity / 1024,
            "wake_p50_us": hist.value_at_quantile(0.5),
            "wake_p99_us": hist.value_at_quantile(0.99),
            "wake_max_us": hist.max(),
            "wake_seconds": (wake_seconds * 1000.0).round() / 1000.0,
        });
        println!("{json}");
    } else {
        let mb = |kb: u64| kb as f64 / 1024.0;
        println!(
            "shoal wake: backing {}{}, {} actors, concurrency {}, {} messages each, budget {budget_mb} MiB, at most {} awake",
            backing.as_str(),
            if backing.is_kv() {
                format!(" ({})", kv_engine.as_str())
            } else {
                String::new()
            },
            args.actors,
            args.concurrency,
            args.messages,
            store.max_awake()
        );
        println!(
            "cold store: RSS {:.1} MB; warm-up read {:.1} MB of pages through the store ({} other actors{})",
            mb(cold.rss_kb),
            warmed_bytes as f64 / (1 << 20) as f64,
            args.warmup,
            if args.warm_woken {
                " and the woken ones"
            } else {
                ""
            }
        );
        println!(
            "{:<11} {:>6} {:>12} {:>12} {:>10} {:>10} {:>10} {:>9} {:>10} {:>10}",
            "phase",
            "awake",
            "sqlite heap",
            "kv cache",
            "RSS",
            "(anon",
            "file)",
            "KB/actor",
            "wake p50",
            "wake p99"
        );
        for p in &phases {
            let r = &p.report;
            let (per, p50, p99) = if p.name == "spike" {
                (
                    format!("{per_actor_kb:.1}"),
                    format!("{} us", hist.value_at_quantile(0.5)),
                    format!("{} us", hist.value_at_quantile(0.99)),
                )
            } else {
                ("-".into(), "-".into(), "-".into())
            };
            println!(
                "{:<11} {:>6} {:>9.1} MB {:>9.1} MB {:>7.1} MB {:>7.1} MB {:>7.1} MB {:>9} {:>10} {:>10}",
                p.name,
                r.awake,
                mb(u64::try_from(r.sqlite_heap).unwrap_or(0) / 1024),
                mb(r.kv_cache_capacity / 1024),
                mb(r.rss_kb),
                mb(r.rss_anon_kb),
                mb(r.rss_file_kb),
                per,
                p50,
                p99
            );
        }
        println!(
            "peak RSS {:.1} MB ({:+.1} MB over baseline, {:+.1} MB over the cold store); all {} actors woke in {wake_seconds:.2} s",
            mb(peak_kb),
            mb(peak_kb.saturating_sub(baseline.rss_kb)),
            mb(peak_kb.saturating_sub(cold.rss_kb)),
            args.actors
        );
    }
    if let Some(path) = &args.plot {
        let marks: Vec<(f64, &str)> = phases.iter().map(|p| (p.at, p.name)).collect();
        plot::rss(
            path,
            &samples,
            &marks,
            &format!(
                "shoal wake: {} actors, backing {}",
                args.actors,
                backing.as_str()
            ),
        )
        .with_context(|| format!("cannot draw {}", path.display()))?;
    }
    Ok(())
}
