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
//   dr-failback-delta    a 4 GiB sparse disk mirrored A → B through a WanProxy, and B dialling
//                        A through a second one (every byte between the sites is counted):
//                        8 MiB written and shipped; the A → B link cut, 20 scattered 4 KiB
//                        writes at A (records B never receives), kill -9 of A, promote at B,
//                        1,000 scattered 4 KiB writes at B (one qemu-io), the link restored, A
//                        started again (fenced), then `mirror reconnect` at A discarding A's
//                        changes; the bytes both proxies carried from the request until A is a
//                        consistent replica and B in sync, over the reconnect's `resyncBytes`
//                        (the 64 KiB granules changed on either side: target <= 1.1) and over
//                        the disk (target < 2%); then qemu-img compare of the two images
//
// BENCH_ROWS selects them by id like the other sections; every process is registered with
// the run, which stops it.
import path from 'node:path';
import { WanProxy } from '../src/testing/wan-proxy.js';
import { DrSite } from './dr-site.js';
import type { MirrorContext, MirrorResult } from './mirror-rows.js';
import { run, sleep, spawnTracked, stopChild } from './proc.js';
import type { FerryApi } from './servers.js';
import { caughtUp, pairSites } from './sites.js';
import { scatteredOffsets } from '../src/testing/scattered-offsets.js';

export const drRows = [
  { id: 'dr-switchover-pause', title: 'Switchover pause seen by a client' },
  { id: 'dr-failback-delta', title: 'Delta failback: bytes over the link' },
];

export interface DrSection {
  results: MirrorResult[];
  /** How the sites were run and what each row measures, for the report. */
  method: string;
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** The granule of the divergence maps (src/replication/divergence-map.ts), for the expected union. */
const GRANULE = 64 * 1024;
const SWITCHOVERS = 5;
const CLIENT = path.join(import.meta.dirname, 'switchover-client.py');

const med = (v: number[]): number => {
  const s = [...v].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};
const f0 = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a');
const f1 = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : 'n/a');
const f3 = (n: number): string => (Number.isFinite(n) ? n.toFixed(3) : 'n/a');

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

const granulesOf = (offsets: number[]): Set<number> => new Set(offsets.flatMap((o) => [Math.floor(o / GRANULE), Math.floor((o + 4095) / GRANULE)]));

/** qemu-io on an NBD URI, the commands in one process; throws unless every command succeeded. */
async function qemuIo(uri: string, commands: string[]): Promise<void> {
  const r = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri], 300_000);
  const out = r.stdout + r.stderr;
  if (r.code !== 0 || /failed|error|Pattern verification/i.test(out)) throw new Error(`qemu-io ${commands.slice(0, 3).join('; ')}… (${commands.length}): exit ${r.code ?? r.signal}\n${out.slice(-2000)}`);
}

/** Sites A and B, paired: A dials B at `toB` (`peer add` on A), B dials A at `toA` (`peer set` on B); `address` may start proxies in front of their listeners. */
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

/** Starts the switchover client (tracked: the run's cleanup stops it); `writing` resolves once it has a write acknowledged at `from`, `done` with its report. */
function startClient(from: string, to: string, size: number): { writing: Promise<void>; done: Promise<ClientReport>; stop: () => Promise<void> } {
  const child = spawnTracked('/usr/bin/python3', [CLIENT, from, to, String(size), '60']);
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
  return { writing: Promise.race([writing, done.then((r) => Promise.reject(new Error(`switchover client ended before writing: ${JSON.stringify(r)}`)))]), done, stop: () => stopChild(child, 2_000) };
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
      let rep: any;
      let c: ClientReport;
      try {
        await client.writing;
        await sleep(500); // writing steadily
        rep = await p.api('POST', `/v1/disks/${pd}/mirror/switchover?force=true`);
        c = await client.done;
      } catch (err) {
        await client.stop();
        throw err;
      }
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

async function failbackDelta(ctx: MirrorContext): Promise<MirrorResult[]> {
  const dir = path.join(ctx.dir, 'failback');
  const size = 4 * GiB;
  const proxies: WanProxy[] = [];
  const proxyTo = async (port: number, name: string): Promise<WanProxy> => {
    const p = await WanProxy.start({ targetPort: port });
    proxies.push(p);
    ctx.register(name, { uri: `127.0.0.1:${p.port}`, pid: process.pid, command: 'WanProxy', stop: () => p.close() });
    return p;
  };
  let toB!: WanProxy;
  let toA!: WanProxy;
  const { a, b } = await startPair(ctx, dir, async (a, b) => {
    toB = await proxyTo(b.ports.repl, 'dr-proxy-to-b');
    toA = await proxyTo(a.ports.repl, 'dr-proxy-to-a');
    return { toB: `127.0.0.1:${toB.port}`, toA: `127.0.0.1:${toA.port}` };
  });
  const linkBytes = (): number => proxies.reduce((n, p) => n + p.stats().bytesUp + p.stats().bytesDown, 0);
  try {
    await a.api('POST', '/v1/disks', { name: 'fb', size });
    await a.api('POST', '/v1/disks/fb/mirror', { to: 'site-b:fb-dr', staging: path.join(dir, 'fb.stg'), stagingSize: '128M', compress: 'none' });
    await qemuIo(a.uri('fb'), [`write -P 0x11 0 ${8 * MiB}`]);
    await caughtUp(a.api, 'fb', 300_000);
    await until("B's replica caught up", 120_000, () => mirrorOf(b.api, 'fb-dr'), (st) => st.consistent && st.lagRecords === 0);

    // Records B never receives: written at A into a cut link, then A is lost.
    toB.cut();
    const lost = scatteredOffsets(20, size, 7);
    await qemuIo(a.uri('fb'), lost.map((o) => `write -P 0x66 ${o} 4k`));
    await a.kill9();
    await b.api('POST', '/v1/disks/fb-dr/mirror/promote');
    const written = scatteredOffsets(1000, size, 42);
    await qemuIo(b.uri('fb-dr'), written.map((o) => `write -P 0x22 ${o} 4k`));
    toB.restore();
    await a.restart();
    const learnt = await until("A learns it was failed over", 120_000, () => a.api('GET', '/v1/disks/fb/dr'), (d) => d.state !== 'normal');
    if (learnt.state !== 'fenced' && learnt.state !== 'split-brain') throw new Error(`A's DR state: ${JSON.stringify(learnt)}`);
    await until("A's changed regions recorded", 60_000, () => a.api('GET', '/v1/disks/fb/dr'), (d) => (d.changed?.granules ?? 0) >= granulesOf(lost).size);
    await ctx.settle(dir);

    const bytes0 = linkBytes();
    const t0 = process.hrtime.bigint();
    const rep = await a.api('POST', `/v1/disks/fb/mirror/reconnect?discardChangesAt=${a.name}`);
    await until('A a consistent replica', 600_000, () => mirrorOf(a.api, 'fb'), (st) => st.role === 'replica' && st.consistent && st.fallback === null);
    await caughtUp(b.api, 'fb-dr', 600_000, 20);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const sent = linkBytes() - bytes0;
    const union = new Set([...granulesOf(written), ...granulesOf(lost)]);
    // Granules that hold data at B: its own writes and the 8 MiB base. The others (A's lost
    // records past the base, which B never wrote) read as zeroes there: the resync sends them
    // as zeroed ranges, not data, so the link carries less than resyncBytes.
    const bGranules = granulesOf(written);
    const dataGranules = [...union].filter((g) => bGranules.has(g) || g * GRANULE < 8 * MiB).length;
    const ratio = sent / rep.resyncBytes;
    const share = sent / size;
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', b.uri('fb-dr'), a.uri('fb')], 600_000);
    const identical = cmp.code === 0;
    ctx.log(`dr-failback-delta: ${f0(sent)} bytes over the links in ${f1(seconds)} s for resyncBytes ${f0(rep.resyncBytes)} (expected union ${f0(union.size * GRANULE)}, ${dataGranules} of its ${union.size} granules holding data at B): ratio ${f3(ratio)}, ${(share * 100).toFixed(2)}% of the disk; images ${identical ? 'identical' : `DIFFER: ${cmp.stdout}${cmp.stderr}`}`);
    const how = `a ${size / GiB} GiB sparse disk mirrored A → B with \`--compress none\` through a WanProxy (A dials B through it) and B given the address of a second WanProxy in front of A's replication port (\`PATCH /v1/peers/site-a\`), so that every byte between the sites is counted (\`WanProxy.stats()\`, both directions of both); 8 MiB written and shipped; the A → B proxy cut, 20 scattered 4 KiB writes at A (records B never receives), kill -9 of A, \`mirror promote\` at B, 1,000 scattered 4 KiB writes at B (one qemu-io), the proxy restored, A started again on its data directory and ports (DR state \`${learnt.state}\`, its changed granules recorded), then \`POST /v1/disks/fb/mirror/reconnect?discardChangesAt=site-a\` at A; the bytes both proxies carried from that request until A is a consistent replica (role replica, consistent, no fallback) and B's mirror in sync (caught up, link connected); one failback a run (the offsets are the same every run, so are the granules)`;
    const check = `\`changedHereBytes\` ${f0(rep.changedHereBytes)}, \`changedThereBytes\` ${f0(rep.changedThereBytes)}, \`resyncBytes\` ${f0(rep.resyncBytes)} (${rep.resyncBytes / GRANULE} granules; the union of the granules written on either side: ${union.size}, of which ${dataGranules} hold data at B and ${union.size - dataGranules} read as zeroes there, sent as zeroed ranges: the link bytes are ${f3(sent / (dataGranules * GRANULE))}× the bytes of the granules holding data); reconnect to converged in ${f1(seconds)} s; \`qemu-img compare\` of the two images afterwards: ${identical ? 'identical' : '**they differ**'}`;
    return [
      {
        id: 'dr-failback-delta',
        title: 'Delta failback (`mirror reconnect`): bytes over the links / bytes of the 64 KiB granules changed on either side',
        result: `${f3(ratio)} (${f0(sent)} B / ${f0(rep.resyncBytes)} B)`,
        runs: `1 (reconnect to converged: ${f1(seconds)} s)`,
        target: '≤ 1.1',
        met: ratio <= 1.1 && identical,
        value: ratio,
        detail: `${how}; ${check}`,
      },
      {
        id: 'dr-failback-delta',
        title: 'The same bytes / disk size, 1,000 scattered 4 KiB writes on a 4 GiB disk',
        result: `${(share * 100).toFixed(2)}%`,
        runs: `${f0(sent)} B`,
        target: '< 2%',
        met: share < 0.02 && identical,
        value: share,
        detail: 'the same reconnect as the row above, its bytes over the disk size (4 GiB)',
      },
    ];
  } finally {
    await Promise.all([a.stop(), b.stop()]);
    await Promise.all(proxies.map((p) => p.close()));
  }
}

/** Runs the selected disaster-recovery measurements (ids of drRows). */
export async function runDrRows(ids: string[], ctx: MirrorContext): Promise<DrSection> {
  const results: MirrorResult[] = [];
  if (ids.includes('dr-switchover-pause')) results.push(await switchoverPause(ctx));
  if (ids.includes('dr-failback-delta')) results.push(...(await failbackDelta(ctx)));
  return {
    results,
    method: `Each measurement starts two ferryd sites of its own on loopback (\`bench/dr-site.ts\`): ${'`node bin/ferry.cjs serve --data DIR --nbd 127.0.0.1:P --api 127.0.0.1:P --repl 127.0.0.1:P --site site-a`'} (and \`site-b\`), ports chosen once so that a site restarts on the same ones; paired through the API as \`ferry peer token\` on B and \`ferry peer add site-b --address … --token T\` on A do, and B given A's address as \`ferry peer set site-a --address …\` does (PATCH), so that either site can dial the other. Disks are virtual disks created at A (\`POST /v1/disks\`), mirrored to a new replica at B with a staging area`,
  };
}
