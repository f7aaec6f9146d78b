// In process, with a fake clock (no daemon, no sleeps): a staged disk reopened while its
// primary refuses writes (a full disk) is served from its staging area, applies the
// records by itself once the primary takes writes again, and no retry of its committer
// outlives the disk: after close no timer is left and the primary sees no further attempt.
// The daemon-level test of the same failure is primary-full-restart.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Journal, STAGING_BYTES_MIN } from '../../src/journal/journal.js';
import { FakeClock } from '../../src/testing/fake-clock.js';
import { FaultyStore } from '../../src/testing/faulty-store.js';
import { PRIMARY_CONSUMER } from '../../src/volume/committer.js';
import { StagedPath } from '../../src/volume/staged-path.js';

const log = pino({ level: 'silent' });
const DISK = 256 * 1024;

/** A store whose writes fail while `full` (ENOSPC), counting every attempt. */
class FullStore extends FaultyStore {
  full = false;
  attempts = 0;
  override async write(buf: Buffer, bufOffset: number, length: number, offset: number): Promise<void> {
    this.attempts++;
    if (this.full) {
      await Promise.resolve();
      throw Object.assign(new Error(`pwritev ${this.path}: No space left on device`), { code: 'ENOSPC' });
    }
    return super.write(buf, bufOffset, length, offset);
  }
}

function pattern(byte: number, length: number): Buffer {
  return Buffer.alloc(length, byte);
}

test('a disk reopened with a full primary is served from its staging area and recovers by itself; no retry outlives it', async () => {
  // Writes staged and acknowledged while the primary was full; then the process dies.
  const clock = new FakeClock();
  const staging = new FaultyStore('stg0', STAGING_BYTES_MIN);
  await Journal.format([staging], 'd', PRIMARY_CONSUMER);
  const primary = new FullStore('primary', DISK);
  const first = await StagedPath.open([staging], primary, log, clock);
  await clock.runUntil(first.start());
  primary.full = true;
  await first.write(pattern(0x5a, 64 * 1024), 0, 64 * 1024, 8192, true);
  await first.zero(128 * 1024, 4096, true, true);
  await clock.advance(1000);
  assert.match(first.committer.lastError ?? '', /No space/, 'the committer meets the full primary');
  const stagingImage = staging.processCrash();
  const primaryImage = primary.processCrash();
  primaryImage.fill(0xee, 128 * 1024, 128 * 1024 + 4096); // old data the staged ZERO must hide
  await first.committer.stop();

  // Restart: the primary is still full.
  const clock2 = new FakeClock();
  const primary2 = new FullStore('primary', primaryImage);
  primary2.full = true;
  const staged = await StagedPath.open([new FaultyStore('stg0', stagingImage)], primary2, log, clock2);
  await clock2.runUntil(staged.start());
  assert.match(staged.committer.lastError ?? '', /No space/);
  assert.equal(staged.journal.consumer(PRIMARY_CONSUMER).nextSeq, 1, 'nothing applied yet');
  const got = Buffer.alloc(DISK);
  await staged.read(got, 0, DISK, 0);
  assert.ok(got.subarray(8192, 8192 + 64 * 1024).equals(pattern(0x5a, 64 * 1024)), 'the staged write is read from the staging area');
  assert.ok(got.subarray(128 * 1024, 128 * 1024 + 4096).equals(pattern(0, 4096)), 'the staged zero hides the old data');
  assert.ok(got.subarray(0, 8192).equals(pattern(0, 8192)));

  // Space returns: the committer's retry applies everything, with no help.
  primary2.full = false;
  for (let i = 0; i < 120 && staged.committer.nextSeq <= staged.journal.writtenSeq; i++) await clock2.advance(1000);
  assert.equal(staged.committer.nextSeq, staged.journal.writtenSeq + 1, 'every record applied after the retry');
  assert.ok(primary2.current.subarray(8192, 8192 + 64 * 1024).equals(pattern(0x5a, 64 * 1024)));
  assert.ok(primary2.current.subarray(128 * 1024, 128 * 1024 + 4096).equals(pattern(0, 4096)));
  assert.equal(staged.overlay.size, 0, 'the overlay empties as the records reach the primary');

  // Full again, then closed: nothing keeps retrying against the closed disk.
  primary2.full = true;
  await staged.write(pattern(0x6b, 4096), 0, 4096, 0, true);
  await clock2.advance(5000);
  assert.match(staged.committer.lastError ?? '', /No space/);
  await clock2.runUntil(staged.close());
  const attempts = primary2.attempts;
  assert.equal(clock2.pendingTimers, 0, 'no timer of the closed disk is left');
  await clock2.advance(10 * 60_000);
  assert.equal(primary2.attempts, attempts, 'no write reaches the primary after close');
});
