// Shared by the Node test (better-sqlite3), the Bun test (bun:sqlite) and their child
// processes: where the extension is, how to load it, how to open an actor database.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const JS_DIR = path.resolve(here, '..');
export const REPO_ROOT = path.resolve(JS_DIR, '..', '..');
export const isBun = typeof globalThis.Bun !== 'undefined';
export const runtime = isBun ? 'bun' : 'node';

/** The extension: $SHOAL_EXT, else ext/target/release/libshoal.so under the repo root. */
export const extPath = process.env.SHOAL_EXT
  ? path.resolve(process.env.SHOAL_EXT)
  : path.join(REPO_ROOT, 'ext', 'target', 'release', 'libshoal.so');

/** The runtime's own SQLite binding: bun:sqlite under Bun, better-sqlite3 under Node. */
export async function sqliteBinding() {
  if (isBun) {
    const { Database, constants } = await import('bun:sqlite');
    return { Database, constants };
  }
  const { default: Database } = await import('better-sqlite3');
  return { Database, constants: null };
}

/**
 * Loads the extension into a throwaway :memory: connection and returns that connection
 * (kept open: `SELECT shoal_last_error()` runs on it).
 * entry 'default' -> sqlite3_shoal_default_init (shoal becomes the default VFS: the store
 * comes from SHOAL_STORE); entry 'uri' -> sqlite3_shoal_init (VFS "shoal", picked per open
 * with ?vfs=shoal in a URI filename).
 */
export function loadShoal(Database, entry) {
  const boot = new Database(':memory:');
  if (entry === 'default') boot.loadExtension(extPath, 'sqlite3_shoal_default_init');
  else boot.loadExtension(extPath);
  return boot;
}

/** A URI filename for actor `name` in the shoal VFS (Bun only: better-sqlite3 ignores URIs). */
export function shoalUri(name, { store, budgetMb } = {}) {
  const q = new URLSearchParams({ vfs: 'shoal' });
  if (store) q.set('store', store);
  if (budgetMb) q.set('budget_mb', String(budgetMb));
  return `file:${encodeURIComponent(name)}?${q}`;
}

/**
 * Opens actor `name`. via 'default': plain name, shoal as the default VFS (store from
 * SHOAL_STORE). via 'uri' (Bun): file:NAME?vfs=shoal&store=..., opened with SQLITE_OPEN_URI
 * among the flags (bun:sqlite's only way to honour a URI: its SQLite is built without
 * SQLITE_USE_URI).
 */
export function openActor(binding, name, { via = 'default', store, budgetMb } = {}) {
  const { Database, constants } = binding;
  if (via === 'uri') {
    if (!isBun) throw new Error('URI filenames need bun:sqlite here; better-sqlite3 opens without SQLITE_OPEN_URI');
    const flags = constants.SQLITE_OPEN_READWRITE | constants.SQLITE_OPEN_CREATE | constants.SQLITE_OPEN_URI;
    return new Database(shoalUri(name, { store, budgetMb }), flags);
  }
  return new Database(name);
}

/** One row of `sql` (undefined when none), the same under both bindings. */
export function one(db, sql, ...params) {
  const stmt = db.prepare(sql);
  try {
    return stmt.get(...params) ?? undefined;
  } finally {
    if (typeof stmt.finalize === 'function') stmt.finalize();
  }
}

/** The single value of the single column of `sql`. */
export function scalar(db, sql, ...params) {
  const row = one(db, sql, ...params);
  return row === undefined ? undefined : Object.values(row)[0];
}

export function run(db, sql, ...params) {
  const stmt = db.prepare(sql);
  try {
    return stmt.run(...params);
  } finally {
    if (typeof stmt.finalize === 'function') stmt.finalize();
  }
}

/** A deterministic, poorly compressible text of `bytes` ASCII characters for row `id`. */
export function body(id, bytes = 1024) {
  let x = (id * 2654435761) >>> 0 || 1;
  let s = '';
  while (s.length < bytes) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    s += x.toString(36);
  }
  return s.slice(0, bytes);
}

export const SCHEMA = 'CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k TEXT NOT NULL, body TEXT NOT NULL)';
export const INDEX = 'CREATE INDEX IF NOT EXISTS t_k ON t(k)';

/** Inserts rows with ids [from, from+count) into t, in whatever transaction is open. */
export function insertRows(db, from, count, bytes = 1024) {
  const stmt = db.prepare('INSERT INTO t(id, k, body) VALUES (?, ?, ?)');
  try {
    for (let id = from; id < from + count; id++) stmt.run(id, `k${id}`, body(id, bytes));
  } finally {
    if (typeof stmt.finalize === 'function') stmt.finalize();
  }
}

/** The text of an error, with SQLite's code where the binding gives one. */
export function errorText(e) {
  if (!e) return '';
  const code = e.code ? ` [${e.code}]` : '';
  return `${e.message ?? String(e)}${code}`;
}

/** `SELECT shoal_last_error()` on `db`, or a note saying why it could not run. */
export function lastError(db) {
  try {
    return String(scalar(db, 'SELECT shoal_last_error()') ?? '');
  } catch (e) {
    return `(shoal_last_error() failed: ${errorText(e)})`;
  }
}
