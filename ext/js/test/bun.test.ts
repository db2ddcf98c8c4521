// bun test test/bun.test.ts: shoal through bun:sqlite, opened with URI filenames
// (file:NAME?vfs=shoal&store=DIR, SQLITE_OPEN_URI passed in the flags).
import { test, beforeAll, afterAll, setDefaultTimeout } from 'bun:test';
import { defineSuite } from './suite.mjs';

setDefaultTimeout(300_000);
defineSuite({ test, before: beforeAll, after: afterAll, via: 'uri' });
