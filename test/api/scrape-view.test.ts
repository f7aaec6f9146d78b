// One scrape of /metrics builds each list it reads once (src/api/scrape-view.ts): about twenty
// series read the mirrors' status, and a group's status walks its journal's region ledger.
// A real daemon in this process (temporary data directory, ports chosen by the system) with a
// disk mirrored locally; its status is counted where Metrics reads it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { Daemon } from '../../src/control/daemon.js';
import { Metrics } from '../../src/api/metrics.js';
import { tmpDir } from '../harness.js';

let daemon: Daemon;
let work: string;

before(async () => {
  work = fs.realpathSync(tmpDir('ferry-scrape-view-'));
  const any = { host: '127.0.0.1', port: 0 };
  daemon = new Daemon({ dataDir: path.join(work, 'data'), nbd: any, api: any, repl: any, tls: { mode: 'off' }, log: pino({ level: 'silent' }) });
  await daemon.start();
  await daemon.disks.create({ name: 'd1', size: 16 << 20 });
  await daemon.mirrors.create({ disk: 'd1', to: `local:${path.join(work, 'd1.mirror')}`, staging: path.join(work, 'd1.stg'), stagingSize: 64 << 20 });
});
after(async () => {
  await daemon.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

test('a scrape reads the mirrors, disks and groups once each; the next scrape reads them again', async () => {
  const counts = { mirrors: 0, disks: 0, groups: 0 };
  const count = <T extends object, K extends keyof T & string>(obj: T, key: K, name: keyof typeof counts): void => {
    const real = (obj[key] as (...args: unknown[]) => unknown).bind(obj);
    (obj as Record<string, unknown>)[key] = (...args: unknown[]) => {
      counts[name]++;
      return real(...args);
    };
  };
  count(daemon.mirrors, 'status', 'mirrors');
  count(daemon.disks, 'list', 'disks');
  count(daemon.groups, 'list', 'groups');
  const metrics = new Metrics(daemon);

  const first = await metrics.render();
  assert.match(first, /^ferry_mirror_lag_records\{disk="d1",role="primary",target="local:[^"]+"\} 0$/m);
  assert.match(first, /^ferry_staging_size_bytes\{disk="d1"\} \d+$/m);
  assert.match(first, /^ferry_disk_online\{disk="d1"\} 1$/m);
  assert.deepEqual(counts, { mirrors: 1, disks: 1, groups: 1 });

  // Not kept past the scrape: a later one reads the daemon's state again.
  await new Promise((resolve) => setImmediate(resolve));
  await metrics.render();
  assert.deepEqual(counts, { mirrors: 2, disks: 2, groups: 2 });
});
