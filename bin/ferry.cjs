#!/usr/bin/env node
// Entry point of the `ferry` CLI and of the `ferryd` daemon (`ferry serve`).
// CommonJS on purpose: it runs before any asynchronous file I/O, so the libuv
// thread pool size set here is the one the disk data path gets (reads not in the page
// cache, large writes, syncs and the journal run on that pool; the default of 4 threads
// caps queue depth).
// It runs the compiled JavaScript in dist/ (scripts/build.js, run at install) while that was
// built from exactly the sources in src/ (scripts/dist-fresh.cjs); otherwise, in a tree being
// edited, the TypeScript sources through tsx, never stale code.
'use strict';
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16';
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const { distFresh } = require('../scripts/dist-fresh.cjs');

const root = path.join(__dirname, '..');
const main = distFresh()
  ? import(pathToFileURL(path.join(root, 'dist', 'src', 'cli', 'main.js')).href)
  : import('tsx/esm/api').then((api) => {
      api.register();
      return import(pathToFileURL(path.join(root, 'src', 'cli', 'main.ts')).href);
    });
main.catch((err) => {
  console.error(err);
  process.exit(70);
});
