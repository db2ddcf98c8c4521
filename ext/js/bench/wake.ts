// The mass-wake benchmark under Bun (bun:sqlite), shoal against one plain file per actor.
//   bun bench/wake.ts populate --dir DIR [--actors 1000] [--rows 300] [--bytes 1024] [--page-size 4096]
//   bun bench/wake.ts wake --dir DIR --variant shoal|files|memory [--budget MB] [--actors N]
//                          [--cache-size N]   (PRAGMA cache_size = N right after each open)
//   bun bench/wake.ts report RESULTS.jsonl
// bench/run-wake drives it: populate once (cached in DIR), then each variant's wake in a
// fresh Bun process, then the table. SHOAL_EXT overrides the extension's path.
import { Database, constants } from 'bun:sqlite';
import { existsSync, mkdirSync, readFileSync, writeFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { body } from '../test/shoal.mjs';

const ext = process.env.SHOAL_EXT
  ? resolve(process.env.SHOAL_EXT)
  : new URL('../../target/release/libshoal.so', import.meta.url).pathname;
const URI_FLAGS = constants.SQLITE_OPEN_READWRITE | constants.SQLITE_OPEN_CREATE | constants.SQLITE_OPEN_URI;

const [cmd, ...rest] = process.argv.slice(2);
const opt: Record<string, string> = {};
const positional: string[] = [];
for (let i = 0; i < rest.length; i++) {
  if (rest[i].startsWith('--')) opt[rest[i].slice(2)] = rest[++i];
  else positional.push(rest[i]);
}
const actorName = (i: number) => `actor-${String(i).padStart(4, '0')}`;
const shoalUri = (store: string, name: string, budget?: string) =>
  `file:${name}?vfs=shoal&store=${encodeURIComponent(store)}${budget ? `&budget_mb=${budget}` : ''}`;

function vmRssKb(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : NaN;
}
function vmHwmKb(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : NaN;
}
// glibc malloc's bytes in use (mallinfo2 through bun:ffi). Bun's own allocations, its
// SQLite's included, do not go through glibc malloc; the extension's (Rust) do, so the
// difference across a wake is what shoal itself keeps per actor. NaN where unavailable.
const mallinfo = (() => {
  try {
    const { dlopen, FFIType, ptr } = require('bun:ffi');
    const libc = dlopen('libc.so.6', { mallinfo2: { args: [FFIType.ptr], returns: FFIType.void } });
    const buf = new BigUint64Array(10);
    return () => {
      libc.symbols.mallinfo2(ptr(buf));
      return Number(buf[7]) + Number(buf[4]); // uordblks (in use) + hblkhd (mmapped blocks)
    };
  } catch {
    return () => NaN;
  }
})();

function settle() {
  Bun.gc(true);
  Bun.gc(true);
}
function dirBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    n += e.isDirectory() ? dirBytes(p) : statSync(p).size;
  }
  return n;
}

const SCHEMA = [
  'CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT NOT NULL, body TEXT NOT NULL)',
  'CREATE INDEX t_k ON t(k)',
];

function fill(db: Database, rows: number, bytes: number, seed: number, pageSize: number) {
  db.run(`PRAGMA page_size = ${pageSize}`); // before the first table: a new database's page size
  db.run('BEGIN');
  for (const s of SCHEMA) db.run(s);
  const ins = db.prepare('INSERT INTO t(id, k, body) VALUES (?, ?, ?)');
  for (let id = 1; id <= rows; id++) ins.run(id, `k${id}`, body(seed * 100003 + id, bytes));
  ins.finalize();
  db.run('COMMIT');
}

function populate() {
  const dir = resolve(opt.dir ?? positional[0]);
  const actors = Number(opt.actors ?? 1000);
  const rows = Number(opt.rows ?? 300);
  const bytes = Number(opt.bytes ?? 1024);
  const pageSize = Number(opt['page-size'] ?? 4096);
  // SQLite's default page size is left out, so populations made before the option match.
  const params = pageSize === 4096 ? { actors, rows, bytes } : { actors, rows, bytes, pageSize };
  const marker = join(dir, 'populated.json');
  if (existsSync(marker) && JSON.stringify(JSON.parse(readFileSync(marker, 'utf8')).params) === JSON.stringify(params)) {
    console.log(`populate: ${dir} already holds ${JSON.stringify(params)}`);
    return;
  }
  const own = join(dir, '.wake-bench'); // written first: a population interrupted here is redone
  if (existsSync(own) && !existsSync(marker)) {
    console.log(`populate: ${dir} holds an interrupted population; starting it again`);
    for (const sub of ['shoal', 'files']) rmSync(join(dir, sub), { recursive: true, force: true });
  } else if (existsSync(dir) && readdirSync(dir).length) {
    throw new Error(`populate: ${dir} is not empty and holds no population with ${JSON.stringify(params)}; remove it or pick another --dir`);
  }
  mkdirSync(join(dir, 'files'), { recursive: true });
  writeFileSync(own, 'a population of bench/wake.ts; populated.json marks it complete\n');
  const store = join(dir, 'shoal');
  new Database(':memory:').loadExtension(ext);
  let t0 = performance.now();
  for (let i = 0; i < actors; i++) {
    const db = new Database(shoalUri(store, actorName(i)), URI_FLAGS);
    fill(db, rows, bytes, i, pageSize);
    db.close();
  }
  const shoalS = (performance.now() - t0) / 1000;
  t0 = performance.now();
  for (let i = 0; i < actors; i++) {
    const db = new Database(join(dir, 'files', `${actorName(i)}.db`), { create: true, readwrite: true });
    fill(db, rows, bytes, i, pageSize);
    db.close();
  }
  const filesS = (performance.now() - t0) / 1000;
  const result = {
    params,
    shoal: { seconds: shoalS, bytes: dirBytes(store) },
    files: { seconds: filesS, bytes: dirBytes(join(dir, 'files')) },
  };
  writeFileSync(marker, JSON.stringify(result, null, 2) + '\n');
  console.log(`populate: ${actors} actors x ${rows} rows x ${bytes} B: shoal ${shoalS.toFixed(1)} s (${(result.shoal.bytes / 1048576).toFixed(0)} MiB on disk), files ${filesS.toFixed(1)} s (${(result.files.bytes / 1048576).toFixed(0)} MiB)`);
}

function pct(sorted: number[], p: number) {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1) + 0.5))];
}

function wake() {
  const dir = resolve(opt.dir ?? positional[0]);
  const variant = opt.variant ?? 'shoal';
  const budget = opt.budget;
  const cacheSize = opt['cache-size'] === undefined ? undefined : Number(opt['cache-size']);
  const label = opt.label ?? (variant === 'shoal' ? `shoal budget_mb=${budget ?? 'default (256)'}` : variant);
  const meta = JSON.parse(readFileSync(join(dir, 'populated.json'), 'utf8'));
  const actors = Number(opt.actors ?? meta.params.actors);
  const rows = meta.params.rows;
  const store = join(dir, 'shoal');
  if (variant === 'shoal') new Database(':memory:').loadExtension(ext);

  const open = (i: number): Database => {
    if (variant === 'shoal') return new Database(shoalUri(store, actorName(i), budget), URI_FLAGS);
    if (variant === 'files') return new Database(join(dir, 'files', `${actorName(i)}.db`), { readwrite: true });
    if (variant === 'memory') return new Database(':memory:');
    throw new Error(`unknown variant ${variant}`);
  };
  const firstSql = variant === 'memory' ? 'SELECT 0 AS c, 0 AS m' : 'SELECT count(*) AS c, max(id) AS m FROM t';
  const lookupSql = variant === 'memory' ? 'SELECT ? AS body' : 'SELECT body FROM t WHERE k = ?';

  // Warm the code paths on a throwaway connection so the first actor does not pay for JIT.
  { const d = new Database(':memory:'); d.prepare('SELECT 1').get(); d.close(); }
  const conns: Database[] = new Array(actors);
  const wakeMs = new Float64Array(actors);
  const lookupMs = new Float64Array(actors);
  settle();
  const before = process.memoryUsage().rss;
  const beforeVm = vmRssKb();
  const beforeMalloc = mallinfo();
  let afterFirst = 0;
  for (let i = 0; i < actors; i++) {
    const t0 = performance.now();
    const db = open(i);
    if (cacheSize !== undefined) db.run(`PRAGMA cache_size = ${cacheSize}`);
    const q = db.prepare(firstSql);
    const r = q.get() as { c: number; m: number };
    const t1 = performance.now();
    q.finalize();
    const l = db.prepare(lookupSql);
    const hit = l.get(`k${1 + (i % rows)}`) as { body: string } | null;
    lookupMs[i] = performance.now() - t1;
    l.finalize();
    wakeMs[i] = t1 - t0;
    if (variant !== 'memory' && (r.c !== rows || r.m !== rows || !hit || hit.body.length !== meta.params.bytes)) {
      throw new Error(`${actorName(i)}: count=${r.c} max=${r.m} lookup=${hit ? hit.body.length : 'none'} (want ${rows} rows)`);
    }
    conns[i] = db;
    if (i === 0) afterFirst = process.memoryUsage().rss;
  }
  settle();
  const after = process.memoryUsage().rss;
  const afterVm = vmRssKb();
  const afterMalloc = mallinfo();
  const stats = variant === 'shoal' ? String(conns[0].query('PRAGMA shoal_stats').values()[0]?.[0] ?? '') : '';
  const cacheSizeNow = conns[0].query('PRAGMA cache_size').values()[0]?.[0];
  const w = Array.from(wakeMs).sort((a, b) => a - b);
  const lk = Array.from(lookupMs).sort((a, b) => a - b);
  const out = {
    label, variant, budget: budget ?? null, actors, bun: Bun.version, sqlite: conns[0].query('SELECT sqlite_version()').values()[0][0],
    rssBeforeMB: before / 1048576, rssAfterMB: after / 1048576, vmRssBeforeMB: beforeVm / 1024, vmRssAfterMB: afterVm / 1024,
    vmHwmMB: vmHwmKb() / 1024,
    perActorKB: (after - before) / actors / 1024,
    firstActorMB: (afterFirst - before) / 1048576,
    glibcHeapPerActorKB: (afterMalloc - beforeMalloc) / actors / 1024,
    marginalKB: actors > 1 ? (after - afterFirst) / (actors - 1) / 1024 : NaN,
    wakeP50ms: pct(w, 0.5), wakeP99ms: pct(w, 0.99), wakeMaxMs: w[w.length - 1], wakeTotalS: w.reduce((a, b) => a + b, 0) / 1000,
    lookupP50ms: pct(lk, 0.5), lookupP99ms: pct(lk, 0.99),
    cacheSize: cacheSizeNow, stats,
  };
  console.log(`RESULT ${JSON.stringify(out)}`);
  for (const c of conns) c.close();
}

function report() {
  const file = opt.file ?? positional[0];
  const results = readFileSync(file, 'utf8').split('\n').filter((l) => l.startsWith('RESULT ')).map((l) => JSON.parse(l.slice(7)));
  const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const head = ['variant', 'RSS before MB', 'RSS after MB', 'per awake actor KB', 'first actor MB', 'marginal KB', 'glibc heap KB', 'wake p50 ms', 'wake p99 ms', 'lookup p50 ms'];
  const rowsOut = results.map((r) => [r.label, f(r.rssBeforeMB), f(r.rssAfterMB), f(r.perActorKB), f(r.firstActorMB, 2), f(r.marginalKB), f(r.glibcHeapPerActorKB), f(r.wakeP50ms, 3), f(r.wakeP99ms, 3), f(r.lookupP50ms, 3)]);
  const widths = head.map((h, i) => Math.max(h.length, ...rowsOut.map((r) => r[i].length)));
  const line = (cells: string[]) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ') + ' |';
  console.log(line(head));
  console.log('|' + widths.map((w, i) => (i === 0 ? ':' + '-'.repeat(w + 1) : '-'.repeat(w + 1) + ':')).join('|') + '|');
  for (const r of rowsOut) console.log(line(r));
  if (results.length) console.log(`\n${results[0].actors} actors awake at once, Bun ${results[0].bun}, SQLite ${results[0].sqlite}; per awake actor = (RSS after - RSS before) / actors; first actor = RSS after the first wake - before (includes opening the store); marginal = (after - after first) / (actors - 1); glibc heap = glibc malloc bytes in use per actor (the extension's Rust allocations: Bun and its SQLite allocate elsewhere); wake = open + first query (count(*), max(id)); lookup = one point query by an indexed key.`);
  for (const r of results) if (r.stats) console.log(`${r.label}: PRAGMA shoal_stats after the wake: ${r.stats}`);
}

if (cmd === 'populate') populate();
else if (cmd === 'wake') wake();
else if (cmd === 'report') report();
else {
  console.error('usage: bun bench/wake.ts populate|wake|report ... (see the header of bench/wake.ts)');
  process.exit(2);
}
