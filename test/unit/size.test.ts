import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatSize, parseSize } from '../../src/disk/size.js';
import { FerryError } from '../../src/errors.js';

test('sizes take binary K/M/G/T suffixes', () => {
  assert.equal(parseSize('512'), 512);
  assert.equal(parseSize('4K'), 4096);
  assert.equal(parseSize('64MiB'), 64 * 2 ** 20);
  assert.equal(parseSize('10G'), 10 * 2 ** 30);
  assert.equal(parseSize('1.5T'), 1.5 * 2 ** 40);
  assert.equal(parseSize(1024), 1024);
  assert.equal(parseSize('2GiB'), 2 * 2 ** 30);
  assert.equal(parseSize('4096B'), 4096);
  assert.equal(parseSize('1k'), 1024);
  assert.equal(formatSize(10 * 2 ** 30), '10GiB');
});

test('bad sizes are refused with INVALID_SIZE', () => {
  for (const bad of ['', 'ten', '-1', '1.3', '5X', '1e9', -5, 1.5]) {
    assert.throws(() => parseSize(bad as string), (e: unknown) => e instanceof FerryError && e.code === 'INVALID_SIZE', String(bad));
  }
});

test("decimal-looking suffixes (10GB, 4KB) are refused, never read as binary", () => {
  for (const bad of ['10GB', '4KB', '1.5TB', '64mb']) {
    assert.throws(
      () => parseSize(bad),
      (e: unknown) => e instanceof FerryError && e.code === 'INVALID_SIZE' && /ambiguous/.test(e.message) && /iB/.test(e.message),
      bad,
    );
  }
});
