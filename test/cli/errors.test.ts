// How the `ferry` CLI fails: exit 1 with "ferry: CODE: message" for a refused request
// (JSON on stderr with --json), 2 for bad usage, 3 when ferryd is unreachable; the
// token from --token beats $FERRY_TOKEN beats the data directory; `ferry serve` refuses
// a bad listen address; ferryd stops cleanly on SIGTERM and SIGINT.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { FERRY_BIN, run, startFerryd, tmpDir, type Ferryd, type RunResult } from '../harness.js';
import { assertUnchanged, cleanup, closedPort, snapshot } from '../api/helpers.js';

describe('ferry CLI failures', () => {
  let d: Ferryd;
  let ext: string;

  before(async () => {
    d = await startFerryd();
    ext = fs.realpathSync(tmpDir('ferry-clierr-'));
    await d.createDisk('existing', '1M');
    fs.writeFileSync(path.join(ext, 'adopted.img'), Buffer.alloc(4096, 1));
    assert.equal((await d.api('POST', '/v1/disks/adopt', { name: 'adopted', path: path.join(ext, 'adopted.img') })).status, 201);
  });
  after(async () => {
    await cleanup(d, ext);
  });

  const cli = (args: string[], env?: NodeJS.ProcessEnv): Promise<RunResult> => d.cli(args, { env, timeoutMs: 60_000 });

  /** Runs independent CLI cases a few at a time (each is a process start). */
  async function inParallel<T>(items: T[], fn: (item: T) => Promise<void>, width = 4): Promise<void> {
    const queue = [...items];
    await Promise.all(Array.from({ length: width }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await fn(item);
    }));
  }

  test('a refused request exits 1 with "ferry: CODE: message" and changes nothing', async () => {
    const cases: Array<[string[], string]> = [
      [['disk', 'create', 'existing', '--size', '1M'], 'DISK_EXISTS'],
      [['disk', 'create', '../x', '--size', '1M'], 'INVALID_NAME'],
      [['disk', 'create', 'a b', '--size', '1M'], 'INVALID_NAME'],
      [['disk', 'create', 'n1', '--size', 'ten'], 'INVALID_SIZE'],
      [['disk', 'create', 'n1', '--size', '511'], 'INVALID_SIZE'],
      [['disk', 'create', 'n1', '--size', '1M', '--pool', 'nopool'], 'POOL_NOT_FOUND'],
      [['disk', 'show', 'nope'], 'DISK_NOT_FOUND'],
      [['disk', 'remove', 'nope'], 'DISK_NOT_FOUND'],
      [['disk', 'remove', 'adopted', '--purge'], 'BAD_REQUEST'],
      [['disk', 'adopt', 'n1', '--path', 'relative.img'], 'INVALID_PATH'],
      [['disk', 'adopt', 'n1', '--path', path.join(ext, 'missing.img')], 'PATH_NOT_FOUND'],
      [['disk', 'adopt', 'n1', '--path', path.join(ext, 'adopted.img')], 'PATH_IN_USE'],
      [['pool', 'add', 'p1', '--path', 'relative'], 'INVALID_PATH'],
      [['pool', 'remove', 'default'], 'BAD_REQUEST'],
      [['pool', 'remove', 'nopool'], 'POOL_NOT_FOUND'],
    ];
    const before = await snapshot(d, [ext]);
    await inParallel(cases, async ([args, code]) => {
      const withJson = cases.find((c) => c[1] === code)![0] === args; // --json once per error code
      const r = await cli(args);
      const what = `ferry ${args.join(' ')} → ${r.code} ${r.stderr}`;
      assert.equal(r.code, 1, what);
      assert.equal(r.stdout, '', what);
      assert.match(r.stderr, new RegExp(`^ferry: ${code}: \\S.*\\n$`), what);
      if (!withJson) return;
      const j = await cli([...args, '--json']);
      assert.equal(j.code, 1, `${what} --json`);
      assert.equal(j.stdout, '');
      const body = JSON.parse(j.stderr);
      assert.equal(body.error.code, code);
      assert.equal(typeof body.error.message, 'string');
    });
    await assertUnchanged(d, before, 'refused CLI requests', [ext]);
  });

  test('a new staging file without its size names the flag that gives it', async () => {
    const before = await snapshot(d, [ext]);
    const m = await cli(['mirror', 'create', 'existing', '--to', `local:${path.join(ext, 'm.img')}`, '--staging', path.join(ext, 'm.stg')]);
    assert.equal(m.code, 1, m.stderr);
    assert.match(m.stderr, /^ferry: INVALID_SIZE: .*--staging-size with mirror create/, m.stderr);
    const a = await cli(['staging', 'attach', 'existing', '--path', path.join(ext, 's.stg')]);
    assert.equal(a.code, 1, a.stderr);
    assert.match(a.stderr, /^ferry: INVALID_SIZE: .*--size with staging attach/, a.stderr);
    await assertUnchanged(d, before, 'refused staging sizes', [ext]);
  });

  test('bad usage exits 2 and sends nothing', async () => {
    const cases: Array<[string[], RegExp]> = [
      [['disk', 'create', 'n1'], /required option '--size <size>'/],
      [['disk', 'create', '--size', '1G'], /missing required argument 'name'/],
      [['disk', 'adopt', 'n1'], /required option '--path <path>'/],
      [['pool', 'add', 'p1'], /required option '--path <dir>'/],
      [['frobnicate'], /unknown command 'frobnicate'/],
      [['disk', 'frobnicate'], /unknown command 'frobnicate'/],
      [['disk', 'list', '--bogus'], /unknown option '--bogus'/],
      [['disk', 'show'], /missing required argument 'name'/],
      [['disk', 'show', 'a', 'b'], /too many arguments|unknown command|excess/i],
      [[], /Usage: ferry/],
      [['peer', 'add', 'x', '--address', '127.0.0.1:1', '--token', 'garbage'], /--token 'garbage' is not a pairing token/],
      [['peer', 'add', 'x', '--address', '127.0.0.1:1'], /--token must be given/],
    ];
    const before = await snapshot(d, [ext]);
    // Point at a closed port too: usage errors are found before any request is sent.
    const port = await closedPort();
    await inParallel(cases, async ([args, message]) => {
      const r = await cli(args, { FERRY_API: `http://127.0.0.1:${port}` });
      const what = `ferry ${args.join(' ')} → ${r.code} ${r.stderr}`;
      assert.equal(r.code, 2, what);
      assert.match(r.stderr, message, what);
      // A usage error says what is wrong, not the whole help (only a bare `ferry` shows it).
      if (args.length > 0) assert.doesNotMatch(r.stderr, /Usage:/, what);
    });
    await assertUnchanged(d, before, 'bad usage', [ext]);
  });

  test('ferryd unreachable exits 3', async () => {
    const port = await closedPort();
    for (const args of [['--api', `http://127.0.0.1:${port}`, 'disk', 'list'], ['disk', 'create', 'n1', '--size', '1M', '--api', `http://127.0.0.1:${port}`]]) {
      const r = await cli(args);
      assert.equal(r.code, 3, `${args.join(' ')} → ${r.code} ${r.stderr}`);
      assert.match(r.stderr, /^ferry: UNREACHABLE: cannot reach ferryd at http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
    }
    const env = await cli(['status', '--json'], { FERRY_API: `http://127.0.0.1:${port}` });
    assert.equal(env.code, 3, env.stderr);
    assert.equal(JSON.parse(env.stderr).error.code, 'UNREACHABLE');
  });

  test('--token beats $FERRY_TOKEN, which beats the data directory', async () => {
    const token = d.token;
    const empty = tmpDir('ferry-notoken-');
    const expectUnauthorized = (r: RunResult, what: string): void => {
      assert.equal(r.code, 1, `${what}: ${r.stderr}`);
      assert.match(r.stderr, /^ferry: UNAUTHORIZED: /, what);
    };
    expectUnauthorized(await cli(['disk', 'list'], { FERRY_TOKEN: 'wrong' }), 'wrong $FERRY_TOKEN over a right data dir');
    expectUnauthorized(await cli(['disk', 'list', '--token', 'wrong']), 'wrong --token over a right data dir');
    expectUnauthorized(await cli(['disk', 'list', '--token', 'wrong'], { FERRY_TOKEN: token }), 'wrong --token over a right $FERRY_TOKEN');
    const noToken = await cli(['disk', 'list'], { FERRY_DATA: empty });
    expectUnauthorized(noToken, 'no token anywhere');
    // The refusal names the token file it tried and the ways to give the right one.
    assert.ok(noToken.stderr.includes(path.join(fs.realpathSync(empty), 'api-token')) || noToken.stderr.includes(path.join(empty, 'api-token')), noToken.stderr);
    assert.match(noToken.stderr, /--data/);
    assert.match(noToken.stderr, /FERRY_TOKEN/);
    const wrongEnv = await cli(['disk', 'list'], { FERRY_TOKEN: 'wrong' });
    assert.match(wrongEnv.stderr, /the token from \$FERRY_TOKEN was refused/, wrongEnv.stderr);
    expectUnauthorized(await cli(['disk', 'list', '--data', empty]), '--data without a token');
    for (const [args, env, what] of [
      [['disk', 'list', '--json'], { FERRY_DATA: empty, FERRY_TOKEN: token }, '$FERRY_TOKEN'],
      [['disk', 'list', '--json', '--token', token], { FERRY_DATA: empty, FERRY_TOKEN: 'wrong' }, '--token'],
      [['--data', d.dataDir, 'disk', 'list', '--json'], { FERRY_DATA: empty }, '--data'],
    ] as const) {
      const r = await cli([...args], { ...env });
      assert.equal(r.code, 0, `${what}: ${r.stderr}`);
      assert.ok(JSON.parse(r.stdout).some((x: { name: string }) => x.name === 'existing'));
    }
    fs.rmSync(empty, { recursive: true, force: true });
  });
});

describe('ferry serve', () => {
  test('a bad --nbd or --api value exits non-zero with a clear message and creates nothing', async () => {
    const parent = tmpDir('ferry-serve-');
    const dataDir = path.join(parent, 'data');
    for (const [flag, value] of [
      ['--nbd', 'nope'],
      ['--nbd', '127.0.0.1:99999'],
      ['--nbd', '127.0.0.1'],
      ['--nbd', '127.0.0.1:port'],
      ['--nbd', ''],
      ['--api', 'localhost'],
      ['--api', '127.0.0.1:70000'],
    ] as const) {
      const other = [...(flag === '--nbd' ? ['--api', '127.0.0.1:0'] : ['--nbd', '127.0.0.1:0']), '--repl', '127.0.0.1:0'];
      const r = await run(process.execPath, [FERRY_BIN, 'serve', '--data', dataDir, flag, value, ...other], { timeoutMs: 30_000 });
      const what = `serve ${flag} ${JSON.stringify(value)} → ${r.code} ${r.stderr}`;
      assert.ok(r.code !== 0 && r.code !== null, what);
      assert.ok(r.stderr.includes(flag) && r.stderr.includes('HOST:PORT') && r.stderr.includes(`'${value}'`), what);
      assert.ok(!r.stdout.includes('listening'), what);
      assert.deepEqual(fs.readdirSync(parent), [], `${what}: nothing created`);
    }
    const tls = await run(process.execPath, [FERRY_BIN, 'serve', '--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--repl', '127.0.0.1:0', '--tls', 'maybe'], { timeoutMs: 30_000 });
    assert.equal(tls.code, 2, tls.stderr);
    assert.match(tls.stderr, /--tls/);
    for (const value of ['-1', '2.5', 'fast', '10001']) {
      const r = await run(process.execPath, [FERRY_BIN, 'serve', '--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--repl', '127.0.0.1:0', '--poll-us', value], { timeoutMs: 30_000 });
      const what = `serve --poll-us ${value} → ${r.code} ${r.stderr}`;
      assert.ok(r.code !== 0 && r.code !== null, what);
      assert.ok(r.stderr.includes('--poll-us') && r.stderr.includes(`'${value}'`), what);
      assert.deepEqual(fs.readdirSync(parent), [], `${what}: nothing created`);
    }
    fs.rmSync(parent, { recursive: true, force: true });
  });

  test('a listen address in use exits non-zero with the reason', async () => {
    const d = await startFerryd();
    try {
      const parent = tmpDir();
      const [apiHost, apiPort] = d.apiUrl.replace(/^http:\/\//, '').split(':');
      for (const [flag, taken] of [
        ['--nbd', d.nbdAddress],
        ['--api', `${apiHost}:${apiPort}`],
        ['--repl', d.replAddress],
      ] as const) {
        const other = path.join(parent, 'data');
        const addrs: Record<string, string> = { '--nbd': '127.0.0.1:0', '--api': '127.0.0.1:0', '--repl': '127.0.0.1:0', [flag]: taken };
        const r = await run(process.execPath, [FERRY_BIN, 'serve', '--data', other, ...Object.entries(addrs).flat()], { timeoutMs: 30_000 });
        const what = `serve ${flag} ${taken} → ${r.code} ${r.stderr}`;
        assert.ok(r.code !== 0 && r.code !== null, what);
        assert.match(r.stderr, /EADDRINUSE/, what);
        assert.ok(r.stderr.includes(`choose another address with ${flag}`), what);
        assert.deepEqual(fs.readdirSync(parent), [], `${what}: nothing created (not even the data directory)`);
      }
      fs.rmSync(parent, { recursive: true, force: true });
      assert.equal((await d.api('GET', '/v1/health')).status, 200, 'the running ferryd is unaffected');
    } finally {
      await cleanup(d);
    }
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    test(`${signal} makes ferryd exit 0 and print "ferryd: stopped"`, async () => {
      const d = await startFerryd();
      await d.createDisk('d1', '1M');
      const r = await d.stop(signal);
      assert.deepEqual(r, { code: 0, signal: null });
      assert.match(d.stdout, /^ferryd: stopped$/m);
      assert.ok(d.stdout.trimEnd().endsWith('ferryd: stopped'), d.stdout);
      await d.start();
      assert.equal((await d.api('GET', '/v1/disks/d1')).status, 200);
      await cleanup(d);
    });
  }
});
