// Bun + bun:sqlite + Drizzle on a shoal actor database.
//   bun examples/drizzle-actor.ts            (a fresh store in a temp directory)
//   SHOAL_STORE=./shoal-data bun examples/drizzle-actor.ts
// SHOAL_EXT overrides the extension's path (default ext/target/release/libshoal.so).
// Exits nonzero when a result is not the expected one.
import { Database, constants } from 'bun:sqlite';
import { drizzle } from 'drizzle-orm/bun-sqlite';
import { integer, sqliteTable, text } from 'drizzle-orm/sqlite-core';
import { asc, eq, sql } from 'drizzle-orm';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ext = process.env.SHOAL_EXT ?? new URL('../../target/release/libshoal.so', import.meta.url).pathname;
const tempStore = process.env.SHOAL_STORE ? null : mkdtempSync(join(tmpdir(), 'shoal-drizzle-'));
const store = process.env.SHOAL_STORE ?? tempStore!;
if (tempStore) process.on('exit', () => rmSync(tempStore, { recursive: true, force: true }));

// --- the snippet quoted in README.md ---
// Load once per process, into a throwaway connection: registers the VFS "shoal".
new Database(':memory:').loadExtension(ext);

// One actor = one database in the shared store. bun:sqlite honours a URI filename
// only when SQLITE_OPEN_URI is among the flags.
const flags = constants.SQLITE_OPEN_READWRITE | constants.SQLITE_OPEN_CREATE | constants.SQLITE_OPEN_URI;
const sqlite = new Database(`file:actor-42?vfs=shoal&store=${encodeURIComponent(store)}`, flags);
const db = drizzle(sqlite);

const notes = sqliteTable('notes', {
  id: integer('id').primaryKey({ autoIncrement: true }),
  body: text('body').notNull(),
  done: integer('done', { mode: 'boolean' }).notNull().default(false),
});
sqlite.run(`CREATE TABLE IF NOT EXISTS notes(
  id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0)`);

db.insert(notes).values([{ body: 'hello' }, { body: 'world' }]).run();
db.transaction((tx) => {                       // one SQLite transaction = one atomic kv batch
  tx.update(notes).set({ done: true }).where(eq(notes.body, 'hello')).run();
  tx.insert(notes).values({ body: 'written in a transaction' }).run();
});
try {
  db.transaction((tx) => {
    tx.insert(notes).values({ body: 'never stored' }).run();
    tx.rollback();                             // throws: the whole transaction is undone
  });
} catch {}
const rows = db.select().from(notes).orderBy(asc(notes.id)).all();
// --- end of the snippet ---

const [{ open }] = db.select({ open: sql<number>`count(*)` }).from(notes).where(eq(notes.done, false)).all();
console.log('notes:', rows);
console.log('open notes:', open);
console.log('shoal_stats:', sqlite.query('PRAGMA shoal_stats').values()[0]?.[0]);

const last3 = rows.slice(-3).map((r) => [r.body, r.done]);
const want = [['hello', true], ['world', false], ['written in a transaction', false]];
const failures: string[] = [];
if (JSON.stringify(last3) !== JSON.stringify(want)) failures.push(`rows: got ${JSON.stringify(last3)}, want ${JSON.stringify(want)}`);
if (rows.some((r) => r.body === 'never stored')) failures.push('the rolled-back insert is visible');
const integrity = sqlite.query('PRAGMA integrity_check').values()[0]?.[0];
if (integrity !== 'ok') failures.push(`integrity_check: ${integrity}`);
const check = sqlite.query("SELECT shoal_check('actor-42')").values()[0]?.[0];
if (check !== 'ok') failures.push(`shoal_check: ${check}`);

// Reopen: the rows are in the store, not in the connection.
sqlite.close();
const reopened = drizzle(new Database(`file:actor-42?vfs=shoal&store=${encodeURIComponent(store)}`, flags));
const again = reopened.select().from(notes).orderBy(asc(notes.id)).all();
if (JSON.stringify(again) !== JSON.stringify(rows)) failures.push(`after reopen: ${JSON.stringify(again)}`);
reopened.$client.close();

if (failures.length) {
  console.error('drizzle-actor: FAILED\n  ' + failures.join('\n  '));
  process.exit(1);
}
console.log(`drizzle-actor: ok (${again.length} notes in actor-42, store ${tempStore ? 'a temp dir' : store})`);
