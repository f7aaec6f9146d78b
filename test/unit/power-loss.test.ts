// Power loss of the whole staged data path (journal + committer + primary) through the
// fault-injecting store: at a random moment, every write not yet synced on each device
// is dropped, kept or torn at random. After recovery and replay the disk must equal the
// result of a prefix of the issued writes, in issue order, that contains every write
// that was flushed (acknowledged with FUA, or before an acknowledged FLUSH).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Journal, STAGING_BYTES_MIN } from '../../src/journal/journal.js';
import { FaultyStore, seededRng, type Rng } from '../../src/testing/faulty-store.js';
import { PRIMARY_CONSUMER } from '../../src/volume/committer.js';
import { StagedPath } from '../../src/volume/staged-path.js';

const log = pino({ level: 'silent' });
const DISK = 2 * 1024 * 1024;

interface Op {
  kind: 'write' | 'zero';
  offset: number;
  data: Buffer;
}

function apply(image: Buffer, op: Op): void {
  op.data.copy(image, op.offset);
}

async function open(primary: FaultyStore, copies: FaultyStore[]): Promise<StagedPath> {
  const staged = await StagedPath.open(copies, primary, log);
  await staged.start();
  return staged;
}

async function readAll(staged: StagedPath): Promise<Buffer> {
  const out = Buffer.alloc(DISK);
  await staged.read(out, 0, DISK, 0);
  return out;
}

async function runOnce(seed: number, copiesCount: number): Promise<void> {
  const rng: Rng = seededRng(seed);
  const primary = new FaultyStore('primary', DISK);
  const copies = Array.from({ length: copiesCount }, (_, i) => new FaultyStore(`stg${i}`, STAGING_BYTES_MIN));
  await Journal.format(copies, 'd', PRIMARY_CONSUMER);
  const staged = await open(primary, copies);

  const issued: Op[] = [];
  let flushedCount = 0; // every op with index < flushedCount is flushed
  const opsTotal = 150 + Math.floor(rng() * 150);
  const cutAt = Math.floor(rng() * opsTotal);
  let inflight: Promise<unknown>[] = [];
  for (let i = 0; i < opsTotal && i < cutAt; i++) {
    const r = rng();
    if (r < 0.08) {
      // FLUSH: everything acknowledged so far becomes durable.
      await Promise.all(inflight);
      inflight = [];
      const upTo = issued.length;
      await staged.flush();
      flushedCount = Math.max(flushedCount, upTo);
      continue;
    }
    const offset = Math.floor(rng() * (DISK / 512 - 64)) * 512;
    const length = 512 * (1 + Math.floor(rng() * 32));
    const zero = r < 0.15;
    const data = Buffer.alloc(length, zero ? 0 : (i % 251) + 1);
    if (!zero) data.writeUInt32LE(i, 0);
    const op: Op = { kind: zero ? 'zero' : 'write', offset, data };
    const index = issued.length;
    issued.push(op);
    const fua = rng() < 0.1;
    const p = (zero ? staged.zero(offset, length, rng() < 0.5, fua) : staged.write(data, 0, length, offset, fua)).then(() => {
      if (fua) flushedCount = Math.max(flushedCount, index + 1);
    });
    inflight.push(p);
    if (inflight.length >= 8 || rng() < 0.3) {
      await Promise.all(inflight);
      inflight = [];
    }
  }
  // Power cut now, with whatever is in flight. Each device loses its unsynced writes its own way.
  const primaryImage = primary.powerLoss(rng);
  const copyImages = copies.map((c) => c.powerLoss(rng));
  const flushed = flushedCount; // what was acknowledged as durable when the power went
  await staged.committer.stop();
  await Promise.allSettled(inflight);

  const recovered = await open(new FaultyStore('primary', primaryImage), copyImages.map((img, i) => new FaultyStore(`stg${i}`, img)));
  const got = await readAll(recovered);
  await recovered.close();

  // Find the prefix: start from the flushed prefix, then add ops one at a time.
  const model = Buffer.alloc(DISK);
  for (let i = 0; i < flushed; i++) apply(model, issued[i]!);
  let matched = model.equals(got) ? flushed : -1;
  for (let i = flushed; matched < 0 && i < issued.length; i++) {
    apply(model, issued[i]!);
    if (model.equals(got)) matched = i + 1;
  }
  assert.ok(matched >= flushed, `seed ${seed}: the disk is not a prefix of the issued writes containing the ${flushed} flushed ones (${issued.length} issued)`);
}

/** More cycles for a soak: FERRY_POWERLOSS_CYCLES=1000 npm test -- power-loss */
const cycles = Number(process.env.FERRY_POWERLOSS_CYCLES ?? 40);

test('power loss at random moments: the disk is a prefix of the writes, with every flushed one', async () => {
  for (let seed = 1; seed <= cycles; seed++) await runOnce(seed, 1);
});

test('power loss with a mirrored staging area (two copies, each losing writes its own way)', async () => {
  for (let seed = 100_001; seed <= 100_000 + cycles / 2; seed++) await runOnce(seed, 2);
});

test('a flipped bit in a staged record is detected and never served; with a second copy nothing is lost', async () => {
  for (const copiesCount of [1, 2]) {
    const primary = new FaultyStore('primary', DISK);
    const copies = Array.from({ length: copiesCount }, (_, i) => new FaultyStore(`stg${i}`, STAGING_BYTES_MIN));
    await Journal.format(copies, 'd', PRIMARY_CONSUMER);
    const staged = await StagedPath.open(copies, primary, log); // committer not started: records stay staged
    for (let i = 0; i < 10; i++) await staged.write(Buffer.alloc(4096, i + 1), 0, 4096, i * 4096, true);
    copies[0]!.flipBit(65536 + 6 * (4096 + 64) + 64 + 10, 3); // record 7's payload, first copy
    const recovered = await open(new FaultyStore('primary', primary.processCrash()), copies.map((c, i) => new FaultyStore(`stg${i}`, c.processCrash())));
    const got = await readAll(recovered);
    if (copiesCount === 1) {
      assert.equal(recovered.journal.recovery.end.kind, 'corrupt');
      for (let i = 0; i < 6; i++) assert.equal(got[i * 4096], i + 1);
      for (let i = 6; i < 10; i++) assert.equal(got[i * 4096], 0, 'nothing from the bad record on is served');
    } else {
      assert.equal(recovered.journal.recovery.rewrittenRecords, 1);
      for (let i = 0; i < 10; i++) assert.ok(got.subarray(i * 4096, (i + 1) * 4096).equals(Buffer.alloc(4096, i + 1)));
    }
    await recovered.close();
  }
});
