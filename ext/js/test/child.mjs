// A child process for the Node and Bun tests, run by the same runtime as its parent
// (node or bun). Usage:
//   child.mjs [--via default|uri] [--store DIR] [--budget MB] MODE ARGS...
// MODE:
//   hold ACTOR COMMITTED PENDING BYTES  commit COMMITTED rows (if the table is empty), BEGIN,
//                                       insert PENDING rows, print READY, wait to be killed
//   commit-loop ACTOR BATCH BYTES       commit batches of BATCH rows, printing COMMITTED <rows>
//                                       after each, until killed (at most 500 batches)
//   verify ACTOR                        print RESULT {integrity, count, minId, maxId, check}
//   open ACTOR                          try to open and read; print RESULT {ok, ms, error, lastError}
//   plain FILE                          no extension: open a plain SQLite file, print RESULT {count}
import {
  sqliteBinding, loadShoal, openActor, one, scalar, run, insertRows, errorText, lastError,
  SCHEMA, INDEX,
} from './shoal.mjs';

const argv = process.argv.slice(2);
const opts = { via: 'default', store: undefined, budgetMb: undefined };
while (argv[0]?.startsWith('--')) {
  const flag = argv.shift();
  const value = argv.shift();
  if (flag === '--via') opts.via = value;
  else if (flag === '--store') opts.store = value;
  else if (flag === '--budget') opts.budgetMb = Number(value);
  else throw new Error(`unknown flag ${flag}`);
}
const [mode, ...args] = argv;
const binding = await sqliteBinding();
const result = (obj) => process.stdout.write(`RESULT ${JSON.stringify(obj)}\n`);
const waitForever = () => setInterval(() => {}, 1 << 30);

if (mode === 'plain') {
  const db = new binding.Database(args[0], { readonly: true });
  result({ count: scalar(db, 'SELECT count(*) FROM t'), integrity: scalar(db, 'PRAGMA integrity_check') });
  db.close();
  process.exit(0);
}

const boot = loadShoal(binding.Database, opts.via === 'uri' ? 'uri' : 'default');
const open = (name) => openActor(binding, name, opts);

switch (mode) {
  case 'hold': {
    const [actor, committed, pending, bytes] = [args[0], ...args.slice(1).map(Number)];
    const db = open(actor);
    db.exec(SCHEMA);
    db.exec(INDEX);
    if (scalar(db, 'SELECT count(*) FROM t') === 0) {
      db.exec('BEGIN');
      insertRows(db, 1, committed, bytes);
      db.exec('COMMIT');
    }
    db.exec('BEGIN');
    insertRows(db, committed + 1, pending, bytes);
    run(db, 'UPDATE t SET body = ? WHERE id = 1', 'overwritten-in-the-open-transaction');
    process.stdout.write(`READY ${scalar(db, 'SELECT count(*) FROM t')}\n`);
    waitForever();
    break;
  }
  case 'commit-loop': {
    const [actor, batch, bytes] = [args[0], Number(args[1]), Number(args[2])];
    const db = open(actor);
    db.exec(SCHEMA);
    let next = 1;
    for (let i = 0; i < 500; i++) {
      db.exec('BEGIN');
      insertRows(db, next, batch, bytes);
      db.exec('COMMIT');
      next += batch;
      process.stdout.write(`COMMITTED ${next - 1}\n`);
      // Let the parent's kill land anywhere, also between commits.
      await new Promise((r) => setImmediate(r));
    }
    waitForever();
    break;
  }
  case 'verify': {
    const db = open(args[0]);
    const r = one(db, 'SELECT count(*) AS count, min(id) AS minId, max(id) AS maxId FROM t');
    result({
      integrity: scalar(db, 'PRAGMA integrity_check'),
      ...r,
      row1: scalar(db, 'SELECT body FROM t WHERE id = 1')?.slice(0, 40),
      check: scalar(db, 'SELECT shoal_check(?)', args[0]),
    });
    db.close();
    process.exit(0);
    break;
  }
  case 'open': {
    const t0 = performance.now();
    try {
      const db = open(args[0]);
      scalar(db, 'SELECT count(*) FROM sqlite_master');
      result({ ok: true, ms: performance.now() - t0 });
      db.close();
    } catch (e) {
      result({ ok: false, ms: performance.now() - t0, error: errorText(e), lastError: lastError(boot) });
    }
    process.exit(0);
    break;
  }
  default:
    throw new Error(`unknown mode ${mode}`);
}
