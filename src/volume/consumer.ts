// The consumers of a staging area, behind one interface. Each reads every record once, in
// sequence order (journal/record-cursor.ts), from memory while it keeps up, applies or ships
// it, and checkpoints its durable position; the journal frees only what every consumer is
// past (J4). There are three kinds, one per place a write goes:
//
//   consumer    name       implementation                       makes records durable on
//   primary     'primary'  volume/committer.ts                  the disk's primary device
//   local       'mirror'   volume/committer.ts (with ChunkHolds) a local mirror target
//   remote      'mirror'   replication/remote-stream.ts         the mirror site's staging area (R3)
//
// A staging area has the primary consumer and at most one mirror consumer. What comes next
// fits this shape without changing it: a consistency group (several disks sharing one staging
// area, so one sequence) is one primary consumer per member disk plus one mirror consumer
// for the group, each still reading every record once in order; a switchover turns a remote
// consumer around by stopping it here and starting its counterpart at the other site.
import type { ConsumerPosition } from '../journal/format.js';

export const PRIMARY_CONSUMER = 'primary';
export const MIRROR_CONSUMER = 'mirror';

export interface JournalConsumer {
  /** The position this consumer has made durable on its side (the next record it needs). */
  readonly position: ConsumerPosition;
  readonly isPaused: boolean;
  /** Why the last apply or shipment failed (it is retried with backoff), else null. */
  readonly lastError: string | null;
  /** When the newest record it applied (or the mirror site acknowledged) was written, for lag. */
  appliedTimeMs: number;
  start(): void;
  pause(): void;
  resume(): void;
  /** Resolves at its next progress (records applied or acknowledged). */
  progress(): Promise<void>;
  /** Resolves once every record written so far is durable on its side. */
  drain(): Promise<void>;
  stop(): Promise<void>;
}
