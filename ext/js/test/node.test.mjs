// node --test test/node.test.mjs: shoal through better-sqlite3 (default-VFS entry point +
// SHOAL_STORE, since better-sqlite3 opens without SQLITE_OPEN_URI).
import { test, before, after } from 'node:test';
import { defineSuite } from './suite.mjs';

defineSuite({ test, before, after, via: 'default' });
