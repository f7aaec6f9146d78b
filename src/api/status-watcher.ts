// Turns ferryd's status into events without hooks in the lower layers: once a second it
// reads what the API's GET routes show (disks, mirrors, staging areas), compares it with
// the previous reading and publishes what changed (diffStatus). So an event says what an
// API client polling every second would have seen change; a change undone within the same
// second is not seen.
//
// Events (the `type` of each, and its fields besides id, type, at):
//   disk.state          disk, from, to ('online' | 'unavailable'), error?
//   mirror.state        disk, role, from, to (a mirror state; null: no mirror: created or removed)
//   mirror.consistency  disk, role, consistent
//   mirror.link         disk, peer, from, to ('connecting' | 'connected' | 'down'), error
//   mirror.rpo          disk, met, targetSeconds, exposureSeconds
//   staging.copy        disk, path, healthy, problem (a copy failed: healthy false; repaired: true)
//   staging.failed      disk, failed (no copy left: writes fail)
import type { Logger } from 'pino';
import { systemClock, type Clock } from '../clock.js';
import type { Disk, Mirror, Staging } from './types.js';

/** One reading of the status the watcher compares. */
export interface StatusReading {
  disks: Array<Pick<Disk, 'name' | 'state' | 'error'>>;
  mirrors: Array<Pick<Mirror, 'disk' | 'role' | 'state' | 'consistent' | 'link' | 'rpo'>>;
  staging: Array<Pick<Staging, 'disk' | 'copies' | 'failed'>>;
}

export interface StatusChange {
  type: string;
  fields: Record<string, unknown>;
}

/** What changed from `prev` to `next`, in a stable order (disks, mirrors, staging; by name). */
export function diffStatus(prev: StatusReading, next: StatusReading): StatusChange[] {
  const out: StatusChange[] = [];
  const disks = new Map(prev.disks.map((d) => [d.name, d]));
  for (const d of next.disks) {
    const p = disks.get(d.name);
    if (p && p.state !== d.state) out.push({ type: 'disk.state', fields: { disk: d.name, from: p.state, to: d.state, ...(d.error ? { error: d.error } : {}) } });
  }
  const mirrors = new Map(prev.mirrors.map((m) => [m.disk, m]));
  const nextMirrors = new Set(next.mirrors.map((m) => m.disk));
  for (const m of next.mirrors) {
    const p = mirrors.get(m.disk);
    if (!p || p.role !== m.role) {
      out.push({ type: 'mirror.state', fields: { disk: m.disk, role: m.role, from: null, to: m.state } });
      continue;
    }
    if (p.state !== m.state) out.push({ type: 'mirror.state', fields: { disk: m.disk, role: m.role, from: p.state, to: m.state } });
    if (p.consistent !== m.consistent) out.push({ type: 'mirror.consistency', fields: { disk: m.disk, role: m.role, consistent: m.consistent } });
    if (m.link && (p.link?.state ?? null) !== m.link.state) {
      out.push({ type: 'mirror.link', fields: { disk: m.disk, peer: m.link.peer, from: p.link?.state ?? null, to: m.link.state, error: m.link.lastError } });
    }
    const met = m.rpo?.met ?? null;
    if (met !== null && (p.rpo?.met ?? null) !== met) {
      out.push({ type: 'mirror.rpo', fields: { disk: m.disk, met, targetSeconds: m.rpo!.targetSeconds, exposureSeconds: m.rpo!.exposureSeconds } });
    }
  }
  for (const p of prev.mirrors) if (!nextMirrors.has(p.disk)) out.push({ type: 'mirror.state', fields: { disk: p.disk, role: p.role, from: p.state, to: null } });
  const staging = new Map(prev.staging.map((s) => [s.disk, s]));
  for (const s of next.staging) {
    const p = staging.get(s.disk);
    if (!p) continue;
    const copies = new Map(p.copies.map((c) => [c.path, c]));
    for (const c of s.copies) {
      const pc = copies.get(c.path);
      if (pc && pc.healthy !== c.healthy) out.push({ type: 'staging.copy', fields: { disk: s.disk, path: c.path, healthy: c.healthy, problem: c.problem ?? null } });
    }
    if (p.failed !== s.failed) out.push({ type: 'staging.failed', fields: { disk: s.disk, failed: s.failed } });
  }
  return out;
}

/** Reads the status every intervalMs and publishes the changes; read() failures are logged once until one succeeds. */
export class StatusWatcher {
  private prev: StatusReading | null = null;
  private timer: { cancel(): void } | null = null;
  private failing = false;
  private stopped = false;

  constructor(
    private readonly read: () => StatusReading | null,
    private readonly publish: (change: StatusChange) => void,
    private readonly log: Logger,
    private readonly clock: Clock = systemClock,
    private readonly intervalMs = 1000,
  ) {}

  start(): void {
    this.stopped = false;
    this.arm();
  }

  /** One comparison now (the timer calls it; tests too). */
  tick(): void {
    let next: StatusReading | null;
    try {
      next = this.read();
      if (this.failing) this.log.info('status watcher reads the status again');
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.log.warn({ err: String(err) }, 'status watcher could not read the status: no status events until it can');
      this.failing = true;
      return;
    }
    if (next === null) return; // not ready (ferryd starting)
    if (this.prev) for (const c of diffStatus(this.prev, next)) this.publish(c);
    this.prev = next;
  }

  private arm(): void {
    if (this.stopped) return;
    this.timer = this.clock.timeout(this.intervalMs, () => {
      this.tick();
      this.arm();
    });
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }
}
