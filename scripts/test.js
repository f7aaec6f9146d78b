#!/usr/bin/env node
// Runs the test suite with node:test, after installing what it lacks (scripts/ensure-deps.js).
// Node 20's `node --test` neither expands globs nor finds .ts files, so this lists them: every
// test/**/*.test.ts, or only those under the folders named on the command line
// (e.g. `npm test -- unit wire`).
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const filters = process.argv.slice(2);

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

// First what the tests need: npm packages, native builds, the NBD clients (installed if missing).
const deps = spawnSync(process.execPath, [join(root, 'scripts', 'ensure-deps.js'), 'test'], { cwd: root, stdio: 'inherit' });
if (deps.status !== 0) process.exit(deps.status ?? 1);

const files = walk(join(root, 'test'))
  .map((f) => relative(root, f))
  .filter((f) => filters.length === 0 || filters.some((x) => f.startsWith(`test/${x}`) || f.includes(x)));
if (files.length === 0) {
  console.error(`no test files match ${filters.join(' ')}`);
  process.exit(1);
}
// --test-force-exit: a test file's process exits once its tests are done. Without it, one
// run of test/unit/wan-proxy.test.ts passed every test and then spun at 100% CPU in Node's
// exit-time handle cleanup (node::Environment::CleanupHandles → uv_run, no system calls)
// until killed: a CI run would hang to its time limit on a suite that had passed.
const args = ['--import', 'tsx', '--test', '--test-force-exit', '--test-reporter=spec', ...files];
// Debian's python3 first: nbdsh and the python workloads need its libnbd bindings (a pyenv python lacks them).
const PATH = ['/usr/bin', '/usr/sbin', '/sbin', process.env.PATH ?? ''].join(':');
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit', env: { ...process.env, PATH, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' } });
process.exit(r.status ?? 1);
