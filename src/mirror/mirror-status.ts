// What status says of a mirror, at either site (the primary's Mirror, the replica's
// ReplicaControl): the shape the API's MirrorSchema describes.
import type { SyncMode } from './sync-engine.js';
import type { MirrorPolicy } from './mirror-policy.js';
import type { RpoStatus } from './rpo-watch.js';
import type { VerifyProgressStatus } from './verify.js';

export type MirrorState = 'syncing' | 'in-sync' | 'paused' | 'bitmap' | 'resyncing';

/** The replication link of a remote mirror, as status shows it. */
export interface LinkStatus {
  state: 'connecting' | 'connected' | 'down';
  peer: string;
  lastError: string | null;
  bytesPerSec: number;
  shippedBytes: number;
  reconnects: number;
}

/** A test failover (DR drill) of a replica at the mirror site (src/control/drill-control.ts); the primary site learns it over the link. */
export interface TestFailoverStatus {
  export: string;
  startedAt: string;
  /** The newest record (in the primary site's numbering) of the image the test started from. */
  seq: number;
  /** running; lost: the scratch area could not preserve what replication overwrote (reason); ended: a restart of the mirror site ended it (reason). */
  state: 'running' | 'lost' | 'ended';
  reason: string | null;
  scratchBytes: number;
  scratchUsedBytes: number;
}

export interface MirrorStatus {
  disk: string;
  target: string;
  /**
   * A consistency group's mirror: each member's file or replica, whether it is copied yet, and
   * its share of lagRecords/lagBytes (the records for that member not yet applied, their staging
   * bytes; null while unknown). Set by the control layer.
   */
  members?: Array<{ disk: string; target: string; synced: boolean; lagRecords: number | null; lagBytes: number | null }>;
  state: MirrorState;
  consistent: boolean;
  syncMode: SyncMode;
  syncProgress: number;
  syncBytes: number;
  syncBytesPerSec: number;
  syncEtaSeconds: number | null;
  syncError: string | null;
  lagRecords: number;
  lagBytes: number;
  lagSeconds: number;
  appliedSeq: number;
  committerError: string | null;
  lastSwapPauseMs: number | null;
  /** primary: this site holds the disk; replica: this site holds the mirror of a peer's disk. */
  role: 'primary' | 'replica';
  link: LinkStatus | null;
  policy: MirrorPolicy | null;
  /** Bytes marked dirty while the mirror fell back to its bitmap, still to resync. */
  dirtyBytes: number;
  /** A replica being resynced: the consistent image `mirror promote` falls back to (its undo log). */
  fallback: { seq: number; undoBytes: number } | null;
  /** The recovery point objective: target, whether met, the newest image's time (null: neither known nor set). */
  rpo: RpoStatus | null;
  /** A `mirror verify` running now: how far it got. */
  verify: VerifyProgressStatus | null;
  /** A test failover of the replica at the mirror site, as that site reported it; null when none. */
  test: TestFailoverStatus | null;
}

