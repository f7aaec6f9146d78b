// The write pipeline in-process (issue 11, item 5): the journal, the admission chain, the
// primary's committer and a second consumer, built by StagedPath.open() on fault-injecting
// stores (src/testing/faulty-store.ts) and driven by a fake clock (src/testing/fake-clock.ts):
// no daemon, no sleeps. Time moves only when a test advances it (past the committer's
// gather delay, a retry backoff, a checkpoint interval).
//
// What fails here: a consumer that applies records out of order, skips one or applies one
// twice (every target logs what it is given, compared with the records in sequence order);
// a write that passes a waiting admission step (the journal must not see it); a checkpoint
// that lists a consumer ahead of what its target has made durable (every checkpoint written
// to the staging area is checked against the target's durable image as it is written).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { FerryError } from '../../src/errors.js';
import { CHECKPOINT_OFFSETS, decodeCheckpoint, recordSpan, type Checkpoint } from '../../src/journal/format.js';
import { Journal, STAGING_BYTES_MIN, type StagedRecord } from '../../src/journal/journal.js';
import { readRecords } from '../../src/journal/record-cursor.js';
import { FakeClock } from '../../src/testing/fake-clock.js';
import { FaultyStore, seededRng, type Rng } from '../../src/testing/faulty-store.js';
import { AdmissionChain, type AdmissionStep, type MirrorGate } from '../../src/volume/admission.js';
import { Committer, PRIMARY_CONSUMER } from '../../src/volume/committer.js';
import { StagedPath } from '../../src/volume/staged-path.js';

const log = pino({ level: 'silent' });
const KiB = 1024;
const MiB = 1024 * KiB;
const DISK = 256 * KiB;
const MIRROR = 'mirror';

// ---- The byte model: what the disk must hold after the writes issued so far, in issue order ----

type OpKind = 'write' | 'zero' | 'trim';

interface Op {
  kind: OpKind;
  offset: number;
  length: number;
  /** Every 32-bit word of a write's payload; 0 for zero and trim. */
  tag: number;
  data: Buffer | null;
}

/** What a target was given, as it landed. */
interface Applied {
  kind: OpKind;
  offset: number;
  length: number;
  tag: number;
}

function tagged(tag: number, length: number): Buffer {
  const word = Buffer.alloc(4);
  word.writeUInt32LE(tag >>> 0);
  return Buffer.alloc(length, word);
}

function applyOp(image: Buffer, op: Op): void {
  if (op.data) op.data.copy(image, op.offset);
  else image.fill(0, op.offset, op.offset + op.length);
}

/**
 * Ops issued to a StagedPath, each one record: op i is record seq i + 1 (the staging areas
 * here are formatted with the first sequence number 1, and ops are issued in call order
 * with no admission wait between, so they are appended in that order).
 */
class Workload {
  readonly ops: Op[] = [];
  readonly model: Buffer;
  private nextTag = 1;

  constructor(
    readonly diskBytes: number,
    readonly rng: Rng,
  ) {
    this.model = Buffer.alloc(diskBytes);
  }

  /** A random op: mostly writes (some zero and trim when `mixed`), 512-byte aligned, up to `maxBytes`. */
  make(mixed = true, maxBytes = 32 * KiB): Op {
    const r = this.rng();
    const length = Math.min(this.diskBytes, 512 * (1 + Math.floor(this.rng() * (maxBytes / 512))));
    const offset = 512 * Math.floor(this.rng() * ((this.diskBytes - length) / 512 + 1));
    const kind: OpKind = !mixed || r < 0.85 ? 'write' : r < 0.95 ? 'zero' : 'trim';
    const tag = kind === 'write' ? this.nextTag++ : 0;
    return { kind, offset, length, tag, data: kind === 'write' ? tagged(tag, length) : null };
  }

  /** A write of exactly `length` bytes at a random 4 KiB-aligned offset. */
  makeExact(length: number): Op {
    const offset = 4096 * Math.floor(this.rng() * ((this.diskBytes - length) / 4096 + 1));
    const tag = this.nextTag++;
    return { kind: 'write', offset, length, tag, data: tagged(tag, length) };
  }

  /** Issues `op` (it joins the model now: the order of calls is the order of records). */
  issue(staged: StagedPath, op: Op, fua = false): Promise<void> {
    this.ops.push(op);
    applyOp(this.model, op);
    if (op.kind === 'write') return staged.write(op.data!, 0, op.length, op.offset, fua);
    if (op.kind === 'zero') return staged.zero(op.offset, op.length, this.rng() < 0.5, fua);
    return staged.trim(op.offset, op.length, fua);
  }

  /** The disk after the first `k` ops. */
  imageAt(k: number, ops: readonly Op[] = this.ops): Buffer {
    const image = Buffer.alloc(this.diskBytes);
    for (let i = 0; i < k; i++) applyOp(image, ops[i]!);
    return image;
  }

  /** The smallest k >= `from` with `image` equal to the disk after the first k ops, or -1. */
  prefixMatch(image: Buffer, from: number): number {
    const img = this.imageAt(from);
    for (let k = from; ; k++) {
      if (img.equals(image)) return k;
      if (k >= this.ops.length) return -1;
      applyOp(img, this.ops[k]!);
    }
  }
}

/** Throws unless `applied` is exactly `ops` in order: one entry per record, none skipped, repeated or swapped. */
function assertAppliedInOrder(applied: readonly Applied[], ops: readonly Op[], target: string): void {
  const n = Math.min(applied.length, ops.length);
  for (let i = 0; i < n; i++) {
    const a = applied[i]!;
    const o = ops[i]!;
    if (a.kind !== o.kind || a.offset !== o.offset || a.length !== o.length || a.tag !== o.tag) {
      assert.fail(`${target}: entry ${i} should be record ${i + 1} (${o.kind} ${o.offset}+${o.length} tag ${o.tag}), got ${a.kind} ${a.offset}+${a.length} tag ${a.tag}`);
    }
  }
  assert.equal(applied.length, ops.length, `${target}: ${applied.length} operations applied for ${ops.length} records`);
}

// ---- Stores ----

/**
 * A target disk that logs what it is given (in the order it lands), counts write attempts
 * with their fake time, and can hold its syncs (a slow flush of the target's cache).
 */
class TargetStore extends FaultyStore {
  readonly applied: Applied[] = [];
  readonly attemptTimes: number[] = [];
  /** Called after each write, zero or trim lands. */
  afterLand: (() => void) | null = null;
  private held: Promise<void> | null = null;

  constructor(
    path: string,
    size: number,
    private readonly clock: FakeClock,
  ) {
    super(path, size);
  }

  /** Syncs wait until the returned function is called. */
  holdSyncs(): () => void {
    let release!: () => void;
    this.held = new Promise((r) => (release = r));
    return () => {
      this.held = null;
      release();
    };
  }

  override async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.attemptTimes.push(this.clock.nowMs());
    await super.write(buf, bufOffset, length, offset);
    this.landed({ kind: 'write', offset, length, tag: buf.readUInt32LE(bufOffset) });
  }

  override async zero(offset: number, length: number): Promise<void> {
    await super.write(Buffer.alloc(length), 0, length, offset);
    this.landed({ kind: 'zero', offset, length, tag: 0 });
  }

  override async trim(offset: number, length: number): Promise<void> {
    await super.write(Buffer.alloc(length), 0, length, offset);
    this.landed({ kind: 'trim', offset, length, tag: 0 });
  }

  override async sync(): Promise<void> {
    while (this.held) await this.held;
    await super.sync();
  }

  private landed(a: Applied): void {
    this.applied.push(a);
    this.afterLand?.();
  }
}

/**
 * A staging copy that checks every checkpoint as it is written: each consumer it lists at
 * nextSeq n must have every record before n durable on its target (the target's durable image
 * is the disk after k ops, k >= n - 1): J4, seen from outside.
 */
class StagingStore extends FaultyStore {
  readonly violations: string[] = [];
  checkpoints = 0;
  private work: Workload | null = null;
  private targets = new Map<string, FaultyStore>();

  watch(work: Workload, targets: Record<string, FaultyStore>): void {
    this.work = work;
    for (const [name, store] of Object.entries(targets)) this.targets.set(name, store);
  }

  override async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    if (this.work && (CHECKPOINT_OFFSETS as readonly number[]).includes(offset)) this.checkCheckpoint(buf.subarray(bufOffset, bufOffset + length));
    return super.write(buf, bufOffset, length, offset);
  }

  private checkCheckpoint(block: Buffer): void {
    const cp = decodeCheckpoint(block);
    if (typeof cp === 'string') {
      this.violations.push(`unreadable checkpoint written: ${cp}`);
      return;
    }
    this.checkpoints++;
    for (const c of cp.consumers) {
      const target = this.targets.get(c.name);
      if (!target) continue;
      if (this.work!.prefixMatch(target.durable, c.nextSeq - 1) < 0) {
        this.violations.push(`checkpoint ${cp.generation} lists ${c.name} at record ${c.nextSeq}, but ${target.path} has not made records < ${c.nextSeq} durable`);
      }
    }
  }
}

/** The checkpoint a recovery would find on `store`'s media now (the valid slot with the highest generation). */
function durableCheckpoint(store: FaultyStore): Checkpoint {
  const found = CHECKPOINT_OFFSETS.map((o) => decodeCheckpoint(store.durable.subarray(o, o + 512))).filter((c): c is Checkpoint => typeof c !== 'string');
  assert.ok(found.length > 0, 'a checkpoint on the media');
  return found.reduce((a, b) => (b.generation > a.generation ? b : a));
}

function durableNextSeq(store: FaultyStore, consumer: string): number {
  const c = durableCheckpoint(store).consumers.find((x) => x.name === consumer);
  assert.ok(c, `consumer ${consumer} in the checkpoint`);
  return c.nextSeq;
}

// ---- The rig: a staged disk on fault-injecting stores, with a fake clock ----

interface Rig {
  clock: FakeClock;
  work: Workload;
  primary: TargetStore;
  staging: StagingStore;
  staged: StagedPath;
}

async function openRig(seed: number, diskBytes = DISK): Promise<Rig> {
  const clock = new FakeClock();
  const work = new Workload(diskBytes, seededRng(seed));
  const primary = new TargetStore('primary', diskBytes, clock);
  const staging = new StagingStore('stg0', STAGING_BYTES_MIN);
  await Journal.format([staging], 'd', PRIMARY_CONSUMER);
  staging.watch(work, { [PRIMARY_CONSUMER]: primary });
  const staged = await StagedPath.open([staging], primary, log, clock);
  await clock.runUntil(staged.start());
  return { clock, work, primary, staging, staged };
}

async function readAll(staged: StagedPath, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  await staged.read(out, 0, size, 0);
  return out;
}

/** Whether a promise has settled, and how; without leaving a rejection unhandled. */
class Tracked {
  done = false;
  error: unknown = null;
  constructor(readonly promise: Promise<unknown>) {
    promise.then(
      () => void (this.done = true),
      (err: unknown) => {
        this.error = err;
        this.done = true;
      },
    );
  }
}

function assertNoViolations(staging: StagingStore): void {
  assert.deepEqual(staging.violations, [], 'no checkpoint listed a consumer ahead of its durable target');
  assert.ok(staging.checkpoints > 0, 'checkpoints were written and checked');
}

// ---- a. Write order and overlap ----

test('overlapping writes land in issue order: reads during the run (even mid-apply) and the primary after a drain equal the model', async () => {
  const { clock, work, primary, staging, staged } = await openRig(1);
  const rng = work.rng;
  // A read at every write the committer lands on the primary, while no client op is in flight:
  // the overlay must hide the half-applied group (newest data wins).
  let quiescent = false;
  let midApplyReads = 0;
  const mismatches: string[] = [];
  primary.afterLand = () => {
    if (!quiescent) return;
    midApplyReads++;
    void readAll(staged, DISK).then(
      (got) => {
        if (quiescent && !got.equals(work.model)) mismatches.push(`read while ${primary.applied.length} operations had landed`);
      },
      (err: Error) => mismatches.push(`read failed: ${err.message}`),
    );
  };
  for (let round = 0; round < 40; round++) {
    quiescent = false;
    const group = Array.from({ length: 1 + Math.floor(rng() * 12) }, () => work.issue(staged, work.make(), rng() < 0.1));
    await Promise.all(group);
    quiescent = true;
    assert.ok((await readAll(staged, DISK)).equals(work.model), `round ${round}: a read after the writes are acknowledged`);
    const at = 512 * Math.floor(rng() * (DISK / 512 - 8));
    const part = Buffer.alloc(4 * KiB);
    await staged.read(part, 0, part.length, at);
    assert.ok(part.equals(work.model.subarray(at, at + part.length)), `round ${round}: a partial read at ${at}`);
    if (rng() < 0.5) {
      // Sometimes past the gather delay (the committer applies part of what is staged), sometimes not.
      await clock.advance(Math.floor(rng() * 40));
      assert.ok((await readAll(staged, DISK)).equals(work.model), `round ${round}: a read after the committer ran`);
    }
  }
  quiescent = false;
  await clock.runUntil(staged.drain());
  assert.equal(staged.journal.writtenSeq, work.ops.length, 'one record per op');
  assert.ok(primary.current.equals(work.model), 'the primary holds the writes applied in issue order');
  assert.ok(primary.durable.equals(work.model), 'and has made them durable (a drain checkpoints after syncing the primary)');
  assert.ok((await readAll(staged, DISK)).equals(work.model));
  assert.equal(staged.overlay.size, 0, 'nothing is left in the overlay');
  assert.ok(midApplyReads > 0, 'reads ran while groups were half applied');
  assert.deepEqual(mismatches, []);
  assertAppliedInOrder(primary.applied, work.ops, 'primary');
  assertNoViolations(staging);
  await clock.runUntil(staged.close());
});

// ---- b. A second consumer; the in-order oracle ----

test('a second consumer applies the same records to its own target: both in sequence order, none skipped', async () => {
  const { clock, work, primary, staging, staged } = await openRig(2);
  const rng = work.rng;
  const journal = staged.journal;
  await journal.addConsumer(MIRROR);
  const mirror = new TargetStore('mirror', DISK, clock);
  staging.watch(work, { [MIRROR]: mirror });
  const handed: number[] = [];
  const mirrorCommitter = new Committer(journal, mirror, log, { consumer: MIRROR, clock, onApplied: (rs) => handed.push(...rs.map((r) => r.seq)) });
  mirrorCommitter.start();
  for (let round = 0; round < 30; round++) {
    await Promise.all(Array.from({ length: 1 + Math.floor(rng() * 16) }, () => work.issue(staged, work.make(), rng() < 0.1)));
    if (rng() < 0.6) await clock.advance(Math.floor(rng() * 60));
    if (rng() < 0.1) await clock.advance(31_000); // past the checkpoint interval
  }
  await clock.runUntil(Promise.all([staged.drain(), mirrorCommitter.drain()]));
  const n = work.ops.length;
  assert.equal(journal.writtenSeq, n);
  assert.ok(primary.current.equals(work.model), 'the primary equals the model');
  assert.ok(mirror.current.equals(work.model), 'the mirror target equals the model');
  assert.ok(mirror.durable.equals(work.model), 'and has made it durable');
  assert.deepEqual(
    handed,
    Array.from({ length: n }, (_, i) => i + 1),
    'the mirror consumer was handed records 1..n once each, in order',
  );
  assertAppliedInOrder(primary.applied, work.ops, 'primary');
  assertAppliedInOrder(mirror.applied, work.ops, 'mirror');
  assert.equal(journal.consumer(MIRROR).nextSeq, n + 1);
  assert.equal(durableNextSeq(staging, MIRROR), n + 1, 'the mirror position is checkpointed on the media');
  assertNoViolations(staging);
  await mirrorCommitter.stop();
  await clock.runUntil(staged.close());
});

test('the in-order check fails for a consumer that skips, repeats or swaps a record', () => {
  const work = new Workload(DISK, seededRng(3));
  for (let i = 0; i < 6; i++) work.ops.push(work.make());
  const right: Applied[] = work.ops.map((o) => ({ kind: o.kind, offset: o.offset, length: o.length, tag: o.tag }));
  assertAppliedInOrder(right, work.ops, 'right');
  const skipped = right.filter((_, i) => i !== 2);
  const repeated = [...right.slice(0, 3), right[2]!, ...right.slice(3)];
  const swapped = [right[0]!, right[2]!, right[1]!, ...right.slice(3)];
  const short = right.slice(0, 5);
  for (const [name, applied] of Object.entries({ skipped, repeated, swapped, short })) {
    assert.throws(() => assertAppliedInOrder(applied, work.ops, name), (e: Error) => e.name === 'AssertionError', name);
  }
});

test('a record handed to a consumer out of sequence is refused before anything reaches its target', async () => {
  const clock = new FakeClock();
  const staging = new FaultyStore('stg0', STAGING_BYTES_MIN);
  await Journal.format([staging], 'd', PRIMARY_CONSUMER);
  const journal = await Journal.open([staging], log);
  const target = new TargetStore('primary', DISK, clock);
  const records: StagedRecord[] = [];
  for (let i = 1; i <= 3; i++) records.push(await journal.append({ type: 1, flags: 0, diskOffset: i * 4096, length: 4096, payload: tagged(i, 4096), durable: true }));
  // A journal that skips record 2: asked for it, it hands out record 3.
  const readRecord = journal.readRecord.bind(journal);
  journal.readRecord = async (seq, pos, prevCrc, reader) => (seq === 2 ? records[2]! : readRecord(seq, pos, prevCrc, reader));
  const committer = new Committer(journal, target, log, { clock });
  committer.start();
  await clock.advance(25); // past the gather delay
  assert.match(committer.lastError ?? '', /in order, without gaps \(J1\)/, 'the record cursor refuses the gap');
  assert.equal(target.applied.length, 0, 'not even record 1 of the step was applied');
  assert.equal(committer.nextSeq, 1);
  assert.equal(journal.consumer(PRIMARY_CONSUMER).nextSeq, 1, 'the position did not move');
  // The journal heals; past the backoff the committer applies 1, 2, 3.
  journal.readRecord = readRecord;
  await clock.runUntil(committer.drain());
  assert.equal(committer.lastError, null);
  assert.deepEqual(
    target.applied.map((a) => a.tag),
    [1, 2, 3],
  );
  await committer.stop();
  await journal.close();
});

// ---- c. Admission ----

/** A step that logs being asked and waits once, until released. */
class OnceStep implements AdmissionStep {
  release: () => void = () => undefined;
  private waited = false;
  constructor(
    readonly name: string,
    private readonly asked: string[],
    private readonly waits: boolean,
  ) {}
  admit(offset: number, length: number): Promise<void> | null {
    this.asked.push(`${this.name} ${offset}+${length}`);
    if (!this.waits || this.waited) return null;
    this.waited = true;
    return new Promise((r) => (this.release = r));
  }
}

test('the admission chain asks its steps in order and answers with the first wait', async () => {
  const asked: string[] = [];
  const a = new OnceStep('a', asked, false);
  const b = new OnceStep('b', asked, true);
  const c = new OnceStep('c', asked, false);
  const chain = new AdmissionChain([a, b, c]);
  const wait = chain.admit(4096, 512);
  assert.ok(wait !== null, 'b waits');
  assert.deepEqual(asked, ['a 4096+512', 'b 4096+512'], 'c is not asked while b waits');
  const t = new Tracked(wait);
  await new Promise((r) => setImmediate(r));
  assert.equal(t.done, false, 'the wait holds until b releases it');
  b.release();
  await wait;
  assert.equal(chain.admit(4096, 512), null, 'asked again, every step admits');
  assert.deepEqual(asked, ['a 4096+512', 'b 4096+512', 'a 4096+512', 'b 4096+512', 'c 4096+512']);
  assert.equal(chain.step('b'), b);
  assert.throws(() => chain.step('nope'));
  // A rejecting step fails the write with its error.
  const refusing = new AdmissionChain([{ name: 'no', admit: () => Promise.reject(new FerryError('NO_SPACE', 'refused')) }]);
  await assert.rejects(refusing.admit(0, 1)!, (e: FerryError) => e.code === 'NO_SPACE');
});

/** A mirror gate whose lag and bitmap waits the test holds and releases. */
class HeldGate implements MirrorGate {
  readonly calls: string[] = [];
  readonly indexedSeqs: number[] = [];
  refusal: FerryError | null = null;
  private lagHold: Promise<void> | null = null;
  private bitmapHold: Promise<void> | null = null;

  holdLag(): () => void {
    let release!: () => void;
    const p = new Promise<void>((r) => (release = r));
    this.lagHold = p;
    return () => {
      this.lagHold = null;
      release();
    };
  }

  holdBitmap(): () => void {
    let release!: () => void;
    const p = new Promise<void>((r) => (release = r));
    this.bitmapHold = p;
    return () => {
      this.bitmapHold = null;
      release();
    };
  }

  lagWait(): Promise<void> | null {
    this.calls.push('lag');
    return this.lagHold;
  }

  bitmapWait(offset: number, length: number): Promise<void> | null {
    this.calls.push(`bitmap ${offset}+${length}`);
    return this.bitmapHold;
  }

  refuseWhenFull(): FerryError | null {
    this.calls.push('full');
    return this.refusal;
  }

  indexed(records: readonly StagedRecord[]): void {
    this.indexedSeqs.push(...records.map((r) => r.seq));
  }
}

test('a waiting mirror gate holds writes out of the journal; after the wait the whole chain is asked again', async () => {
  const { clock, work, staging, staged } = await openRig(4);
  const journal = staged.journal;
  assert.deepEqual(
    staged.admission.steps.map((s) => s.name),
    ['overlay-bound', 'bounded-lag', 'dirty-bitmap', 'swap-pacing', 'divergence'],
  );
  const gate = new HeldGate();
  staged.mirrorSlot.attach(gate);
  assert.throws(() => staged.mirrorSlot.attach(new HeldGate()), /at most one mirror/);

  // Bounded lag holds a write.
  const releaseLag = gate.holdLag();
  const first = work.make(false);
  const w1 = new Tracked(work.issue(staged, first));
  await clock.advance(5_000);
  assert.equal(w1.done, false, 'the write waits for the lag');
  assert.equal(journal.writtenSeq, 0, 'nothing reached the journal');
  assert.deepEqual(journal.unindexedRanges(), [], 'not even queued for it');
  assert.equal(staged.overlay.size, 0);
  assert.ok((await readAll(staged, DISK)).equals(Buffer.alloc(DISK)), 'reads do not show it');
  assert.deepEqual(gate.calls, ['lag'], 'the steps after the waiting one were not asked');
  releaseLag();
  await clock.settle();
  assert.equal(w1.done, true);
  assert.equal(w1.error, null);
  assert.deepEqual(gate.calls, ['lag', 'lag', `bitmap ${first.offset}+${first.length}`], 'asked again from the first step');
  assert.equal(journal.writtenSeq, 1);
  assert.deepEqual(gate.indexedSeqs, [1], 'the mirror was told of the record');
  assert.ok((await readAll(staged, DISK)).equals(work.model));

  // The dirty bitmap holds a zero and a trim (every kind of write goes through the chain).
  gate.calls.length = 0;
  const releaseBitmap = gate.holdBitmap();
  const z = new Tracked(work.issue(staged, { kind: 'zero', offset: 0, length: 8192, tag: 0, data: null }));
  const t = new Tracked(work.issue(staged, { kind: 'trim', offset: 8192, length: 4096, tag: 0, data: null }));
  await clock.advance(5_000);
  assert.equal(z.done || t.done, false);
  assert.equal(journal.writtenSeq, 1);
  assert.deepEqual(gate.calls, ['lag', 'bitmap 0+8192', 'lag', 'bitmap 8192+4096']);
  releaseBitmap();
  await clock.settle();
  assert.ok(z.done && t.done && z.error === null && t.error === null);
  assert.equal(journal.writtenSeq, 3);
  assert.ok((await readAll(staged, DISK)).equals(work.model));

  // Detached, the gate is no longer asked.
  staged.mirrorSlot.detach(gate);
  gate.holdLag();
  gate.calls.length = 0;
  await work.issue(staged, work.make(false));
  assert.deepEqual(gate.calls, []);
  assert.equal(journal.writtenSeq, 4);
  await clock.runUntil(staged.drain());
  assert.ok(staged.overlay.size === 0 && (await readAll(staged, DISK)).equals(work.model));
  assertNoViolations(staging);
  await clock.runUntil(staged.close());
});

test('swap pacing holds writers while a committer is behind, looking again as time passes', async () => {
  const { clock, work, staged } = await openRig(5);
  const journal = staged.journal;
  let behind = true;
  let looked = 0;
  const unpace = staged.pace(() => {
    looked++;
    return behind;
  });
  const w = new Tracked(work.issue(staged, work.make(false)));
  await clock.advance(100);
  assert.equal(w.done, false, 'held while behind');
  assert.equal(journal.writtenSeq, 0);
  assert.ok(looked >= 5, `looked again as the fake clock moved (${looked} looks in 100 ms)`);
  behind = false;
  await clock.advance(20);
  assert.ok(w.done && w.error === null, 'goes on once no longer behind');
  assert.equal(journal.writtenSeq, 1);
  unpace();

  // Ending the pacing (the swap gave up) lets a held writer go on too.
  const end = staged.pace(() => true);
  const w2 = new Tracked(work.issue(staged, work.make(false)));
  await clock.advance(100);
  assert.equal(w2.done, false);
  end();
  await clock.advance(20);
  assert.ok(w2.done && w2.error === null);
  assert.equal(journal.writtenSeq, 2);
  assert.ok((await readAll(staged, DISK)).equals(work.model));
  await clock.runUntil(staged.close());
});

// ---- d. Backpressure ----

const BIG = 1 * MiB;
const BIG_DISK = 2 * MiB;

/** Queues `count` 1 MiB writes at once on a staging area of the smallest size. */
function queueBig(rig: Rig, count: number): Tracked[] {
  return Array.from({ length: count }, () => new Tracked(rig.work.issue(rig.staged, rig.work.makeExact(BIG))));
}

/** Records of 1 MiB that fit in an empty ring. */
function bigRecordsFit(journal: Journal): number {
  return Math.floor(journal.ringBytes / recordSpan(BIG));
}

test('a full staging area holds writers until the slowest consumer advances and a checkpoint frees space', async () => {
  const rig = await openRig(6, BIG_DISK);
  const { clock, work, primary, staging, staged } = rig;
  const journal = staged.journal;
  await journal.addConsumer(MIRROR); // a consumer that does not advance (yet)
  // 1 MiB writes: the ring fills after `fit` of them.
  const fit = bigRecordsFit(journal);
  const writes = queueBig(rig, fit + 6);
  await clock.advance(2_000);
  const done = writes.filter((w) => w.done).length;
  assert.equal(done, fit, 'the writes that fit are acknowledged');
  assert.ok(writes.every((w) => w.error === null));
  assert.ok(journal.hasWaitersForSpace, 'the rest wait for space');
  assert.equal(journal.writtenSeq, fit);
  assert.ok((await readAll(staged, BIG_DISK)).equals(work.imageAt(fit)), 'reads show the written ones only');
  assert.equal(staged.committer.nextSeq, fit + 1, 'the primary applied everything written');
  assert.equal(durableNextSeq(staging, PRIMARY_CONSUMER), fit + 1, 'and checkpointed it: the mirror alone holds the space');

  // The mirror consumer starts: once its checkpoint frees space, the writers go on.
  const mirror = new TargetStore('mirror', BIG_DISK, clock);
  staging.watch(work, { [MIRROR]: mirror });
  let mirrorAtFirstWaiter = 0;
  void writes[fit]!.promise.then(() => (mirrorAtFirstWaiter = durableNextSeq(staging, MIRROR)));
  const mirrorCommitter = new Committer(journal, mirror, log, { consumer: MIRROR, clock });
  mirrorCommitter.start();
  await clock.runUntil(Promise.all(writes.map((w) => w.promise)));
  assert.ok(mirrorAtFirstWaiter > 1, 'the first waiting write went on only after the mirror position was checkpointed');
  await clock.runUntil(Promise.all([staged.drain(), mirrorCommitter.drain()]));
  assert.equal(journal.writtenSeq, fit + 6);
  assert.ok(primary.current.equals(work.model));
  assert.ok(mirror.current.equals(work.model));
  assertAppliedInOrder(mirror.applied, work.ops, 'mirror');
  assertNoViolations(staging);
  await mirrorCommitter.stop();
  await clock.runUntil(staged.close());
});

test('with a mirror that refuses when full, writers waiting for space fail with its error and nothing of theirs is written', async () => {
  const rig = await openRig(7, BIG_DISK);
  const { clock, work, primary, staged } = rig;
  const journal = staged.journal;
  await journal.addConsumer(MIRROR);
  const gate = new HeldGate();
  staged.mirrorSlot.attach(gate);
  const fit = bigRecordsFit(journal);
  const writes = queueBig(rig, fit + 4);
  await clock.advance(2_000);
  assert.equal(writes.filter((w) => w.done).length, fit);
  assert.ok(gate.calls.includes('full'), 'the mirror was asked, and said wait');
  // The mirror now refuses (--on-full fail); it frees one record's space, which wakes the writer.
  gate.refusal = new FerryError('NO_SPACE', 'the staging area is full and the mirror is set to fail writes');
  await journal.sync();
  const { end } = await readRecords(journal, journal.consumer(MIRROR), { upTo: 1, recordsMax: 1, bytesMax: 1 }, MIRROR);
  journal.advanceConsumer(MIRROR, end);
  await journal.checkpoint();
  await clock.settle();
  assert.ok(writes.every((w) => w.done));
  assert.equal(writes[fit]!.error, null, 'the first waiting write fits in the space freed');
  for (const w of writes.slice(fit + 1)) assert.ok(w.error instanceof FerryError && w.error.code === 'NO_SPACE', 'the others fail with the mirror error');
  assert.equal(journal.writtenSeq, fit + 1, 'nothing of the refused writes was written');
  const expected = work.imageAt(fit + 1);
  assert.ok((await readAll(staged, BIG_DISK)).equals(expected), 'reads do not show the refused writes');
  await clock.runUntil(staged.drain());
  assert.ok(primary.current.equals(expected), 'nor does the primary');
  assertAppliedInOrder(primary.applied, work.ops.slice(0, fit + 1), 'primary');
  staged.mirrorSlot.detach(gate);
  await journal.removeConsumer(MIRROR);
  await clock.runUntil(staged.close());
});

// ---- e. Retry ----

test('a failing primary: writes are acknowledged from staging and readable, the committer backs off and retries, then catches up', async () => {
  const { clock, work, primary, staging, staged } = await openRig(8);
  const journal = staged.journal;
  primary.fail({ write: true });
  await Promise.all(Array.from({ length: 20 }, () => work.issue(staged, work.make(), work.rng() < 0.2)));
  assert.ok((await readAll(staged, DISK)).equals(work.model), 'readable from the staging area');
  const t0 = clock.nowMs();
  await clock.advance(25); // past the gather delay
  assert.match(staged.committer.lastError ?? '', /injected write error/);
  const firstTry = primary.attemptTimes.length;
  assert.ok(firstTry > 0);
  await clock.advance(50);
  assert.equal(primary.attemptTimes.length, firstTry, 'no retry before the backoff');
  await clock.advance(10_000 - 75);
  const rounds = [...new Set(primary.attemptTimes)].map((t) => t - t0);
  assert.ok(rounds.length >= 3 && rounds.length <= 10, `retried with a growing backoff: rounds at ${rounds.join(', ')} ms`);
  for (let i = 2; i < rounds.length; i++) assert.ok(rounds[i]! - rounds[i - 1]! > rounds[i - 1]! - rounds[i - 2]!, `the backoff grows: ${rounds.join(', ')}`);
  assert.equal(journal.consumer(PRIMARY_CONSUMER).nextSeq, 1, 'the position did not move');
  assert.equal(durableNextSeq(staging, PRIMARY_CONSUMER), 1);
  assert.ok((await readAll(staged, DISK)).equals(work.model), 'still readable');

  // A drain while the primary still fails gives up with an I/O error (after a few retries in fake time).
  await assert.rejects(clock.runUntil(staged.drain()), (e: FerryError) => e.code === 'IO_ERROR' && /injected write error/.test(e.message));

  // Healed: a drain retries at once and completes.
  primary.fail({ write: false });
  await work.issue(staged, work.make());
  await clock.runUntil(staged.drain());
  assert.equal(staged.committer.lastError, null);
  assert.ok(primary.current.equals(work.model));
  assert.ok(primary.durable.equals(work.model));
  assertAppliedInOrder(primary.applied, work.ops, 'primary');
  assert.equal(journal.consumer(PRIMARY_CONSUMER).nextSeq, work.ops.length + 1);
  assertNoViolations(staging);
  await clock.runUntil(staged.close());
});

// ---- f. Checkpoints and power loss ----

test('a checkpoint never moves ahead of what the target made durable: held while the primary sync is held', async () => {
  const { clock, work, primary, staging, staged } = await openRig(9);
  const journal = staged.journal;
  // A second consumer whose target syncs at once: its checkpoints are written while the primary's sync is held.
  await journal.addConsumer(MIRROR);
  const mirror = new TargetStore('mirror', DISK, clock);
  staging.watch(work, { [MIRROR]: mirror });
  const mirrorCommitter = new Committer(journal, mirror, log, { consumer: MIRROR, clock });
  mirrorCommitter.start();
  const release = primary.holdSyncs();
  await Promise.all(Array.from({ length: 12 }, () => work.issue(staged, work.make(), work.rng() < 0.3)));
  await clock.advance(25); // both committers apply everything, then (caught up) checkpoint: target sync first
  const n = work.ops.length;
  assert.ok(primary.current.equals(work.model), 'applied to the primary');
  assert.equal(staged.committer.nextSeq, n + 1, 'the committer is past every record in memory');
  assert.ok(primary.durable.equals(Buffer.alloc(DISK)), 'but none is durable on the primary');
  assert.equal(durableNextSeq(staging, MIRROR), n + 1, 'the mirror consumer, synced, is checkpointed past them');
  assert.equal(journal.consumer(PRIMARY_CONSUMER).nextSeq, 1, 'the journal has not advanced the primary consumer');
  assert.equal(durableNextSeq(staging, PRIMARY_CONSUMER), 1, 'nor has the mirror checkpoint carried it');
  await clock.advance(60_000); // checkpoint intervals pass: still held
  assert.equal(durableNextSeq(staging, PRIMARY_CONSUMER), 1);
  assert.equal(journal.consumer(PRIMARY_CONSUMER).nextSeq, 1);

  // A power loss now: the primary loses its unsynced writes; recovery replays them from staging.
  const rng = seededRng(99);
  const lost = await reopen(primary.powerLoss(rng), staging.powerLoss(rng));
  assert.ok(lost.equals(work.model), 'after a power loss here the reopened disk has every write');

  release();
  await clock.settle();
  assert.ok(primary.durable.equals(work.model));
  assert.equal(journal.consumer(PRIMARY_CONSUMER).nextSeq, n + 1, 'advanced once the target sync returned');
  assert.equal(durableNextSeq(staging, PRIMARY_CONSUMER), n + 1, 'and checkpointed');
  assertNoViolations(staging);
  await mirrorCommitter.stop();
  await clock.runUntil(staged.close());
});

/** Opens a staged disk on these images (its own fake clock), replays, and reads it whole. */
async function reopen(primaryImage: Buffer, stagingImage: Buffer): Promise<Buffer> {
  const clock = new FakeClock();
  const staged = await StagedPath.open([new FaultyStore('stg0', stagingImage)], new FaultyStore('primary', primaryImage), log, clock);
  await clock.runUntil(staged.start());
  const got = await readAll(staged, primaryImage.length);
  await clock.runUntil(staged.close());
  return got;
}

test('after a power loss, the reopened disk holds every write acknowledged with FUA (or before a FLUSH)', async () => {
  for (let seed = 10; seed < 14; seed++) {
    const { clock, work, primary, staging, staged } = await openRig(seed);
    const rng = work.rng;
    let durableOps = 0; // every op before this index was acknowledged as durable
    for (let i = 0; i < 80; i++) {
      const fua = rng() < 0.25;
      await work.issue(staged, work.make(), fua);
      if (fua) durableOps = work.ops.length;
      if (rng() < 0.05) {
        await staged.flush();
        durableOps = work.ops.length;
      }
      if (rng() < 0.3) await clock.advance(Math.floor(rng() * 40));
      if (rng() < 0.02) await clock.advance(31_000);
    }
    assert.ok(durableOps > 0);
    const primaryImage = primary.powerLoss(rng);
    const stagingImage = staging.powerLoss(rng);
    await staged.committer.stop();
    const got = await reopen(primaryImage, stagingImage);
    const k = work.prefixMatch(got, durableOps);
    assert.ok(k >= durableOps, `seed ${seed}: the disk is the result of the first k writes, k >= ${durableOps} (of ${work.ops.length})`);
    assertNoViolations(staging);
  }
});
