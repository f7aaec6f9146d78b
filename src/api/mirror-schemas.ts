// The API's schemas of mirrors: status (at either site), the results of verify, swap,
// promote and remove, and the policies a request sets. Routes (routes.ts) declare them;
// OpenAPI and the CLI's types (types.ts) come from them.
import { Type } from '@sinclair/typebox';
import { DrSchema } from './dr-routes.js';

/** A test failover (DR drill) of a replica at the mirror site (drill-routes.ts), in the mirror status of both sites. */
export const TestFailoverSchema = Type.Object({
  export: Type.String({ description: 'the NBD export serving the test image' }),
  startedAt: Type.String({ format: 'date-time' }),
  seq: Type.Integer({ description: "the newest record (in the primary site's numbering) of the image the test started from" }),
  state: Type.Union([Type.Literal('running'), Type.Literal('lost'), Type.Literal('ended')], {
    description: 'lost: the scratch area could not preserve what replication overwrote, the export answers EIO (reason); ended: a restart of the mirror site ended the test (reason), cleared by test-end',
  }),
  reason: Type.Union([Type.String(), Type.Null()]),
  scratchBytes: Type.Integer({ description: 'the bound of the scratch area' }),
  scratchUsedBytes: Type.Integer({ description: "bytes of the scratch area in use: old contents preserved for the test and the test's own writes" }),
});

/** Per member of a consistency group's mirror: its file, and whether it is copied yet (one added later is copied alone). */
export const MirrorMemberSchema = Type.Object({
  disk: Type.String(),
  target: Type.String({ description: 'local:PATH of the member\'s file in the mirror\'s directory' }),
  synced: Type.Boolean({ description: 'copied: the member is in the mirror\'s image of the group' }),
  lagRecords: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: "the member's share of the group's lagRecords: records for this member the mirror has not applied yet (null while unknown: more records behind than the journal's ledger of members holds)" }),
  lagBytes: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: 'the staging bytes of those records' }),
});

export const MirrorSchema = Type.Object({
  disk: Type.String({ description: 'the disk, or the consistency group, whose mirror this is' }),
  target: Type.String(),
  members: Type.Optional(Type.Array(MirrorMemberSchema, { description: "a consistency group's mirror: its members (the lag and state above are the group's one order)" })),
  state: Type.Union([Type.Literal('syncing'), Type.Literal('in-sync'), Type.Literal('paused'), Type.Literal('bitmap'), Type.Literal('resyncing')], {
    description: 'bitmap: the staging area overflowed and dirty regions are tracked until the link returns; resyncing: they are being copied',
  }),
  consistent: Type.Boolean({ description: 'the mirror holds an image the disk really had' }),
  syncMode: Type.Union([Type.Literal('full'), Type.Literal('checksum')]),
  syncProgress: Type.Number({ minimum: 0, maximum: 1 }),
  syncBytes: Type.Integer(),
  syncBytesPerSec: Type.Number(),
  syncEtaSeconds: Type.Union([Type.Number(), Type.Null()]),
  syncError: Type.Union([Type.String(), Type.Null()]),
  lagRecords: Type.Integer(),
  lagBytes: Type.Integer(),
  lagSeconds: Type.Number(),
  appliedSeq: Type.Integer(),
  committerError: Type.Union([Type.String(), Type.Null()]),
  lastSwapPauseMs: Type.Union([Type.Number(), Type.Null()]),
  role: Type.Union([Type.Literal('primary'), Type.Literal('replica')], { description: "primary: this site holds the disk; replica: this site holds a peer's disk's mirror" }),
  link: Type.Union([
    Type.Object({
      state: Type.Union([Type.Literal('connecting'), Type.Literal('connected'), Type.Literal('down')]),
      peer: Type.String(),
      lastError: Type.Union([Type.String(), Type.Null()]),
      bytesPerSec: Type.Number(),
      shippedBytes: Type.Integer(),
      reconnects: Type.Integer(),
    }),
    Type.Null(),
  ]),
  policy: Type.Union([
    Type.Object({
      onFull: Type.Union([Type.Literal('bitmap'), Type.Literal('throttle'), Type.Literal('fail')]),
      maxLagBytes: Type.Union([Type.Integer(), Type.Null()]),
      maxLagMs: Type.Union([Type.Integer(), Type.Null()]),
      bandwidth: Type.Integer({ description: 'bytes per second on the link; 0: unlimited' }),
      compress: Type.Union([Type.Literal('zstd'), Type.Literal('none')]),
      rpoMs: Type.Union([Type.Integer(), Type.Null()], { description: 'recovery point objective, ms (null: none)' }),
    }),
    Type.Null(),
  ]),
  dirtyBytes: Type.Integer({ description: 'bytes marked in the dirty-region bitmap, to resync (bitmap policy)' }),
  fallback: Type.Union([
    Type.Object({
      seq: Type.Integer({ description: "the newest record (in the primary site's numbering) of the consistent image kept by the undo log" }),
      undoBytes: Type.Integer({ description: 'size of the undo log' }),
    }),
    Type.Null(),
  ], { description: 'a replica being resynced: the last consistent image `mirror promote` falls back to; null otherwise' }),
  rpo: Type.Union([
    Type.Object({
      targetSeconds: Type.Union([Type.Number(), Type.Null()], { description: 'the RPO target (null: none set)' }),
      met: Type.Union([Type.Boolean(), Type.Null()], { description: 'the newest image is within the target (null: no target)' }),
      exposureSeconds: Type.Union([Type.Number(), Type.Null()], { description: 'now minus the newest image: what a loss of the primary site now would lose (null: no image known)' }),
      newestImageAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'every write acknowledged before this time is in the mirror' }),
      breachSeconds: Type.Union([Type.Number(), Type.Null()], { description: 'how long the target has not been met (null: met); at the mirror site always null (watched at the primary)' }),
      breaches: Type.Integer({ description: 'breaches since this ferryd started (counted at the primary site)' }),
    }),
    Type.Null(),
  ], { description: 'the recovery point: null when neither a target nor an image is known' }),
  verify: Type.Union([
    Type.Object({
      bytes: Type.Integer(),
      bytesDone: Type.Integer(),
      progress: Type.Number({ minimum: 0, maximum: 1 }),
      bytesPerSec: Type.Number(),
      etaSeconds: Type.Union([Type.Number(), Type.Null()]),
      startedAt: Type.String({ format: 'date-time' }),
    }),
    Type.Null(),
  ], { description: 'a `mirror verify` running now: how far it got' }),
  test: Type.Union([TestFailoverSchema, Type.Null()], { description: 'a test failover (DR drill) of the replica at the mirror site, as that site reports it (on both sites); null when none' }),
  dr: Type.Optional(DrSchema),
});

/** The policies a mirror creation or `mirror set` gives (PATCH /v1/disks/{name}/mirror takes them alone). */
export const MirrorPolicyFields = {
  onFull: Type.Optional(Type.Union([Type.Literal('bitmap'), Type.Literal('throttle'), Type.Literal('fail')], { description: 'a full staging area: fall back to a dirty bitmap (remote default), slow writes (local default), or fail them' })),
  maxLag: Type.Optional(Type.String({ minLength: 1, maxLength: 32, description: "slow writes so the mirror is never further behind: a duration (30s) or a size (64M); 'none' clears it (set)" })),
  bandwidth: Type.Optional(Type.String({ minLength: 1, maxLength: 32, description: "rate limit of the link, bytes per second (100M); 'none' clears it (set)" })),
  compress: Type.Optional(Type.Union([Type.Literal('zstd'), Type.Literal('none')], { description: 'payload compression on the link (remote default zstd)' })),
  rpo: Type.Optional(Type.String({ minLength: 1, maxLength: 32, description: "recovery point objective, a duration (30s, 5m): watched, reported, never enforced; 'none' clears it (set)" })),
};

export const MirrorPolicyChange = Type.Object(MirrorPolicyFields, { additionalProperties: false });

/** POST /v1/disks/{name}/mirror/verify. */
export const VerifySchema = Type.Object({
      disk: Type.String(),
      bytesCompared: Type.Integer(),
      regionsVerified: Type.Integer(),
      regionsSkipped: Type.Integer({ description: 'regions written to during every attempt to compare them' }),
      differences: Type.Array(
        Type.Object({
          offset: Type.Integer({ description: "within the disk; for a consistency group, within the member named" }),
          length: Type.Integer(),
          member: Type.Optional(Type.String({ description: "a consistency group's member the range lies in" })),
        }),
      ),
      seconds: Type.Number(),
    });

/** POST /v1/disks/{name}/mirror/swap. */
export const SwapSchema = Type.Object({ disk: Type.String(), primary: Type.String(), mirror: Type.String(), pauseMs: Type.Number() });

/** POST /v1/disks/{name}/mirror/promote. */
export const PromoteSchema = Type.Object({
      disk: Type.String(),
      image: Type.Union([Type.Literal('newest'), Type.Literal('rolled-back'), Type.Literal('as-is')], {
        description: 'newest: every record received was applied; rolled-back: the image from before the interrupted resync; as-is: forced, no consistent image existed',
      }),
      seq: Type.Integer({ description: "the newest record of the primary site's order the disk holds" }),
      restoredBytes: Type.Integer({ description: 'bytes written back from the undo log' }),
    });

/** DELETE /v1/disks/{name}/mirror: the mirror as it was, and what the copy left behind is. */
export const RemovedMirrorSchema = Type.Object({
      ...MirrorSchema.properties,
      copy: Type.Union([Type.Literal('up-to-date'), Type.Literal('as-of-pause'), Type.Literal('incomplete'), Type.Literal('unknown')], {
        description: 'the copy left behind: every record, as of a pause, an unfinished sync, or unknown (forced while the mirror site did not confirm)',
      }),
      unconfirmed: Type.Union([Type.String(), Type.Null()], { description: 'why the mirror site did not confirm, when copy is unknown' }),
    });

