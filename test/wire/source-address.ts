// Helpers for the listener-limit and memory-bound wire tests: connections from a chosen
// loopback source address (all of 127/8 is loopback, so 127.0.0.2, 127.0.0.3 … are distinct
// clients to the server's per-address limits), the raw NBD client of raw-nbd.ts over such a
// connection, ferryd's RSS, and its JSON log lines.
import fs from 'node:fs';
import net from 'node:net';
import { RawNbd } from './raw-nbd.js';

/** A TCP connection from `localAddress`; rejects when it cannot be made within timeoutMs. */
export function connectFrom(localAddress: string, host: string, port: number, timeoutMs = 10_000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, localAddress, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connect from ${localAddress} timed out`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** The raw NBD client of raw-nbd.ts on a connection from `localAddress` (greeting not yet read). */
export async function rawNbdFrom(localAddress: string, host: string, port: number): Promise<RawNbd> {
  const socket = await connectFrom(localAddress, host, port);
  // RawNbd's constructor is private to keep tests on its connect helpers; this one only adds a source address.
  return new (RawNbd as unknown as new (s: net.Socket) => RawNbd)(socket);
}

/** A raw NBD client from `localAddress`, negotiated and attached to `disk` (simple replies). */
export async function attachedFrom(localAddress: string, host: string, port: number, disk: string): Promise<RawNbd> {
  const c = await rawNbdFrom(localAddress, host, port);
  await c.handshake();
  await c.go(disk);
  return c;
}

/** Resident memory of a process, from /proc/PID/status. */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

/** ferryd's JSON log lines (stderr) whose message matches `msg`. */
export function logLines(stderr: string, msg: RegExp): Array<Record<string, any>> {
  const out: Array<Record<string, any>> = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const o = JSON.parse(line) as Record<string, any>;
      if (typeof o.msg === 'string' && msg.test(o.msg)) out.push(o);
    } catch {
      // a line cut by the end of the buffer
    }
  }
  return out;
}

/** Runs `fn` over `items` with at most `width` at once. */
export async function inWaves<T, R>(items: T[], width: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}
