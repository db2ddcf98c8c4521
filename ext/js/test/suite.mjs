// The test suite shared by node.test.mjs (node:test + better-sqlite3) and bun.test.ts
// (bun:test + bun:sqlite). Each runner passes its own test/before/after; `via` says how the
// parent opens actors ('default': sqlite3_shoal_default_init + SHOAL_STORE, the only way for
// better-sqlite3; 'uri': sqlite3_shoal_init + file:NAME?vfs=shoal&store=DIR).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  extPath, runtime, sqliteBinding, loadShoal, openActor, one, scalar, run, insertRows, body,
  SCHEMA, INDEX,
} from './shoal.mjs';

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'child.mjs');
const BUDGET_MB = 16; // memory share for one transaction: max(16 MiB / 16, 1 MiB) = 1 MiB
const BIG_ROWS = 4096; // 4096 rows of 1 KiB: about 4.5 MiB of pages with the index

const log = (...a) => console.log(`# [${runtime}]`, ...a);

/** Starts a child of this runtime. waitLine(re) resolves with the first matching stdout line. */
function spawnChild(args, env) {
  const proc = spawn(process.execPath, [CHILD, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters = [];
  const lines = [];
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (chunk) => {
    out += chunk;
    let nl;
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      lines.push(line);
      for (const w of [...waiters]) if (w.re.test(line)) { waiters.splice(waiters.indexOf(w), 1); w.resolve(line); }
    }
  });
  proc.stderr.on('data', (chunk) => { err += chunk; });
  const exited = new Promise((resolve) => proc.on('close', (code, signal) => resolve({ code, signal })));
  return {
    proc,
    lines,
    stderr: () => err,
    exited,
    waitLine(re, timeoutMs = 60000) {
      const hit = lines.find((l) => re.test(l));
      if (hit) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const w = { re, resolve };
        waiters.push(w);
        const timer = setTimeout(() => reject(new Error(`child ${args.join(' ')}: no line matching ${re} within ${timeoutMs} ms; stdout so far: ${lines.join(' | ')}; stderr: ${err}`)), timeoutMs);
        exited.then(({ code, signal }) => {
          clearTimeout(timer);
          reject(new Error(`child ${args.join(' ')} exited (code ${code}, signal ${signal}) before a line matching ${re}; stdout: ${lines.join(' | ')}; stderr: ${err}`));
        });
        const orig = w.resolve;
        w.resolve = (l) => { clearTimeout(timer); orig(l); };
      });
    },
  };
}

/** Runs a child to its end (killed after timeoutMs) and returns its RESULT object. */
async function runChild(args, env, timeoutMs = 60000) {
  const t0 = Date.now();
  const c = spawnChild(args, env);
  const timer = setTimeout(() => c.proc.kill('SIGKILL'), timeoutMs);
  const { code, signal } = await c.exited;
  clearTimeout(timer);
  const line = c.lines.find((l) => l.startsWith('RESULT '));
  const info = `child ${args.join(' ')}: code ${code}, signal ${signal}, ${Date.now() - t0} ms; stdout: ${c.lines.join(' | ')}; stderr: ${c.stderr().trim()}`;
  assert.equal(signal, null, `${info} (killed: it did not finish within ${timeoutMs} ms)`);
  assert.equal(code, 0, info);
  assert.ok(line, `${info}: no RESULT line`);
  return { ...JSON.parse(line.slice(7)), wallMs: Date.now() - t0 };
}

function childEnv(store, extra = {}) {
  const env = { ...process.env, SHOAL_EXT: extPath, SHOAL_BUDGET_MB: String(BUDGET_MB), ...extra };
  if (store === null) delete env.SHOAL_STORE;
  else env.SHOAL_STORE = store;
  return env;
}

function childArgs(via, store) {
  return via === 'uri' ? ['--via', 'uri', '--store', store, '--budget', String(BUDGET_MB)] : ['--via', 'default'];
}

async function killAndVerify({ via, store, actor, holdArgs, expectCount }) {
  const env = childEnv(store);
  const c = spawnChild([...childArgs(via, store), 'hold', actor, ...holdArgs.map(String)], env);
  const ready = await c.waitLine(/^READY/);
  c.proc.kill('SIGKILL');
  const { signal } = await c.exited;
  assert.equal(signal, 'SIGKILL');
  const v = await runChild([...childArgs(via, store), 'verify', actor], env);
  log(`${actor}: killed at "${ready}" -> after reopen`, JSON.stringify(v));
  assert.equal(v.integrity, 'ok');
  assert.equal(v.check, 'ok');
  assert.equal(v.count, expectCount, 'only the committed rows survive');
  assert.equal(v.maxId, expectCount);
  assert.equal(v.row1, body(1, holdArgs[2]).slice(0, 40), 'the uncommitted UPDATE of row 1 is gone');
}

export function defineSuite({ test, before, after, via }) {
  const dirs = [];
  const tmp = (tag) => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), `shoal-${runtime}-${tag}-`));
    dirs.push(d);
    return d;
  };
  let binding;
  let storeA;
  let holder; // a connection on store A kept open for the whole suite
  const open = (name) => openActor(binding, name, { via, store: storeA, budgetMb: BUDGET_MB });

  before(async () => {
    assert.ok(fs.existsSync(extPath), `the extension is not built: ${extPath} (cargo build --release --manifest-path ext/Cargo.toml, or set SHOAL_EXT)`);
    binding = await sqliteBinding();
    storeA = tmp('store');
    if (via === 'default') {
      // Read by the extension at the first open (better-sqlite3 cannot pass ?store=).
      process.env.SHOAL_STORE = storeA;
      process.env.SHOAL_BUDGET_MB = String(BUDGET_MB);
    }
    loadShoal(binding.Database, via === 'uri' ? 'uri' : 'default');
    holder = open('actor-holder');
    holder.exec('CREATE TABLE IF NOT EXISTS h(x)');
    log(`extension ${path.relative(process.cwd(), extPath)}, store ${storeA}, opened via ${via}`);
  });

  after(() => {
    try { holder?.close(); } catch {}
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  test('create, insert, select; journal mode, durability, stats', () => {
    const db = open('actor-basic');
    db.exec(SCHEMA);
    db.exec(INDEX);
    run(db, 'INSERT INTO t(id, k, body) VALUES (1, ?, ?), (2, ?, ?), (3, ?, ?)', 'a', 'alpha', 'b', 'beta', 'c', 'gamma');
    assert.equal(scalar(db, 'SELECT count(*) FROM t'), 3);
    assert.equal(scalar(db, 'SELECT body FROM t WHERE k = ?', 'b'), 'beta');
    assert.deepEqual(db.prepare('SELECT id FROM t ORDER BY id DESC').all().map((r) => r.id), [3, 2, 1]);
    const file = one(db, 'PRAGMA database_list')?.file;
    assert.equal(String(scalar(db, 'PRAGMA journal_mode')).toLowerCase(), 'memory');
    let wal;
    try { wal = String(scalar(db, 'PRAGMA journal_mode = WAL')).toLowerCase(); } catch (e) { wal = `refused: ${e.message}`; }
    assert.notEqual(wal, 'wal', 'WAL must be refused');
    const durability = String(scalar(db, 'PRAGMA shoal_durability'));
    assert.ok(['full', 'relaxed'].includes(durability), `PRAGMA shoal_durability = ${durability}`);
    const stats = String(scalar(db, 'PRAGMA shoal_stats'));
    assert.match(stats, /\w+=\S+/, `PRAGMA shoal_stats = ${stats}`);
    log(`database_list file=${file}; journal_mode=WAL -> ${wal}; durability=${durability}`);
    log(`shoal_stats: ${stats}`);
    db.close();
    const again = open('actor-basic');
    assert.equal(scalar(again, 'SELECT group_concat(body, \',\') FROM (SELECT body FROM t ORDER BY id)'), 'alpha,beta,gamma');
    assert.equal(scalar(again, 'SELECT shoal_check(?)', 'actor-basic'), 'ok');
    again.close();
  });

  test('ROLLBACK: the rows are gone, also after a reopen', () => {
    const db = open('actor-basic');
    db.exec('BEGIN');
    insertRows(db, 100, 10, 64);
    run(db, 'DELETE FROM t WHERE id = 1');
    assert.equal(scalar(db, 'SELECT count(*) FROM t'), 12);
    db.exec('ROLLBACK');
    assert.equal(scalar(db, 'SELECT count(*) FROM t'), 3);
    assert.equal(scalar(db, 'SELECT body FROM t WHERE id = 1'), 'alpha');
    db.close();
    const again = open('actor-basic');
    assert.equal(scalar(again, 'SELECT count(*) FROM t'), 3);
    assert.equal(scalar(again, 'SELECT count(*) FROM t WHERE id >= 100'), 0);
    again.close();
  });

  test(`a transaction larger than the memory share (${BIG_ROWS} rows of 1 KiB, budget ${BUDGET_MB} MB)`, async () => {
    const db = open('actor-big');
    db.exec(SCHEMA);
    db.exec(INDEX);
    const before = String(scalar(db, 'PRAGMA shoal_stats'));
    const t0 = performance.now();
    db.exec('BEGIN');
    insertRows(db, 1, BIG_ROWS, 1024);
    db.exec('COMMIT');
    const ms = performance.now() - t0;
    const pages = scalar(db, 'PRAGMA page_count');
    const afterStats = String(scalar(db, 'PRAGMA shoal_stats'));
    log(`big commit: ${pages} pages (${(pages * 4096 / 1048576).toFixed(1)} MiB) in ${ms.toFixed(0)} ms`);
    log(`shoal_stats before: ${before}`);
    log(`shoal_stats after:  ${afterStats}`);
    assert.ok(pages * 4096 > 4 * 1048576, 'the transaction is larger than 4 MiB');
    const staged = (st) => Number(/(?:^|\s)staged_commits=(\d+)/.exec(st)?.[1]);
    assert.equal(staged(afterStats) - staged(before), 1, 'the commit was staged in the store (staged_commits + 1)');
    assert.equal(scalar(db, 'SELECT count(*) FROM t'), BIG_ROWS);

    // A large transaction rolled back leaves nothing behind.
    db.exec('BEGIN');
    insertRows(db, BIG_ROWS + 1, BIG_ROWS, 1024);
    run(db, 'DELETE FROM t WHERE id <= 100');
    db.exec('ROLLBACK');
    assert.equal(scalar(db, 'SELECT count(*) FROM t'), BIG_ROWS);
    db.close();

    const again = open('actor-big');
    assert.equal(scalar(again, 'SELECT count(*) FROM t'), BIG_ROWS);
    assert.equal(scalar(again, 'SELECT body FROM t WHERE id = ?', 777), body(777, 1024));
    assert.equal(scalar(again, 'PRAGMA integrity_check'), 'ok');
    assert.equal(scalar(again, 'SELECT shoal_check(?)', 'actor-big'), 'ok');

    // shoal_export writes a plain SQLite file, which a process without the extension reads.
    const out = path.join(tmp('export'), 'actor-big.sqlite');
    scalar(again, 'SELECT shoal_export(?, ?)', 'actor-big', out);
    again.close();
    assert.equal(fs.readFileSync(out).subarray(0, 16).toString('latin1'), 'SQLite format 3\0');
    const plain = await runChild(['plain', out], childEnv(null));
    assert.deepEqual([plain.count, plain.integrity], [BIG_ROWS, 'ok']);
  });

  test('SIGKILL mid-transaction: the reopened actor holds only committed rows', async () => {
    const store = tmp('kill');
    // A small open transaction (held in memory).
    await killAndVerify({ via, store, actor: 'actor-k1', holdArgs: [50, 200, 100], expectCount: 50 });
    // An open transaction larger than the memory share (staged in the store when killed).
    await killAndVerify({ via, store, actor: 'actor-k2', holdArgs: [100, BIG_ROWS, 1024], expectCount: 100 });
    // Killed at a random moment in a loop of staged commits (1.5 MiB each): all or nothing.
    const env = childEnv(store);
    const batch = 1500;
    const c = spawnChild([...childArgs(via, store), 'commit-loop', 'actor-k3', String(batch), '1024'], env);
    const seen = await c.waitLine(/^COMMITTED (4500|[5-9]\d{3}|\d{5,})$/, 120000);
    await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 60)));
    c.proc.kill('SIGKILL');
    await c.exited;
    const last = Math.max(...c.lines.filter((l) => l.startsWith('COMMITTED ')).map((l) => Number(l.split(' ')[1])));
    const v = await runChild([...childArgs(via, store), 'verify', 'actor-k3'], env);
    log(`actor-k3: killed after "${seen}" (last acknowledged ${last}) -> after reopen`, JSON.stringify(v));
    assert.equal(v.integrity, 'ok');
    assert.equal(v.check, 'ok');
    assert.equal(v.count % batch, 0, 'a commit is all or nothing');
    assert.ok(v.count >= last, `every acknowledged commit survives (${v.count} >= ${last})`);
    assert.equal(v.maxId, v.count);
    // The earlier actors are untouched by the later kills.
    const k1 = await runChild([...childArgs(via, store), 'verify', 'actor-k1'], env);
    assert.deepEqual([k1.integrity, k1.count, k1.check], ['ok', 50, 'ok']);
  });

  const intruders = via === 'uri' ? ['uri', 'default'] : ['default'];
  for (const childVia of intruders) {
    test(`a second process on the held store (child opens via ${childVia}) gets a clear error`, async () => {
      const r = await runChild([...childArgs(childVia, storeA), 'open', 'actor-intruder'], childEnv(storeA), 30000);
      const text = `${r.error ?? ''} | shoal_last_error(): ${r.lastError ?? ''}`;
      log(`second process: ok=${r.ok} after ${r.ms?.toFixed?.(0)} ms (child wall ${r.wallMs} ms): ${text}`);
      assert.equal(r.ok, false, 'the second process must not open a store another process holds');
      assert.match(text, /shoal:/);
      assert.match(text, /lock|in use|already open/i);
      assert.ok(r.ms < 10000, `the error came within seconds (${r.ms} ms)`);
      assert.equal(scalar(holder, 'SELECT count(*) FROM h'), 0, 'the holder still works');
    });
  }

  test('no store configured: a clear error', async () => {
    const r = await runChild(['--via', 'default', 'open', 'actor-nowhere'], childEnv(null), 30000);
    const text = `${r.error ?? ''} | shoal_last_error(): ${r.lastError ?? ''}`;
    log(`no store: ok=${r.ok}: ${text}`);
    assert.equal(r.ok, false);
    assert.match(text, /shoal:/);
    assert.match(text, /store/i);
  });
}
