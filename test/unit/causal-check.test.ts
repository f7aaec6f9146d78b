// The cross-disk causal checker (test/groups/causal-check.py) on synthetic logs and images
// built here: a consistent cut passes, whatever mix of disks and superseded writes it holds;
// a cut missing a write that another write in it depends on fails (on the other disk:
// cross-disk; on its own disk: same-disk), as do a torn or foreign block and a block showing
// a write never issued to it; --acked catches a lost acknowledged write that the causal rule
// alone accepts; a log breaking the checker's assumptions (two writes in flight to one block)
// is reported, not trusted. The images are files here; images read over NBD, and logs of the
// real workload, are in test/groups/separate-disks.test.ts.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_BYTES, assertCausal, causalBlock, causalCheck } from '../groups/helpers.js';

const BLOCKS = 4;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-causal-check-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/**
 * Two disks. Write 3 on disk 1 is issued after write 1 (disk 0) was acknowledged; write 4
 * (disk 0) after writes 1, 2, 3; write 5 rewrites disk 0 block 0 after write 1 to it was
 * acknowledged; write 6 (disk 1 block 0, after write 2 to it) after 1, 2, 3, 5, and is never
 * acknowledged. Acknowledgement order: 1, 2, 3, 5, 4.
 */
const LOG = [
  'I 1 0 0 0',
  'I 2 1 0 0',
  'A 1',
  'I 3 1 1 1',
  'A 2',
  'A 3',
  'I 4 0 1 3',
  'I 5 0 0 3',
  'A 5',
  'I 6 1 0 4',
  'A 4',
];
/** Where each write went: counter → [disk, block]. */
const TO: Record<number, [number, number]> = { 1: [0, 0], 2: [1, 0], 3: [1, 1], 4: [0, 1], 5: [0, 0], 6: [1, 0] };

let n = 0;
function writeLog(lines: string[]): string {
  const file = path.join(dir, `log-${++n}`);
  fs.writeFileSync(file, lines.map((l) => `${l}\n`).join(''));
  return file;
}

/** Image files of the disks: per disk, block → counter shown (absent: zeroes), or raw bytes. */
function images(shown: Array<Record<number, number | Buffer>>): string[] {
  return shown.map((blocks, disk) => {
    const file = path.join(dir, `img-${++n}-${disk}`);
    const fd = fs.openSync(file, 'w');
    fs.ftruncateSync(fd, BLOCKS * BLOCK_BYTES);
    for (const [b, v] of Object.entries(blocks)) {
      const bytes = typeof v === 'number' ? causalBlock(TO[v]![0], TO[v]![1], v) : v;
      fs.writeSync(fd, bytes, 0, bytes.length, Number(b) * BLOCK_BYTES);
    }
    fs.closeSync(fd);
    return file;
  });
}

describe('causal-check.py', () => {
  it('passes consistent cuts: nothing written, an early cut across both disks, everything', async () => {
    const log = writeLog(LOG);
    const empty = await causalCheck(images([{}, {}]), log, BLOCKS, { acked: false });
    assertCausal(empty, 'no write in the images');
    assert.equal(empty.maxAcks, 0);
    // Writes 1, 2, 3: write 3 (disk 1) needs write 1 (disk 0), which is there.
    const early = await causalCheck(images([{ 0: 1 }, { 0: 2, 1: 3 }]), log, BLOCKS);
    assertCausal(early, 'writes 1, 2, 3');
    assert.equal(early.maxAcks, 1);
    assert.equal(early.ackedInCut, 3);
    // Write 1 superseded by write 5 on its block: still in the cut. Unacknowledged write 6 may be there.
    const all = await causalCheck(images([{ 0: 5, 1: 4 }, { 0: 6, 1: 3 }]), log, BLOCKS, { acked: true });
    assertCausal(all, 'every write');
    assert.deepEqual(
      all.perDisk.map((d) => [d.issued, d.writtenBlocks, d.highest, d.maxAcks]),
      [
        [3, 2, 5, 3],
        [3, 2, 6, 4],
      ],
    );
    assert.equal(all.ackedInCut, 5);
    assert.equal(all.issued, 6);
    assert.equal(all.acked, 5);
  });

  it('fails a cut missing a write that another write in it depends on: on the other disk, cross-disk', async () => {
    const log = writeLog(LOG);
    // Disk 1 shows write 3, issued after write 1 was acknowledged; disk 0 shows zeroes there.
    const c = await causalCheck(images([{}, { 0: 2, 1: 3 }]), log, BLOCKS);
    assert.equal(c.causalViolations, 1, JSON.stringify(c));
    assert.equal(c.crossDiskViolations, 1);
    assert.equal(c.sameDiskViolations, 0);
    assert.deepEqual(c.violations, [
      { missing: { disk: 0, block: 0, counter: 1, ackIndex: 0, shows: 0 }, dependent: { disk: 1, block: 1, counter: 3, acks: 1 }, crossDisk: true },
    ]);
    assert.equal(c.torn + c.unissued + c.logErrors, 0);
    assert.match(c.errors[0]!, /cross-disk: disk 0 block 0 shows write 0, not write 1/);
    // Disk 1 shows write 6, which needs write 5 (disk 0 block 0): disk 0 still shows write 1 there.
    const later = await causalCheck(images([{ 0: 1, 1: 4 }, { 0: 6, 1: 3 }]), log, BLOCKS);
    assert.equal(later.crossDiskViolations, 1, JSON.stringify(later));
    assert.deepEqual(later.violations[0]!.missing, { disk: 0, block: 0, counter: 5, ackIndex: 3, shows: 1 });
    assert.deepEqual(later.violations[0]!.dependent, { disk: 1, block: 0, counter: 6, acks: 4 });
  });

  it('fails a cut missing a write that a write of its own disk depends on: same-disk', async () => {
    const log = writeLog(LOG);
    // Disk 0 shows write 4 (needs 1, 2, 3) but zeroes where write 1 went.
    const c = await causalCheck(images([{ 1: 4 }, { 0: 2, 1: 3 }]), log, BLOCKS);
    assert.equal(c.causalViolations, 1, JSON.stringify(c));
    assert.equal(c.sameDiskViolations, 1);
    assert.equal(c.crossDiskViolations, 0);
    // The earliest write of the cut that needs it is write 3 (disk 1), but disk 0's own write 4 needs it too.
    assert.deepEqual(c.violations[0], {
      missing: { disk: 0, block: 0, counter: 1, ackIndex: 0, shows: 0 },
      dependent: { disk: 1, block: 1, counter: 3, acks: 1 },
      crossDisk: false,
    });
  });

  it('fails a torn block and a foreign one', async () => {
    const log = writeLog(LOG);
    // Half of write 5, half of write 1 (what a write cut at a sector boundary leaves).
    const torn = Buffer.concat([causalBlock(0, 0, 5).subarray(0, 2048), causalBlock(0, 0, 1).subarray(2048)]);
    const flipped = causalBlock(1, 1, 3);
    flipped[1000] ^= 1;
    const c = await causalCheck(images([{ 0: torn }, { 0: 2, 1: flipped }]), log, BLOCKS);
    assert.equal(c.torn, 2, JSON.stringify(c));
    assert.match(c.errors.join('\n'), /disk 0 block 0 is torn/);
    assert.match(c.errors.join('\n'), /disk 1 block 1 is torn/);
    // Write 2 (disk 1 block 0) intact, but in disk 0's image: foreign.
    const foreign = await causalCheck(images([{ 0: causalBlock(1, 0, 2) }, {}]), log, BLOCKS);
    assert.equal(foreign.torn, 1, JSON.stringify(foreign));
    assert.match(foreign.errors[0]!, /disk 0 block 0 is torn or foreign \(magic b'FERRYCW1', disk 1, block 0, counter 2\)/);
  });

  it('fails a block showing a write never issued to it', async () => {
    const log = writeLog(LOG);
    // Write 4 went to disk 0 block 1, not block 2; write 99 was never issued.
    const c = await causalCheck(images([{ 2: causalBlock(0, 2, 4), 3: causalBlock(0, 3, 99) }, {}]), log, BLOCKS);
    assert.equal(c.unissued, 2, JSON.stringify(c));
    assert.equal(c.torn, 0);
    assert.match(c.errors.join('\n'), /disk 0 block 2 holds write 4, issued to disk 0 block 1/);
    assert.match(c.errors.join('\n'), /disk 0 block 3 holds write 99, never issued/);
  });

  it('--acked catches a lost acknowledged write that the causal rule alone accepts', async () => {
    const log = writeLog(LOG);
    // Writes 2, 3, 5 (write 5 supersedes 1): a causal cut (M = 3: writes 1, 2, 3). Write 4, acknowledged, is missing.
    const shown = images([{ 0: 5 }, { 0: 2, 1: 3 }]);
    assertCausal(await causalCheck(shown, log, BLOCKS), 'without --acked');
    const c = await causalCheck(shown, log, BLOCKS, { acked: true });
    assert.equal(c.lostAcked, 1, JSON.stringify(c));
    assert.equal(c.causalViolations, 0);
    assert.deepEqual(c.errors, ['disk 0 block 1 shows write 0: acknowledged write 4 was lost']);
  });

  it('reports a log that breaks its assumptions instead of trusting it', async () => {
    // Write 2 to disk 0 block 0 issued while write 1 to it was in flight; an acknowledgement of an unissued write; a wrong acks count.
    const log = writeLog(['I 1 0 0 0', 'I 2 0 0 0', 'A 7', 'A 1', 'I 3 1 0 0']);
    const c = await causalCheck(images([{}, {}]), log, BLOCKS);
    assert.equal(c.logErrors, 3, JSON.stringify(c));
    assert.match(c.errors.join('\n'), /write 2 to disk 0 block 0 was issued before write 1 to it was acknowledged/);
    assert.match(c.errors.join('\n'), /acknowledgement of write 7/);
    assert.match(c.errors.join('\n'), /write 3 says 0 acknowledgements preceded it; the log has 1/);
  });
});
