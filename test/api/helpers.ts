// Helpers shared by the API and CLI behaviour tests: raw API calls (with or without a
// token), a snapshot of everything a refused request must leave alone (disks, pools and
// the files under the data directory and pool directories), a raw NBD client that holds
// a disk open, and a port nothing listens on.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { FormatRegistry } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import type { Ferryd } from '../harness.js';

export { waitFor } from '../harness.js';

if (!FormatRegistry.Has('date-time')) FormatRegistry.Set('date-time', (v) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(v) && !Number.isNaN(Date.parse(v)));

/** Asserts that a value matches one of the API's documented schemas. */
export function assertSchema(schema: TSchema, value: unknown, what: string): void {
  const errors = [...Value.Errors(schema, value)].map((e) => `${e.path} ${e.message}`);
  assert.deepEqual(errors, [], `${what}: ${JSON.stringify(value)}`);
}

export interface ApiResult {
  status: number;
  headers: Headers;
  text: string;
  body: any;
}

/** One API call; token null sends no Authorization header at all. */
export async function rawApi(
  d: Ferryd,
  method: string,
  url: string,
  opts: { token?: string | null; authorization?: string; body?: string; contentType?: string } = {},
): Promise<ApiResult> {
  const headers: Record<string, string> = {};
  if (opts.authorization !== undefined) headers.authorization = opts.authorization;
  else if (opts.token !== null) headers.authorization = `Bearer ${opts.token ?? d.token}`;
  if (opts.body !== undefined) headers['content-type'] = opts.contentType ?? 'application/json';
  const res = await fetch(d.apiUrl + url, { method, headers, body: opts.body, signal: AbortSignal.timeout(30_000) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, text, body };
}

/** Asserts the stable error shape {error:{code,message}} with the given status and code. */
export function assertError(r: { status: number; body: any }, status: number, code: string, what = ''): void {
  const ctx = `${what} → ${r.status} ${JSON.stringify(r.body)}`;
  assert.equal(r.status, status, ctx);
  assert.equal(typeof r.body, 'object', ctx);
  assert.equal(r.body?.error?.code, code, ctx);
  assert.equal(typeof r.body.error.message, 'string', ctx);
  assert.ok(r.body.error.message.length > 0, ctx);
}

export function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** name → "size mode [sha256]" for every entry under dir (SQLite's own files by name only). */
function listFiles(dir: string, out: Record<string, string>): void {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    const st = fs.lstatSync(p);
    if (e.isDirectory()) {
      out[p] = 'dir';
      listFiles(p, out);
    } else if (/^ferry\.db(-wal|-shm|-journal)?$/.test(e.name)) {
      out[p] = 'sqlite';
    } else if (e.isFile()) {
      out[p] = `${st.size} ${(st.mode & 0o7777).toString(8)} ${st.mtimeMs} ${st.size <= 64 << 20 ? sha256File(p) : ''}`;
    } else {
      out[p] = `other ${st.mode.toString(8)}`;
    }
  }
}

export interface Snapshot {
  disks: unknown;
  pools: unknown;
  files: Record<string, string>;
}

/** Everything a refused request must leave unchanged. */
export async function snapshot(d: Ferryd, extraDirs: string[] = []): Promise<Snapshot> {
  const disks = await rawApi(d, 'GET', '/v1/disks');
  const pools = await rawApi(d, 'GET', '/v1/pools');
  assert.equal(disks.status, 200);
  assert.equal(pools.status, 200);
  const files: Record<string, string> = {};
  const dirs = new Set([d.dataDir, ...extraDirs, ...(pools.body as Array<{ path: string }>).map((p) => p.path)]);
  for (const dir of dirs) listFiles(dir, files);
  // Statistics and client counts are live values, not state a request could change.
  const stable = (disks.body as Array<Record<string, unknown>>).map(({ stats: _s, clients: _c, ...rest }) => rest);
  return { disks: stable, pools: pools.body, files };
}

export async function assertUnchanged(d: Ferryd, before: Snapshot, what: string, extraDirs: string[] = []): Promise<void> {
  const after = await snapshot(d, extraDirs);
  assert.deepEqual(after.disks, before.disks, `${what}: the disk list changed`);
  assert.deepEqual(after.pools, before.pools, `${what}: the pool list changed`);
  assert.deepEqual(after.files, before.files, `${what}: files changed`);
}

/** Stops ferryd, then removes its data directory and the given scratch directories. */
export async function cleanup(d: Ferryd | undefined, ...dirs: Array<string | undefined>): Promise<void> {
  if (d) await d.stop();
  for (const dir of [d?.dataDir, ...dirs]) if (dir) fs.rmSync(dir, { recursive: true, force: true });
}

/** A TCP port on 127.0.0.1 that nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

const IHAVEOPT = Buffer.from('IHAVEOPT');
const OPT_GO = 7;
const REP_ACK = 1;

/**
 * A minimal NBD client: fixed-newstyle handshake, NBD_OPT_GO for one export, then it
 * just holds the connection in transmission until close() sends NBD_CMD_DISC.
 */
export async function holdNbd(host: string, port: number, exportName: string, timeoutMs = 15_000): Promise<{ close(): Promise<void> }> {
  const sock = net.connect(port, host);
  let buf = Buffer.alloc(0);
  let wake: (() => void) | null = null;
  let failure: Error | null = null;
  sock.on('data', (b: Buffer) => {
    buf = Buffer.concat([buf, b]);
    wake?.();
  });
  sock.on('error', (e) => {
    failure = e;
    wake?.();
  });
  sock.on('close', () => {
    failure ??= new Error('NBD server closed the connection');
    wake?.();
  });
  const timer = setTimeout(() => sock.destroy(new Error('NBD handshake timed out')), timeoutMs);
  const read = async (n: number): Promise<Buffer> => {
    while (buf.length < n) {
      if (failure) throw failure;
      await new Promise<void>((r) => (wake = r));
      wake = null;
    }
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
  try {
    const hello = await read(18);
    assert.equal(hello.subarray(0, 8).toString(), 'NBDMAGIC');
    assert.ok(hello.subarray(8, 16).equals(IHAVEOPT), 'server is not fixed-newstyle');
    const serverFlags = hello.readUInt16BE(16);
    const clientFlags = Buffer.alloc(4);
    clientFlags.writeUInt32BE(serverFlags & 0b11); // FIXED_NEWSTYLE | NO_ZEROES, as offered
    const name = Buffer.from(exportName);
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    const header = Buffer.alloc(16);
    IHAVEOPT.copy(header, 0);
    header.writeUInt32BE(OPT_GO, 8);
    header.writeUInt32BE(data.length, 12);
    sock.write(Buffer.concat([clientFlags, header, data]));
    for (;;) {
      const reply = await read(20);
      const type = reply.readUInt32BE(12);
      const body = await read(reply.readUInt32BE(16));
      if (type === REP_ACK) break;
      if (type & 0x80000000) throw new Error(`NBD_OPT_GO refused (reply type 0x${type.toString(16)}): ${body.subarray(0).toString()}`);
    }
  } catch (err) {
    clearTimeout(timer);
    sock.destroy();
    throw err;
  }
  clearTimeout(timer);
  return {
    close: async () => {
      if (sock.destroyed) return;
      const disc = Buffer.alloc(28);
      disc.writeUInt32BE(0x25609513, 0);
      disc.writeUInt16BE(2, 6); // NBD_CMD_DISC
      const closed = new Promise<void>((resolve) => sock.once('close', () => resolve()));
      sock.end(disc);
      const t = setTimeout(() => sock.destroy(), 5_000);
      await closed;
      clearTimeout(t);
    },
  };
}
