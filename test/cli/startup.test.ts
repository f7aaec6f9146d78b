// The CLI as an operator starts it: `--version` answers without a daemon, `--api HOST:PORT`
// is accepted as well as a URL, and bin/ferry.cjs runs the compiled dist/ only while it was
// built from exactly the sources (scripts/dist-fresh.cjs), never stale code.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { FERRY_BIN, ROOT, describeRun, run, startFerryd, tmpDir, type Ferryd } from '../harness.js';

const daemons: Ferryd[] = [];
after(async () => {
  for (const d of daemons) await d.stop();
});

test('ferry --version prints the package version with no daemon running', async () => {
  const version = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const r = await run(process.execPath, [FERRY_BIN, '--version'], { env: { ...process.env, FERRY_API: 'http://127.0.0.1:1' } });
  assert.equal(r.code, 0, describeRun('ferry', ['--version'], r));
  assert.equal(r.stdout.trim(), version);
});

test('help of a nested command, either way, shows its usage and the global options', async () => {
  for (const args of [['help', 'mirror', 'promote'], ['mirror', 'promote', '--help']]) {
    const r = await run(process.execPath, [FERRY_BIN, ...args], {});
    assert.equal(r.code, 0, describeRun('ferry', args, r));
    assert.match(r.stdout, /^Usage: ferry mirror promote/m, r.stdout);
    assert.match(r.stdout, /^Global Options:/m, r.stdout);
    assert.match(r.stdout, /--api <url>/, r.stdout);
  }
});

test('--api takes HOST:PORT as well as a URL', async () => {
  const d = await startFerryd();
  daemons.push(d);
  await d.createDisk('hp', '1M');
  const hostPort = d.apiUrl.replace(/^http:\/\//, '');
  for (const api of [hostPort, d.apiUrl, `${d.apiUrl}/`]) {
    const r = await run(process.execPath, [FERRY_BIN, '--api', api, '--data', d.dataDir, 'disk', 'list', '--json'], {});
    assert.equal(r.code, 0, describeRun('ferry', ['--api', api, 'disk', 'list'], r));
    assert.deepEqual((JSON.parse(r.stdout) as Array<{ name: string }>).map((x) => x.name), ['hp']);
  }
});

test('the compiled dist/ counts as fresh only for exactly the sources it was built from', () => {
  // dist-fresh.cjs finds its tree from its own location: a copy in a scratch tree checks that tree.
  const tree = tmpDir('ferry-dist-fresh-');
  fs.mkdirSync(path.join(tree, 'scripts'));
  fs.mkdirSync(path.join(tree, 'src', 'cli'), { recursive: true });
  fs.mkdirSync(path.join(tree, 'dist'));
  fs.copyFileSync(path.join(ROOT, 'scripts', 'dist-fresh.cjs'), path.join(tree, 'scripts', 'dist-fresh.cjs'));
  fs.writeFileSync(path.join(tree, 'src', 'cli', 'main.ts'), 'export {};\n');
  const fresh = createRequire(import.meta.url)(path.join(tree, 'scripts', 'dist-fresh.cjs')) as { sourceState(): unknown; distFresh(): boolean };
  assert.equal(fresh.distFresh(), false, 'no stamp: not fresh');
  fs.writeFileSync(path.join(tree, 'dist', 'stamp.json'), JSON.stringify(fresh.sourceState()));
  assert.equal(fresh.distFresh(), true, 'built from these sources');
  const later = new Date(Date.now() + 5000);
  fs.utimesSync(path.join(tree, 'src', 'cli', 'main.ts'), later, later);
  assert.equal(fresh.distFresh(), false, 'a source edited after the build');
  fs.writeFileSync(path.join(tree, 'dist', 'stamp.json'), JSON.stringify(fresh.sourceState()));
  fs.writeFileSync(path.join(tree, 'src', 'added.ts'), 'export {};\n');
  assert.equal(fresh.distFresh(), false, 'a source added after the build');
  fs.rmSync(path.join(tree, 'src', 'added.ts'));
  assert.equal(fresh.distFresh(), true);
  fs.rmSync(path.join(tree, 'src', 'cli', 'main.ts'));
  assert.equal(fresh.distFresh(), false, 'a source removed after the build');
});
