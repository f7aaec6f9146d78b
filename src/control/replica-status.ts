// The status of one replica, in the shape of a mirror's status, as the mirror site sees it:
// role 'replica', target the source; the lag from the primary site's last frame, grown by the
// link's silence; the RPO from the target the primary site last sent.
import { judgeRpo, type RpoStatus } from '../mirror/rpo-watch.js';
import type { MirrorStatus } from '../mirror/mirror.js';
import type { ReplicaHandle } from '../replication/receiver.js';
import type { UndoGuardStore } from '../replication/undo-guard-store.js';
import type { ReplicaRow } from './store.js';

/** Silence after which the link counts as down here (the primary site sends a heartbeat every second). */
const linkSilenceMsMax = 5000;

/**
 * The RPO as the mirror site sees it: the target the primary site last sent, and the newest
 * image held here (every write the primary acknowledged before it). Breaches are counted and
 * logged at the primary site, which watches the target (rpo-watch.ts).
 */
function replicaRpo(targetMs: number | null, imageAtMs: number | null): RpoStatus | null {
  if (targetMs === null && imageAtMs === null) return null;
  return { ...judgeRpo(targetMs, imageAtMs, Date.now()), breachSeconds: null, breaches: 0 };
}

/** `guard`: the replica's undo guard while a resync rewrites it (its fallback image). */
export function replicaStatus(name: string, h: ReplicaHandle, row: ReplicaRow, guard: UndoGuardStore | undefined): MirrorStatus {
  const j = h.staged.journal;
  const stats = j.stats();
  const silentMs = h.link.lastHeardMs ? Date.now() - h.link.lastHeardMs : 0;
  // The primary site's figures as of its last frame; while it is silent, the lag can only have grown by the silence.
  // Records: what the primary site had written at its last frame, less what is durable here.
  // Bytes and seconds: the primary site's figures from that frame, growing by the silence
  // while the link is down (it may be writing all along).
  const lag = h.link.originLag ?? { records: 0, bytes: 0, seconds: 0 };
  const lagRecords = Math.max(0, h.link.originHeadSeq - j.durableSeq);
  // The primary site sends at least a heartbeat a second: a silent session is a dead link.
  const live = h.link.connected && silentMs < linkSilenceMsMax;
  const behind = lagRecords > 0 || !live;
  const staleS = live ? 0 : silentMs / 1000;
  return {
    disk: name,
    target: `${row.peer}:${row.origin_disk}`,
    state: h.staged.committer.isPaused ? 'paused' : row.synced ? 'in-sync' : 'syncing',
    consistent: row.synced === 1,
    syncMode: 'full',
    syncProgress: row.synced ? 1 : 0,
    syncBytes: 0,
    syncBytesPerSec: 0,
    syncEtaSeconds: null,
    syncError: null,
    lagRecords,
    lagBytes: behind ? lag.bytes : 0,
    lagSeconds: behind ? lag.seconds + staleS : 0,
    appliedSeq: h.staged.committer.position.nextSeq - 1,
    committerError: h.staged.committer.lastError ?? (stats.copies.every((c) => !c.healthy) ? 'staging area failed' : null),
    lastSwapPauseMs: null,
    role: 'replica',
    link: {
      state: live ? 'connected' : 'down',
      peer: row.peer,
      lastError: live || !h.link.lastHeardMs ? null : `nothing heard from ${row.peer} for ${Math.round(silentMs / 1000)} s`,
      bytesPerSec: 0,
      shippedBytes: h.link.receivedBytes,
      reconnects: 0,
    },
    policy: null,
    dirtyBytes: 0,
    fallback: guard ? { seq: guard.undo.baseSeq, undoBytes: guard.undo.stats().bytes } : null,
    rpo: replicaRpo(h.link.originRpoMs, row.synced === 1 && !guard ? Date.now() - (behind ? lag.seconds + staleS : 0) * 1000 : null),
    verify: null,
    test: h.test?.() ?? null,
  };
}
