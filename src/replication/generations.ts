// Generation identifiers of a disk in a mirror relationship (like DRBD's data generation
// UUIDs). Each site keeps, per disk, a bounded history of random 64-bit ids, oldest first;
// the last one is the disk's current generation. A new one starts at every promote,
// switchover and resync start, and at the first write a primary takes while its link is
// down (from then on it may hold writes its peer never had). A replica adopts its primary's
// history at each attach. When the sites meet, the relation of their data is decided from
// the two histories alone, by relate():
//
//   row  local current vs peer history          peer current vs local history   relation      meaning
//   1    either history empty                   -                               none          nothing known yet (a new replica, an old ferryd): take the primary's
//   2    local current == peer current          -                               same          no divergence: resume where the replica's durable position is
//   3    found in peer's, not its last          -                               peer-ahead    the peer moved on from our current: we are stale
//   4    not found in peer's                    found in local's, not its last  local-ahead   we moved on from the peer's current: the peer is stale
//   5    not found in peer's                    not found in local's, but the   split-brain   both moved on from a common ancestor: both took writes the
//                                               histories share an id                         other never had; never resolved silently
//   6    not found in peer's                    not found, nothing shared       unrelated     not the same disk's history (or it fell out of the bound)
//
// (Row 3 and row 4 cannot both hold: a history holds each id once, and two histories
// each holding the other's current as a non-last entry would need the ids in both orders.)
// What each site does with the relation depends on its role; see control/dr-control.ts.
import crypto from 'node:crypto';

/** How many generations a disk keeps (oldest dropped first). */
export const GENERATIONS_MAX = 32;

export type GenerationReason = 'create' | 'promote' | 'switchover' | 'resync' | 'diverged';

export interface Generation {
  /** 16 lowercase hex digits (64 random bits). */
  id: string;
  reason: GenerationReason;
  atMs: number;
}

export type Relation = 'none' | 'same' | 'peer-ahead' | 'local-ahead' | 'split-brain' | 'unrelated';

const reasons = new Set<string>(['create', 'promote', 'switchover', 'resync', 'diverged']);
const idPattern = /^[0-9a-f]{16}$/;

export function newGeneration(reason: GenerationReason, atMs = Date.now()): Generation {
  return { id: crypto.randomBytes(8).toString('hex'), reason, atMs };
}

/** The history with `g` appended as the current generation, bounded to GENERATIONS_MAX. */
export function appendGeneration(history: readonly Generation[], g: Generation): Generation[] {
  return [...history, g].slice(-GENERATIONS_MAX);
}

export function currentGeneration(history: readonly Generation[]): Generation | null {
  return history.length ? history[history.length - 1]! : null;
}

/** The relation of two histories (oldest first), by the table at the head of this file. Pure. */
export function relate(local: readonly Generation[], peer: readonly Generation[]): Relation {
  if (local.length === 0 || peer.length === 0) return 'none'; // row 1
  const localNow = local[local.length - 1]!.id;
  const peerNow = peer[peer.length - 1]!.id;
  if (localNow === peerNow) return 'same'; // row 2
  if (peer.some((g) => g.id === localNow)) return 'peer-ahead'; // row 3
  if (local.some((g) => g.id === peerNow)) return 'local-ahead'; // row 4
  const localIds = new Set(local.map((g) => g.id));
  return peer.some((g) => localIds.has(g.id)) ? 'split-brain' : 'unrelated'; // rows 5, 6
}

/** A history as a peer sent it (frame metadata): validated, or null when malformed or absent. */
export function parseHistory(v: unknown): Generation[] | null {
  if (!Array.isArray(v) || v.length > GENERATIONS_MAX) return null;
  const out: Generation[] = [];
  const seen = new Set<string>();
  for (const x of v) {
    if (typeof x !== 'object' || x === null) return null;
    const { id, reason, atMs } = x as Record<string, unknown>;
    if (typeof id !== 'string' || !idPattern.test(id) || seen.has(id)) return null;
    if (typeof reason !== 'string' || !reasons.has(reason)) return null;
    if (typeof atMs !== 'number' || !Number.isSafeInteger(atMs) || atMs < 0) return null;
    seen.add(id);
    out.push({ id, reason: reason as GenerationReason, atMs });
  }
  return out;
}
