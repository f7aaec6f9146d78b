#!/usr/bin/env node
// What `npm start` and `npm test` run first: checks that what they need is installed and,
// if anything is missing, runs scripts/install-deps.sh (Debian packages, `npm ci`, the native
// builds) once. Quick when everything is there: a few file checks and `require`s, no network.
//
//   node scripts/ensure-deps.js server   the daemon's npm packages and native addon
//   node scripts/ensure-deps.js test     the same, plus the NBD clients and tools the tests drive
//
// Last, the compiled JavaScript in dist/ is rebuilt if the sources changed (scripts/build.js).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { spawnSync } from 'node:child_process';
import { delimiter, join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const require = createRequire(join(root, 'package.json'));
const want = process.argv[2] ?? 'server';
if (!['server', 'test'].includes(want)) {
  console.error(`usage: ensure-deps.js server|test (got '${want}')`);
  process.exit(2);
}

/** Commands the test suite runs (Debian packages installed by install-deps.sh; chromium: the console's browser tests). */
const testTools = ['qemu-io', 'qemu-img', 'qemu-nbd', 'nbdinfo', 'nbdcopy', 'nbdsh', 'nbdkit', 'nbdfuse', 'fio', 'mkfs.ext4', 'losetup', 'openssl', 'ip', 'nft', 'chromium'];
const PATH = ['/usr/bin', '/usr/sbin', '/sbin', process.env.PATH ?? ''].join(delimiter);

function missing() {
  const out = [];
  const pkg = require('./package.json');
  for (const name of Object.keys({ ...pkg.dependencies, ...(want === 'test' ? pkg.devDependencies : {}) })) {
    if (!existsSync(join(root, 'node_modules', name, 'package.json'))) out.push(`npm package ${name}`);
  }
  try {
    const addon = require('./build/Release/ferry_io.node');
    // An addon built before a function existed lacks it: rebuilt like a missing one.
    for (const fn of ['space', 'seek', 'willNeed', 'readCached', 'writeBatch', 'lockExclusive', 'notify']) if (typeof addon[fn] !== 'function') out.push(`native addon function ${fn}`);
  } catch {
    out.push('native addon build/Release/ferry_io.node');
  }
  try {
    require('better-sqlite3')(':memory:').close();
  } catch {
    out.push('better-sqlite3 native build');
  }
  if (want === 'test') {
    for (const tool of testTools) {
      if (!PATH.split(delimiter).some((d) => d && existsSync(join(d, tool)))) out.push(`command ${tool}`);
    }
  }
  return out;
}

/** Compiles dist/ when it was not built from the sources as they are now (bin/ferry.cjs runs it). */
function buildIfStale() {
  const b = spawnSync(process.execPath, [join(root, 'scripts', 'build.js'), '--if-stale'], { cwd: root, stdio: 'inherit' });
  if (b.status !== 0) process.exit(b.status ?? 1);
}

const before = missing();
if (before.length === 0) {
  buildIfStale();
  process.exit(0);
}
console.error(`ferry: installing what is missing (${before.join(', ')}): scripts/install-deps.sh`);
const r = spawnSync('bash', [join(root, 'scripts', 'install-deps.sh'), want === 'server' ? 'server' : 'all'], { cwd: root, stdio: 'inherit', env: { ...process.env, PATH } });
if (r.status !== 0) process.exit(r.status ?? 1);
const after = missing();
if (after.length > 0) {
  console.error(`ferry: still missing after scripts/install-deps.sh: ${after.join(', ')}`);
  process.exit(1);
}
buildIfStale();
