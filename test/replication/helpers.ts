// Shared helpers for the remote mirror tests: two real ferryd sites (separate data dirs,
// site B on a fixed replication port so it can restart), paired through the real CLI with
// site A dialling B through the userspace WAN proxy (src/testing/wan-proxy.ts), and
// polling of mirror status on either site.
import assert from 'node:assert/strict';
import net from 'node:net';
import { requireTool, run, type Ferryd, type RunResult } from '../harness.js';
import type { Cleanup } from '../staging/helpers.js';
import { WanProxy } from '../../src/testing/wan-proxy.js';
import { cliJson, mirrorStatus } from '../mirror/helpers.js';
import { assertSchema } from '../api/helpers.js';
import { DrSchema } from '../../src/api/dr-routes.js';

export { MiB, GiB, T, cliJson, cliFails, mirrorStatus } from '../mirror/helpers.js';

/** A free loopback TCP port (bound then released: a restarted site keeps its port). */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

export interface Sites {
  a: Ferryd;
  b: Ferryd;
  proxy: WanProxy;
  /** The name site A knows site B by. */
  peer: string;
  /** The name site B knows site A by. */
  aName: string;
  stop(): Promise<void>;
}

/** Starts sites A and B, a WAN proxy in front of B's replication port, and pairs A → B through the proxy. */
export async function startSites(cleanup: Cleanup, opts: { delayMs?: number; bytesPerSec?: number; aArgs?: string[]; bArgs?: string[] } = {}): Promise<Sites> {
  const bPort = await freePort();
  const [a, b] = await Promise.all([
    cleanup.ferryd({ dataDir: cleanup.dir('ferry-site-a-'), args: ['--site', 'site-a', ...(opts.aArgs ?? [])] }),
    cleanup.ferryd({ dataDir: cleanup.dir('ferry-site-b-'), args: ['--site', 'site-b', '--repl', `127.0.0.1:${bPort}`, ...(opts.bArgs ?? [])] }),
  ]);
  const proxy = await WanProxy.start({ targetPort: bPort, delayMs: opts.delayMs ?? 0, bytesPerSec: opts.bytesPerSec ?? 0 });
  cleanup.defer(() => proxy.close());
  const token = (await cliJson(b, ['peer', 'token'])).token as string;
  await cliJson(a, ['peer', 'add', 'site-b', '--address', `127.0.0.1:${proxy.port}`, '--token', token]);
  return {
    a,
    b,
    proxy,
    peer: 'site-b',
    aName: 'site-a',
    async stop() {
      await Promise.all([a.stop().catch(() => undefined), b.stop().catch(() => undefined)]);
      await proxy.close();
    },
  };
}

async function poll<T>(what: string, timeoutMs: number, step: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await step();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Waits until the mirror of `disk` on A is in sync with nothing left to ship, and B's replica agrees. */
export async function waitCaughtUp(s: Sites, disk: string, replica: string, timeoutMs = 120_000): Promise<{ a: any; b: any }> {
  return poll(`${disk} → ${replica} caught up`, timeoutMs, async () => {
    const a = await mirrorStatus(s.a, disk);
    if (a.state !== 'in-sync' || !a.consistent || a.lagRecords !== 0 || a.link?.state !== 'connected') return undefined;
    const b = await mirrorStatus(s.b, replica);
    if (b.role !== 'replica' || !b.consistent || b.appliedSeq < a.appliedSeq || b.lagRecords !== 0) return undefined;
    return { a, b };
  });
}

/** Waits for a condition on one site's mirror status. */
export async function waitStatus(d: Ferryd, disk: string, what: string, ok: (st: any) => boolean, timeoutMs = 60_000): Promise<any> {
  return poll(`${disk}: ${what}`, timeoutMs, async () => {
    const st = await mirrorStatus(d, disk);
    return ok(st) ? st : undefined;
  });
}

/** The replica's file on B (a virtual disk in B's default pool). */
export async function diskPath(d: Ferryd, disk: string): Promise<string> {
  const r = await d.api('GET', `/v1/disks/${disk}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.path as string;
}

/**
 * At cleanup, stops both sites gracefully (SIGTERM), each within `ms`: a site that does not exit
 * in time is killed (so a hung shutdown never hangs the test run) and reported as a failure of
 * the cleanup, with its last log lines. Register it after startSites (hooks run last-in first-out,
 * so this runs while the proxy still carries the link).
 */
export function stopSitesBounded(cleanup: Cleanup, s: Sites, ms = 20_000): void {
  cleanup.defer(async () => {
    const problems: string[] = [];
    for (const [name, d] of [['site A', s.a], ['site B', s.b]] as const) {
      if (d.proc.exitCode !== null || d.proc.signalCode !== null) continue;
      const stopping = d.stop();
      let timer: NodeJS.Timeout | undefined;
      const hung = await Promise.race([stopping.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), ms)))]);
      clearTimeout(timer);
      if (!hung) continue;
      const tail = (d.stdout + d.stderr).trim().split('\n').slice(-15).join('\n');
      d.proc.kill('SIGKILL');
      await stopping;
      problems.push(`${name} did not exit within ${ms / 1000} s of SIGTERM (killed); its last log lines:\n${tail}`);
    }
    if (problems.length) throw new Error(problems.join('\n'));
  });
}

/** qemu-io against an NBD URI: the commands in one run of the raw format (`readOnly`: opened read-only, as a replica must be). */
export function qemuIo(uri: string, commands: string[], timeoutMs = 120_000, readOnly = false): Promise<RunResult> {
  return run(requireTool('qemu-io'), [...(readOnly ? ['-r'] : []), '-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri], { timeoutMs });
}

/** qemu-io that must succeed: exit 0, and nothing failed (no error, no pattern mismatch) in its output, which it returns. */
export async function qemuIoOk(uri: string, commands: string[], timeoutMs = 120_000, readOnly = false): Promise<string> {
  const r = await qemuIo(uri, commands, timeoutMs, readOnly);
  const out = r.stdout + r.stderr;
  assert.ok(r.code === 0 && !/failed|error|Pattern verification/i.test(out), `qemu-io ${commands.join('; ')}: exit ${r.code}\n${out}`);
  return out;
}

/**
 * Sites A and B dialling each other through a WAN proxy each (A → B: `proxy`; B → A: `back`,
 * in front of A's fixed replication port, given to B as `peer set` does), so every byte
 * between them is counted and either site can restart on its ports; stopped (bounded) at cleanup.
 */
export async function startSitesBothWays(cleanup: Cleanup): Promise<Sites & { back: WanProxy }> {
  const aPort = await freePort();
  const s = await startSites(cleanup, { aArgs: ['--repl', `127.0.0.1:${aPort}`] });
  const back = await WanProxy.start({ targetPort: aPort });
  cleanup.defer(() => back.close());
  stopSitesBounded(cleanup, s);
  await cliJson(s.b, ['peer', 'set', s.aName, '--address', `127.0.0.1:${back.port}`]);
  return { ...s, back };
}

/** A disk's DR state (`GET /v1/disks/{disk}/dr`), checked against its schema. */
export async function drOf(d: Ferryd, disk: string): Promise<any> {
  const r = await d.api('GET', `/v1/disks/${disk}/dr`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assertSchema(DrSchema, r.body, `GET /v1/disks/${disk}/dr`);
  return r.body;
}
