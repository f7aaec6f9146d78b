// fio's nbd engine against ferryd: random and mixed I/O at queue depth, checked with
// fio's own data verification. No timing is asserted: only errors and verified bytes.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { Cleanup, qemuIoOk, tool, T } from './clients.js';

const MiB = 1024 * 1024;

interface FioJob {
  jobname: string;
  error: number;
  read: { io_bytes: number; total_ios: number };
  write: { io_bytes: number; total_ios: number };
}

describe('fio (nbd engine)', () => {
  const cleanup = new Cleanup();
  let d: Ferryd;
  let dir: string;

  before(async () => {
    d = await cleanup.ferryd();
    dir = cleanup.dir();
    await d.createDisk('fio', 256 * MiB);
  }, T);
  after(() => cleanup.run(), T);

  /** Runs fio with JSON output to a file (fio prints engine chatter on stdout). */
  async function fio(name: string, args: string[]): Promise<{ code: number | null; jobs: FioJob[]; text: string }> {
    const out = path.join(dir, `${name}.out`);
    // cwd: fio leaves its verify state files (NAME-N-verify.state) in the working directory.
    const r = await tool('fio', [`--name=${name}`, '--ioengine=nbd', `--uri=${d.uri('fio')}`, ...args, `--output=${out}`], { timeoutMs: 240_000, cwd: dir });
    assert.equal(r.signal, null, `fio was killed (timeout): ${r.stderr}`);
    const text = fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
    let jobs: FioJob[] = [];
    if (args.includes('--output-format=json')) {
      const start = text.indexOf('{');
      jobs = start >= 0 ? (JSON.parse(text.slice(start)).jobs as FioJob[]) : [];
    }
    return { code: r.code, jobs, text: `${text}\n${r.stdout}\n${r.stderr}` };
  }

  it('randwrite 4k at iodepth 32 over 64 MiB, verified with crc32c', T, async () => {
    const r = await fio('randwrite', ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=64m', '--verify=crc32c', '--do_verify=1', '--output-format=json']);
    assert.equal(r.code, 0, r.text);
    const [job] = r.jobs;
    assert.equal(job!.error, 0);
    assert.equal(job!.write.io_bytes, 64 * MiB);
    assert.equal(job!.read.io_bytes, 64 * MiB, 'the verify pass read everything back');
    assert.doesNotMatch(r.text, /verify failed|bad magic|err=[1-9]/);
  });

  it('mixed randrw (60% writes) at iodepth 32 with verify', T, async () => {
    const r = await fio('randrw', ['--rw=randrw', '--rwmixread=40', '--bs=4k', '--iodepth=32', '--size=64m', '--offset=64m', '--verify=crc32c', '--do_verify=1', '--output-format=json']);
    assert.equal(r.code, 0, r.text);
    const [job] = r.jobs;
    assert.equal(job!.error, 0);
    assert.ok(job!.write.io_bytes > 0 && job!.read.total_ios > 0);
  });

  it('four jobs (four connections) with mixed block sizes, each verifying its own region', T, async () => {
    const r = await fio('multi', [
      '--rw=randwrite',
      '--bsrange=512-128k',
      '--iodepth=16',
      '--size=32m',
      '--numjobs=4',
      '--offset=128m',
      '--offset_increment=32m',
      '--verify=md5',
      '--do_verify=1',
      '--output-format=json',
    ]);
    assert.equal(r.code, 0, r.text);
    assert.equal(r.jobs.length, 4);
    for (const job of r.jobs) {
      assert.equal(job.error, 0);
      assert.equal(job.write.io_bytes, 32 * MiB);
    }
  });

  it('sequential writes with a flush every 32 writes (fsync=32), then a separate verify-only pass', T, async () => {
    const common = ['--rw=write', '--bs=64k', '--iodepth=8', '--size=16m', '--offset=16m', '--verify=crc32c'];
    const w = await fio('seq', [...common, '--do_verify=0', '--fsync=32']);
    assert.equal(w.code, 0, w.text);
    const v = await fio('seq', [...common, '--verify_only']);
    assert.equal(v.code, 0, v.text);
  });

  it("fio's verification really catches corruption (negative control)", T, async () => {
    const common = ['--rw=write', '--bs=64k', '--size=8m', '--offset=240m', '--verify=crc32c'];
    const w = await fio('ctl', [...common, '--do_verify=0']);
    assert.equal(w.code, 0, w.text);
    // Overwrite 16 bytes in the middle of the second 64k block behind fio's back.
    await qemuIoOk(d.uri('fio'), [`write -P 0x13 ${240 * MiB + 65536 + 1000} 16`]);
    const v = await fio('ctl', [...common, '--verify_only']);
    assert.notEqual(v.code, 0, 'fio verify-only should fail on corrupted data');
    assert.match(v.text, /verify failed at file .* offset 251723776/);
  });
});
