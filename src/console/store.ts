// The console's view of ferryd, polled from the documented API once a second: GET /v1/disks
// and GET /v1/mirrors (two requests a second, about 1 KiB per disk each), plus GET
// /v1/disks/{name}/staging for the disk page open (one more). For each disk it keeps 15
// minutes of samples (900) for the charts: write throughput (from the disk's write byte
// counter), lag in seconds and bytes, and link throughput (a remote mirror's).
import { api, ApiFailure } from './api.js';
import type { Disk, Mirror, Staging } from '../api/types.js';
import type { ConsoleEvent } from './events.js';

export const historyMax = 900;
export const eventsKept = 500;

export interface History {
  t: number[];
  writeBps: Array<number | null>;
  lagSeconds: Array<number | null>;
  lagBytes: Array<number | null>;
  linkBps: Array<number | null>;
}

export interface ConsoleState {
  disks: Disk[];
  mirrors: Map<string, Mirror>;
  staging: Staging | null;
  history: Map<string, History>;
  events: ConsoleEvent[];
  eventsConnected: boolean;
  eventsError: string | null;
  pollError: ApiFailure | null;
  polledAt: number;
  /** Polls done (shown in the page's data-polls: what a test waits on). */
  polls: number;
}

export const state: ConsoleState = {
  disks: [],
  mirrors: new Map(),
  staging: null,
  history: new Map(),
  events: [],
  eventsConnected: false,
  eventsError: null,
  pollError: null,
  polledAt: 0,
  polls: 0,
};

const listeners = new Set<() => void>();
export function subscribe(fn: () => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}
export function changed(): void {
  for (const fn of listeners) fn();
}

const lastWrite = new Map<string, { at: number; bytes: number }>();

function push<T>(a: T[], v: T): void {
  a.push(v);
  if (a.length > historyMax) a.shift();
}

/** One poll: disks, mirrors, and the staging area of `stagingDisk` (the disk page open). */
export async function poll(stagingDisk: string | null): Promise<void> {
  try {
    const [disks, mirrors] = await Promise.all([api<Disk[]>('GET', '/v1/disks'), api<Mirror[]>('GET', '/v1/mirrors')]);
    let staging: Staging | null = null;
    if (stagingDisk) staging = await api<Staging>('GET', `/v1/disks/${encodeURIComponent(stagingDisk)}/staging`).catch(() => null);
    const now = Date.now() / 1000;
    state.disks = disks;
    state.mirrors = new Map(mirrors.map((m) => [m.disk, m]));
    state.staging = staging;
    for (const d of disks) {
      let h = state.history.get(d.name);
      if (!h) state.history.set(d.name, (h = { t: [], writeBps: [], lagSeconds: [], lagBytes: [], linkBps: [] }));
      const m = state.mirrors.get(d.name);
      const prev = lastWrite.get(d.name);
      const bytes = d.stats?.writeBytes ?? null;
      const writeBps = prev && bytes !== null && now > prev.at ? Math.max(0, (bytes - prev.bytes) / (now - prev.at)) : null;
      if (bytes !== null) lastWrite.set(d.name, { at: now, bytes });
      push(h.t, now);
      push(h.writeBps, writeBps);
      push(h.lagSeconds, m ? m.lagSeconds : null);
      push(h.lagBytes, m ? m.lagBytes : null);
      push(h.linkBps, m?.link ? m.link.bytesPerSec : null);
    }
    for (const name of [...state.history.keys()]) if (!disks.some((d) => d.name === name)) state.history.delete(name);
    state.pollError = null;
  } catch (err) {
    state.pollError = err instanceof ApiFailure ? err : new ApiFailure(0, 'INTERNAL', String(err));
  }
  state.polledAt = Date.now();
  state.polls++;
  document.body.dataset.polls = String(state.polls);
  changed();
}

export function addEvent(e: ConsoleEvent): void {
  state.events.push(e);
  if (state.events.length > eventsKept) state.events.shift();
  changed();
}

export type Role = 'primary' | 'replica' | 'unmirrored';

export function roleOf(m: Mirror | undefined): Role {
  return m ? m.role : 'unmirrored';
}

/**
 * How bad a disk's situation is (higher first in the overview) and why, in words: an
 * unavailable disk, a DR state not normal (fenced, split brain, switching), a link not connected, a failing mirror, a missed RPO, a bitmap or resync, a pause,
 * an inconsistent mirror, a sync; an unmirrored disk just above a healthy mirror.
 */
export function severity(d: Disk, m: Mirror | undefined): { rank: number; problem: string | null } {
  if (d.state === 'unavailable') return { rank: 100, problem: `unavailable${d.error ? `: ${d.error}` : ''}` };
  // A fenced, split-brain or switching disk refuses writes: above everything but unavailable.
  const dr = d.dr ?? m?.dr;
  if (dr && dr.state !== 'normal') return { rank: 95, problem: `DR ${dr.state}${dr.reason ? `: ${dr.reason}` : ''}` };
  if (!m) return { rank: 5, problem: null };
  // A link not connected first: a remote mirror's sync and committer errors are then the link's.
  if (m.link && m.link.state !== 'connected') {
    const why = m.link.lastError ?? m.syncError ?? m.committerError;
    return { rank: 90, problem: `link ${m.link.state}${why ? `: ${why}` : ''}` };
  }
  if (m.syncError || m.committerError) return { rank: 80, problem: `failing: ${m.syncError ?? m.committerError}` };
  if (m.rpo?.met === false) return { rank: 70, problem: 'RPO missed' };
  if (m.state === 'bitmap' || m.state === 'resyncing') return { rank: 60, problem: m.state };
  if (m.state === 'paused') return { rank: 50, problem: 'paused' };
  if (!m.consistent) return { rank: 45, problem: 'not consistent' };
  if (m.state === 'syncing') return { rank: 30, problem: null };
  return { rank: 0, problem: null };
}
