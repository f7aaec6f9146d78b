// The disaster-recovery measurements (issue 14), each on two ferryd sites of its own
// (bench/dr-site.ts: named site-a and site-b, on loopback ports chosen once, so that site A
// can be killed and started again on the same data directory and ports), paired through the
// API as `ferry peer token` (on B) and `ferry peer add site-b` (on A) do, B given A's address as
// `ferry peer set site-a --address` does (PATCH /v1/peers/site-a) so that it can dial A:
//
//   dr-switchover-pause  a client (bench/switchover-client.py, libnbd) writes 4 KiB blocks at
//                        QD1 to the primary's export of a 1 GiB disk mirrored in sync
//                        (--compress none); `mirror switchover --force` at the primary
//                        disconnects it; it then writes to the other site's export until one
//                        write is acknowledged: the pause is that acknowledgement's time less
//                        the last one at the old primary (monotonic clock, in the client).
//                        5 switchovers, A → B and B → A alternately; median and max, and the
//                        server's `pauseMs` (target: under 1 s, every switchover)
//
// BENCH_ROWS selects them by id like the other sections; every process is registered with
// the run, which stops it.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { DrSite } from './dr-site.js';
import type { MirrorContext, MirrorResult } from './mirror-rows.js';
import { sleep } from './proc.js';
import type { FerryApi } from './servers.js';
import { caughtUp, pairSites } from './sites.js';

export const drRows = [
  { id: 'dr-switchover-pause', title: 'Switchover pause seen by a client' },
];

export interface DrSection {
  results: MirrorResult[];
  /** How the sites were run and what each row measures, for the report. */
  method: string;
}

const GiB = 1024 * 1024 * 1024;
const SWITCHOVERS = 5;
const CLIENT = path.join(import.meta.dirname, 'switchover-client.py');

const med = (v: number[]): number => {
  const s = [...v].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
const f0 = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a');
const f1 = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : 'n/a');

/** Polls `get` every `pollMs` until `ok` holds; returns the value that passed. */
async function until<T>(what: string, timeoutMs: number, get: () => Promise<T>, ok: (v: T) => boolean, pollMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await get();
      if (ok(v)) return v;
      last = v;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) throw new Error(`${what}: not after ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
    await sleep(pollMs);
  }
}

/** Two sites paired (A dials B at `bAddress`; B dials A at `aAddress`): what `peer add` on A and `peer set` on B do. */
async function startPair(ctx: MirrorContext, dir: string, address: (a: DrSite, b: DrSite) => Promise<{ toB: string; toA: string }>): Promise<{ a: DrSite; b: DrSite }> {
  const start = async (name: string): Promise<DrSite> => {
    const site = await DrSite.start(path.join(dir, name), name, ctx.bin);
    ctx.register(`${path.basename(dir)}-${name}`, site.server);
    return site;
  };
  const [a, b] = await Promise.all([start('site-a'), start('site-b')]);
  const { toB, toA } = await address(a, b);
  await pairSites(a.api, b.api, toB);
  await b.api('PATCH', `/v1/peers/${a.name}`, { address: toA });
  return { a, b };
}

/** The status of `disk`'s mirror at a site. */
const mirrorOf = (api: FerryApi, disk: string): Promise<any> => api('GET', `/v1/disks/${disk}/mirror`);

interface ClientReport {
  writesFrom: number;
  lastAckFrom: number | null;
  errorFrom: string | null;
  attemptsTo: number;
  firstAckTo: number | null;
  errorTo: string | null;
  pauseMs: number | null;
}

/** Starts the switchover client; `writing` resolves once it has a write acknowledged at `from`, `done` with its report. */
function startClient(from: string, to: string, size: number): { writing: Promise<void>; done: Promise<ClientReport> } {
  const child = spawn('/usr/bin/python3', [CLIENT, from, to, String(size), '60'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let onWriting = (): void => undefined;
  const writing = new Promise<void>((resolve) => (onWriting = resolve));
  child.stdout!.on('data', (b: Buffer) => {
    out += b.toString();
    if (out.includes('writing\n')) onWriting();
  });
  child.stderr!.on('data', (b: Buffer) => void (err += b.toString()));
  const done = new Promise<ClientReport>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      const line = out.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(line) as ClientReport);
      } catch {
        reject(new Error(`switchover client exited ${code}: ${out}${err}`));
      }
    });
  });
  return { writing: Promise.race([writing, done.then((r) => Promise.reject(new Error(`switchover client ended before writing: ${JSON.stringify(r)}`)))]), done };
}

async function switchoverPause(ctx: MirrorContext): Promise<MirrorResult> {
  const dir = path.join(ctx.dir, 'switchover');
  const size = GiB;
  const { a, b } = await startPair(ctx, dir, async (a, b) => ({ toB: b.replAddress, toA: a.replAddress }));
  try {
    await a.api('POST', '/v1/disks', { name: 'sw', size });
    await a.api('POST', '/v1/disks/sw/mirror', { to: 'site-b:sw-dr', staging: path.join(dir, 'sw.stg'), stagingSize: '256M', compress: 'none' });
    const pauses: number[] = [];
    const serverMs: number[] = [];
    const writes: number[] = [];
    const attempts: number[] = [];
    for (let i = 0; i < SWITCHOVERS; i++) {
      // A → B, then B → A, alternately: after a switchover the other site is the primary.
      const [p, r, pd, rd] = i % 2 === 0 ? [a, b, 'sw', 'sw-dr'] : [b, a, 'sw-dr', 'sw'];
      await caughtUp(p.api, pd, 300_000);
      await until(`${r.name}'s replica caught up`, 120_000, () => mirrorOf(r.api, rd), (st) => st.role === 'replica' && st.consistent && st.lagRecords === 0);
      await ctx.settle(dir);
      const client = startClient(p.uri(pd), r.uri(rd), size);
      await client.writing;
      await sleep(500); // writing steadily
      const rep = await p.api('POST', `/v1/disks/${pd}/mirror/switchover?force=true`);
      const c = await client.done;
      if (c.pauseMs === null) throw new Error(`switchover ${p.name} → ${r.name}: the client saw no write acknowledged at ${r.name}: ${JSON.stringify(c)}`);
      pauses.push(c.pauseMs);
      serverMs.push(rep.pauseMs);
      writes.push(c.writesFrom);
      attempts.push(c.attemptsTo);
      ctx.log(`dr-switchover-pause #${i + 1} ${p.name} → ${r.name}: client ${f1(c.pauseMs)} ms (${c.writesFrom} writes before, ${c.attemptsTo} connection(s) at ${r.name}; "${c.errorFrom}"), server pauseMs ${f1(rep.pauseMs)}, disconnected ${rep.disconnected}, drained ${rep.drainedRecords} records`);
    }
    const max = Math.max(...pauses);
    return {
      id: 'dr-switchover-pause',
      title: 'Switchover pause seen by a client, 4 KiB writes at QD1, A → B and back, loopback',
      result: `median ${f1(med(pauses))} ms, max ${f1(max)} ms`,
      runs: pauses.map(f1).join(', '),
      target: '< 1 s (every switchover)',
      met: max < 1000,
      value: med(pauses),
      values: pauses,
      detail: `${SWITCHOVERS} switchovers (\`POST /v1/disks/DISK/mirror/switchover?force=true\` at the primary), A → B and B → A alternately, of a ${size / GiB} GiB disk mirrored with \`--compress none\`, each once the mirror was caught up and the client had written for 0.5 s; the client (\`bench/switchover-client.py\`, Debian's libnbd bindings) writes 4 KiB blocks at QD1 at random offsets to the primary's export until a write fails (the switchover disconnects it), then connects to the other site's export, one new connection 1 ms after another, until a write is acknowledged there; the pause is the time of that acknowledgement less the time of its last one at the old primary (one monotonic clock, in the client). The server's \`pauseMs\` (how long writes were refused at the old primary): ${serverMs.map(f1).join(', ')} ms (median ${f1(med(serverMs))}); writes acknowledged before each switchover ${writes.map(f0).join(', ')}; connections tried at the new primary ${attempts.join(', ')}`,
    };
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
}

/** Runs the selected disaster-recovery measurements (ids of drRows). */
export async function runDrRows(ids: string[], ctx: MirrorContext): Promise<DrSection> {
  const results: MirrorResult[] = [];
  if (ids.includes('dr-switchover-pause')) results.push(await switchoverPause(ctx));
  return {
    results,
    method: `Each measurement starts two ferryd sites of its own on loopback (\`bench/dr-site.ts\`): ${'`node bin/ferry.cjs serve --data DIR --nbd 127.0.0.1:P --api 127.0.0.1:P --repl 127.0.0.1:P --site site-a`'} (and \`site-b\`), ports chosen once so that a site restarts on the same ones; paired through the API as \`ferry peer token\` on B and \`ferry peer add site-b --address … --token T\` on A do, and B given A's address as \`ferry peer set site-a --address …\` does (PATCH), so that either site can dial the other. Disks are virtual disks created at A (\`POST /v1/disks\`), mirrored to a new replica at B with a staging area`,
  };
}
