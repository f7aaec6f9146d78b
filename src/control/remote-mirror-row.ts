// The mirror row a disk gets when it becomes the primary of a peer's disk without a mirror
// create (a switchover's take-over, a reconnect's survivor), from the policy the other site
// sent, and the peer address such a site learns from the session that asked it.
import { parsePolicy, type MirrorPolicy } from '../mirror/mirror-policy.js';
import type { MirrorRow } from './store.js';

/** A mirror's policy as it is sent to the site that takes it over (policyOf reads it there). */
export function policyOfRow(row: MirrorRow): MirrorPolicy {
  return { onFull: row.on_full, maxLagBytes: row.max_lag_bytes, maxLagMs: row.max_lag_ms, bandwidth: row.bandwidth, compress: row.compress, rpoMs: row.rpo_ms };
}

/** The old primary's mirror policy, as it sent it; the remote defaults for anything malformed. */
export function policyOf(v: unknown): MirrorPolicy {
  const p = parsePolicy({}, true);
  if (typeof v !== 'object' || v === null) return p;
  const x = v as Record<string, unknown>;
  const count = (n: unknown): number | null => (typeof n === 'number' && Number.isSafeInteger(n) && n > 0 ? n : null);
  return {
    onFull: x.onFull === 'bitmap' || x.onFull === 'throttle' || x.onFull === 'fail' ? x.onFull : p.onFull,
    maxLagBytes: count(x.maxLagBytes),
    maxLagMs: count(x.maxLagMs),
    bandwidth: count(x.bandwidth) ?? 0,
    compress: x.compress === 'none' || x.compress === 'zstd' ? x.compress : p.compress,
    rpoMs: count(x.rpoMs),
  };
}

/**
 * The mirror row of a disk that becomes the primary of `peer:originDisk`: a replica that took
 * over (in sync: no copy), or the survivor of a reconnect (`delta`: its sync copies the changed
 * regions), with the policy the other site sent.
 */
export function newPrimaryRow(disk: string, peer: string, originDisk: string, p: MirrorPolicy, delta = false): MirrorRow {
  const label = `${peer}:${originDisk}`;
  return {
    disk,
    target: label,
    path: `remote:${label}`,
    created_file: 0,
    sync_mode: 'full',
    sync_cursor: 0,
    sync_done: delta ? 0 : 1,
    target_zero: 0,
    paused: 0,
    created_at: Date.now(),
    on_full: p.onFull,
    max_lag_bytes: p.maxLagBytes,
    max_lag_ms: p.maxLagMs,
    bandwidth: p.bandwidth,
    compress: p.compress,
    resync: 0,
    rpo_ms: p.rpoMs,
    delta: delta ? 1 : 0,
  };
}

export function hostPort(address: string, port: number): string {
  const host = address.startsWith('::ffff:') ? address.slice(7) : address;
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
