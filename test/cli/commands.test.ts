// The `ferry` CLI against a real ferryd: every management command, for people and with
// --json (which parses and has the documented fields: the API's Disk and Pool schemas).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startFerryd, tmpDir, type Ferryd, type RunResult } from '../harness.js';
import { DiskSchema, PoolSchema } from '../../src/api/routes.js';
import { assertSchema, cleanup } from '../api/helpers.js';

describe('ferry CLI commands', () => {
  let d: Ferryd;
  let ext: string;

  before(async () => {
    d = await startFerryd();
    ext = fs.realpathSync(tmpDir('ferry-cli-'));
  });
  after(async () => {
    await cleanup(d, ext);
  });

  async function ok(args: string[]): Promise<string> {
    const r: RunResult = await d.cli(args, { timeoutMs: 60_000 });
    assert.equal(r.code, 0, `ferry ${args.join(' ')} → ${r.code}\n${r.stderr}`);
    assert.equal(r.stderr, '', `ferry ${args.join(' ')} wrote to stderr`);
    return r.stdout;
  }

  async function json(args: string[]): Promise<any> {
    const out = await ok([...args, '--json']);
    return JSON.parse(out);
  }

  const assertDisk = (v: unknown, what: string): void => assertSchema(DiskSchema, v, what);

  test('disk list of an empty server', async () => {
    assert.equal(await ok(['disk', 'list']), '(none)\n');
    assert.deepEqual(await json(['disk', 'list']), []);
  });

  test('disk create, for people and as JSON', async () => {
    const out = await ok(['disk', 'create', 'd1', '--size', '1G']);
    const file = path.join(fs.realpathSync(d.dataDir), 'pool', 'd1.img');
    assert.equal(out, `created virtual disk d1 (1GiB) at ${file}\n`);
    assert.equal(fs.statSync(file).size, 2 ** 30);

    const j = await json(['disk', 'create', 'd2', '--size', '64M', '--read-only']);
    assertDisk(j, 'create --json');
    assert.equal(j.name, 'd2');
    assert.equal(j.kind, 'virtual');
    assert.equal(j.pool, 'default');
    assert.equal(j.size, 64 << 20);
    assert.equal(j.readOnly, true);
    assert.equal(j.state, 'online');
    assert.equal(j.clients, 0);
  });

  test('disk list and disk show', async () => {
    const table = (await ok(['disk', 'list'])).trimEnd().split('\n');
    assert.deepEqual(table[0]!.split(/\s+/), ['NAME', 'KIND', 'SIZE', 'ALLOCATED', 'STATE', 'CLIENTS', 'PATH']);
    assert.equal(table.length, 3);
    assert.match(table[1]!, /^d1\s+virtual\s+1GiB\s+\S+\s+online\s+0\s+\/\S+\/d1\.img$/);
    assert.match(table[2]!, /^d2\s+virtual\s+64MiB\s+/);

    const list = await json(['disk', 'list']);
    assert.ok(Array.isArray(list));
    assert.deepEqual(list.map((x: { name: string }) => x.name), ['d1', 'd2']);
    for (const x of list) assertDisk(x, 'list --json');

    const show = await ok(['disk', 'show', 'd1']);
    assert.match(show, /^name:\s+d1$/m);
    assert.match(show, /^kind:\s+virtual$/m);
    assert.match(show, /^state:\s+online$/m);
    assert.match(show, /^size:\s+1GiB \(1073741824 bytes\)$/m);
    assert.match(show, /^pool:\s+default$/m);
    assert.match(show, /^read-only:\s+no$/m);
    assert.match(show, /^path:\s+\/\S+\/d1\.img$/m);
    const j = await json(['disk', 'show', 'd2']);
    assertDisk(j, 'show --json');
    assert.deepEqual({ name: j.name, readOnly: j.readOnly, size: j.size }, { name: 'd2', readOnly: true, size: 64 << 20 });
  });

  test('disk adopt', async () => {
    const img = path.join(ext, 'legacy.img');
    fs.writeFileSync(img, Buffer.alloc(4096, 7));
    assert.equal(await ok(['disk', 'adopt', 'a1', '--path', img]), `adopted ${img} as disk a1 (4KiB)\n`);
    const img2 = path.join(ext, 'legacy2.img');
    fs.writeFileSync(img2, Buffer.alloc(8192, 7));
    const j = await json(['disk', 'adopt', 'a2', '--path', img2, '--read-only']);
    assertDisk(j, 'adopt --json');
    assert.deepEqual({ kind: j.kind, pool: j.pool, path: j.path, size: j.size, readOnly: j.readOnly }, { kind: 'adopted', pool: null, path: img2, size: 8192, readOnly: true });
    assert.ok(fs.readFileSync(img2).equals(Buffer.alloc(8192, 7)));
  });

  test('disk remove, with and without --purge, for people and as JSON', async () => {
    const d1 = path.join(fs.realpathSync(d.dataDir), 'pool', 'd1.img');
    assert.equal(await ok(['disk', 'remove', 'd1']), `removed disk d1 (data left at ${d1})\n`);
    assert.ok(fs.existsSync(d1));
    // Created again under the same name: refused with the way back to the data, or to a new disk.
    const again = await d.cli(['disk', 'create', 'd1', '--size', '1M']);
    assert.equal(again.code, 1, again.stderr);
    assert.match(again.stderr, /^ferry: PATH_IN_USE: .*removed without --purge.*ferry disk adopt d1 --path /, again.stderr);
    fs.rmSync(d1);
    const d2 = path.join(fs.realpathSync(d.dataDir), 'pool', 'd2.img');
    const j = await json(['disk', 'remove', 'd2', '--purge']);
    assertDisk(j, 'remove --json');
    assert.equal(j.name, 'd2');
    assert.ok(!fs.existsSync(d2));
    assert.equal(await ok(['disk', 'remove', 'a1']), `removed disk a1 (data left at ${path.join(ext, 'legacy.img')})\n`);
    assert.ok(fs.existsSync(path.join(ext, 'legacy.img')));
    await ok(['disk', 'create', 'd3', '--size', '1M']);
    assert.equal(await ok(['disk', 'remove', 'd3', '--purge']), `removed disk d3 and deleted ${path.join(fs.realpathSync(d.dataDir), 'pool', 'd3.img')}\n`);
    assert.deepEqual((await json(['disk', 'list'])).map((x: { name: string }) => x.name), ['a2']);
  });

  test('pool add, list and remove, for people and as JSON', async () => {
    const p1 = path.join(ext, 'p1');
    const p2 = path.join(ext, 'p2');
    fs.mkdirSync(p1);
    fs.mkdirSync(p2);
    assert.equal(await ok(['pool', 'add', 'p1', '--path', p1]), `added pool p1 at ${p1}\n`);
    const j = await json(['pool', 'add', 'p2', '--path', p2]);
    assertSchema(PoolSchema, j, 'pool add --json');
    assert.deepEqual({ name: j.name, path: j.path, disks: j.disks }, { name: 'p2', path: p2, disks: 0 });

    const created = await json(['disk', 'create', 'in-p1', '--size', '1M', '--pool', 'p1']);
    assert.equal(created.path, path.join(p1, 'in-p1.img'));
    assert.ok(fs.existsSync(path.join(p1, 'in-p1.img')));

    const table = (await ok(['pool', 'list'])).trimEnd().split('\n');
    assert.deepEqual(table[0]!.split(/\s+/), ['NAME', 'DISKS', 'PATH']);
    assert.match(table[1]!, /^default\s+0\s+\/\S+\/pool$/);
    assert.equal(table[2], `p1       1      ${p1}`);
    assert.match(table[3]!, /^p2\s+0\s+/);
    const list = await json(['pool', 'list']);
    assert.deepEqual(list.map((p: { name: string }) => p.name), ['default', 'p1', 'p2']);
    for (const p of list) assertSchema(PoolSchema, p, 'pool list --json');

    assert.equal(await ok(['pool', 'remove', 'p2']), 'removed pool p2\n');
    await ok(['disk', 'remove', 'in-p1', '--purge']);
    const removed = await json(['pool', 'remove', 'p1']);
    assertSchema(PoolSchema, removed, 'pool remove --json');
    assert.equal(removed.name, 'p1');
    assert.ok(fs.existsSync(p1), 'the pool directory is left alone');
    assert.deepEqual((await json(['pool', 'list'])).map((p: { name: string }) => p.name), ['default']);
  });

  test('status, for people and as JSON', async () => {
    const human = await ok(['status']);
    assert.match(human, /^site:\s+site-\S+ \(id [0-9a-f]+\), replication 127\.0\.0\.1:\d+/m);
    assert.ok(human.includes(`NBD ${d.nbdAddress} (0 client(s)), API ${d.apiUrl}`), human);
    assert.match(human, /^ferryd:\s+\S+, up since \S+, data \/\S+$/m);
    const j = await json(['status']);
    assert.deepEqual(Object.keys(j).sort(), ['disks', 'problems', 'server', 'site']);
    assert.equal(j.server.nbd, d.nbdAddress);
    assert.equal(j.server.api, d.apiUrl);
    assert.equal(j.server.dataDir, path.resolve(d.dataDir));
    assert.equal(j.server.nbdConnections, 0);
    assert.ok(!Number.isNaN(Date.parse(j.server.startedAt)));
    assert.equal(typeof j.server.version, 'string');
    assert.match(j.site.siteId, /^[0-9a-f]+$/);
    for (const x of j.disks) assert.equal(x.role, 'unmirrored', JSON.stringify(x));
  });

  test('status puts a failing disk first and shows roles, mirror state and staging fill', async () => {
    const s = await startFerryd();
    try {
      const work = tmpDir('ferry-status-');
      const adopted = path.join(work, 'gone.img');
      fs.writeFileSync(adopted, Buffer.alloc(1024 * 1024));
      const run = (args: string[]) => s.cli(args, { timeoutMs: 60_000 });
      for (const args of [
        ['disk', 'create', 'a-plain', '--size', '4M'],
        ['disk', 'create', 'b-mirrored', '--size', '4M'],
        ['disk', 'adopt', 'c-gone', '--path', adopted],
        ['mirror', 'create', 'b-mirrored', '--to', `local:${path.join(work, 'b.mirror')}`, '--staging', path.join(work, 'b.stg'), '--staging-size', '64M', '--wait'],
      ]) {
        const r = await run(args);
        assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      }
      await s.stop();
      fs.rmSync(adopted);
      await s.start();
      const r = await run(['status', '--json']);
      assert.equal(r.code, 0, r.stderr);
      const o = JSON.parse(r.stdout);
      assert.deepEqual(o.disks.map((x: { name: string }) => x.name), ['c-gone', 'a-plain', 'b-mirrored'], 'the failing disk first, then by name');
      assert.equal(o.disks[0].state, 'unavailable');
      assert.ok(o.problems.length >= 1 && o.problems[0].startsWith('c-gone: unavailable'), JSON.stringify(o.problems));
      const b = o.disks[2];
      assert.equal(b.role, 'primary');
      assert.equal(b.mirror.state, 'in-sync');
      assert.equal(b.mirror.link, null, 'a local mirror has no link');
      assert.equal(b.staging.copies, 1);
      assert.ok(b.staging.fillPercent >= 0 && b.staging.fillPercent <= 100);
      assert.deepEqual(b.problems, []);
      assert.equal(o.disks[1].role, 'unmirrored');
      const human = await run(['status']);
      assert.match(human.stdout, /^problems:\s+1$/m, human.stdout);
      assert.match(human.stdout, /^ {2}! c-gone: unavailable/m, human.stdout);
      assert.match(human.stdout, /^b-mirrored\s+primary\s+online\s+0\s+in-sync\s+local\s/m, human.stdout);
    } finally {
      await s.stop();
    }
  });

  test('global options may come before the command', async () => {
    const j = JSON.parse(await ok(['--api', d.apiUrl, '--token', d.token, 'status', '--json']));
    assert.equal(j.server.nbd, d.nbdAddress);
  });
});
