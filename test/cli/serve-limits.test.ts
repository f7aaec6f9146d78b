// The listener limits as an operator sets them: `ferry serve --nbd-connections-per-address N`
// (and the API's and replication's, also from --config) replace the defaults; a bad value is
// refused before anything is created. Raw NBD sessions from one loopback address are held to
// the limit while another address still attaches.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { FERRY_BIN, describeRun, run, startFerryd, tmpDir, waitFor, type Ferryd } from '../harness.js';
import { attachedFrom, connectFrom } from '../wire/source-address.js';

describe('serve: listener limits from flags', () => {
  const daemons: Ferryd[] = [];
  after(async () => {
    for (const d of daemons) await d.stop();
  });

  test('--nbd-connections-per-address holds one address to its limit; another address attaches', async () => {
    const d = await startFerryd({ args: ['--nbd-connections-per-address', '2', '--api-connections-per-address', '8'] });
    daemons.push(d);
    await d.createDisk('lim', '1M');
    const held = [await attachedFrom('127.0.0.2', d.nbdHost, d.nbdPort, 'lim'), await attachedFrom('127.0.0.2', d.nbdHost, d.nbdPort, 'lim')];
    // The third from the same address is closed at once, before any greeting.
    const third = await connectFrom('127.0.0.2', d.nbdHost, d.nbdPort);
    let got = 0;
    third.on('data', (b: Buffer) => (got += b.length));
    await new Promise<void>((resolve) => third.once('close', () => resolve()));
    assert.equal(got, 0, 'the refused connection got no greeting');
    const other = await attachedFrom('127.0.0.3', d.nbdHost, d.nbdPort, 'lim');
    assert.equal((await other.readAt(0, 4096)).length, 4096, 'the other address is served');
    other.close();
    for (const c of held) c.close();
    await waitFor('the refusal to be logged', () => /NBD connections refused or dropped/.test(d.stderr), 20_000);
  });

  test('a bad limit is refused before anything is created', async () => {
    const parent = tmpDir('ferry-limits-');
    for (const [flag, value, message] of [
      ['--nbd-connections', '0', /--nbd-connections must be a whole number from 1 to 100000/],
      ['--api-connections-per-address', 'many', /--api-connections-per-address must be a whole number/],
    ] as const) {
      const r = await run(process.execPath, [FERRY_BIN, 'serve', '--data', path.join(parent, 'data'), '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--repl', '127.0.0.1:0', flag, value], { timeoutMs: 30_000 });
      assert.notEqual(r.code, 0, describeRun('ferry serve', [flag, value], r));
      assert.match(r.stderr, message);
      assert.deepEqual(fs.readdirSync(parent), [], 'nothing created');
    }
    const both = await run(process.execPath, [FERRY_BIN, 'serve', '--data', path.join(parent, 'data'), '--repl-connections', '4', '--repl-connections-per-address', '8'], { timeoutMs: 30_000 });
    assert.match(both.stderr, /--repl-connections-per-address \(8\) cannot exceed --repl-connections \(4\)/);
    assert.deepEqual(fs.readdirSync(parent), [], 'nothing created');
  });
});
