// The disaster-recovery rows of the metadata store (table dr_disks, one per disk in a mirror
// relationship): the disk's generation history (replication/generations.ts), whether it is
// fenced or in split brain, whether this primary has started a generation since its link
// went down (diverged), and, after a promote, the former primary whose attaches are answered
// from the history. Every change is one statement or one transaction of the store; the
// row goes with its disk (ON DELETE CASCADE).
import { parseHistory, type Generation } from '../replication/generations.js';
import type { MetadataStore } from './store.js';

export type DrState = 'normal' | 'fenced' | 'split-brain' | 'switching';

export interface DrRow {
  disk: string;
  generations: Generation[];
  state: DrState;
  stateReason: string | null;
  stateAtMs: number | null;
  diverged: boolean;
  /** While switching over: the generation the reversed roles start (JSON), else null. */
  pending: Generation | null;
  peer: string | null;
  peerDisk: string | null;
  /**
   * At a site reconnecting as the replica of its peer (control/reconnect.ts): the survivor's disk
   * it waits for, and the policy of the mirror it dropped (sent again by a retry; null: none).
   */
  reconnect: { peer: string; peerDisk: string; policy: unknown } | null;
}

interface RawRow {
  disk: string;
  generations: string;
  state: DrState;
  state_reason: string | null;
  state_at: number | null;
  diverged: number;
  pending: string | null;
  peer: string | null;
  peer_disk: string | null;
  reconnect: string | null;
}

export class DrStore {
  constructor(private readonly store: MetadataStore) {}

  get(disk: string): DrRow | undefined {
    const r = this.store.db.prepare('SELECT * FROM dr_disks WHERE disk = ?').get(disk) as RawRow | undefined;
    if (!r) return undefined;
    const parsed = safeJson(r.generations);
    return {
      disk: r.disk,
      // A history that cannot be read is an empty one: the relation is then 'none' and nothing is decided from it.
      generations: parseHistory(parsed) ?? [],
      state: r.state,
      stateReason: r.state_reason,
      stateAtMs: r.state_at,
      diverged: r.diverged === 1,
      pending: r.pending !== null ? (parseHistory(safeJson(`[${r.pending}]`))?.[0] ?? null) : null,
      peer: r.peer,
      peerDisk: r.peer_disk,
      reconnect: parseReconnect(r.reconnect),
    };
  }

  /** Writes the whole row (insert or replace). */
  put(row: DrRow): void {
    this.store.db
      .prepare(
        `INSERT INTO dr_disks (disk, generations, state, state_reason, state_at, diverged, pending, peer, peer_disk, reconnect)
         VALUES (@disk, @generations, @state, @state_reason, @state_at, @diverged, @pending, @peer, @peer_disk, @reconnect)
         ON CONFLICT(disk) DO UPDATE SET generations = excluded.generations, state = excluded.state, state_reason = excluded.state_reason,
           state_at = excluded.state_at, diverged = excluded.diverged, pending = excluded.pending, peer = excluded.peer, peer_disk = excluded.peer_disk,
           reconnect = excluded.reconnect`,
      )
      .run({
        disk: row.disk,
        generations: JSON.stringify(row.generations),
        state: row.state,
        state_reason: row.stateReason,
        state_at: row.stateAtMs,
        diverged: row.diverged ? 1 : 0,
        pending: row.pending ? JSON.stringify(row.pending) : null,
        peer: row.peer,
        peer_disk: row.peerDisk,
        reconnect: row.reconnect ? JSON.stringify(row.reconnect) : null,
      });
  }

  /** Runs `fn` in one transaction of the store (a row change together with another table's). */
  transaction(fn: () => void): void {
    this.store.db.transaction(fn)();
  }

  static empty(disk: string): DrRow {
    return { disk, generations: [], state: 'normal', stateReason: null, stateAtMs: null, diverged: false, pending: null, peer: null, peerDisk: null, reconnect: null };
  }
}

function parseReconnect(text: string | null): DrRow['reconnect'] {
  const v = text === null ? null : safeJson(text);
  if (typeof v !== 'object' || v === null) return null;
  const { peer, peerDisk, policy } = v as Record<string, unknown>;
  return typeof peer === 'string' && typeof peerDisk === 'string' ? { peer, peerDisk, policy: policy ?? null } : null;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
