// ferryd as a service: a --config file holds the serve flags (the command line wins over it),
// a bad file is refused before anything is created, SIGHUP re-reads it (the log level changes
// at once), the readable log format, and systemd's readiness protocol: READY=1 (with MAINPID)
// on $NOTIFY_SOCKET once ferryd serves, STOPPING=1 when it stops. The notification socket is
// a real unix datagram socket, read by the system python.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { FERRY_BIN, describeRun, run, tmpDir, waitFor } from '../harness.js';

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

interface Started {
  proc: ChildProcess;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
}

function serve(args: string[], env: NodeJS.ProcessEnv = process.env): Started {
  const proc = spawn(process.execPath, [FERRY_BIN, 'serve', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let out = '';
  let err = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return { proc, out: () => out, err: () => err, exited };
}

describe('ferryd as a service', () => {
  test('a config file holds the flags; the command line wins; SIGHUP changes the log level', async () => {
    const dir = tmpDir('ferry-service-');
    const data = path.join(dir, 'data');
    const config = path.join(dir, 'ferryd.json');
    fs.writeFileSync(config, JSON.stringify({ data, nbd: '127.0.0.1:0', api: '127.0.0.1:0', repl: '127.0.0.1:0', logLevel: 'warn', logFormat: 'text' }));
    // --log-level on the command line wins over the file's warn: the info line "ferryd started" is logged.
    const s = serve(['--config', config, '--log-level', 'info']);
    await waitFor('ferryd to start', () => s.out().includes('API listening'), 30_000);
    assert.ok(s.out().includes(`data directory ${data}`), s.out());
    assert.ok(fs.existsSync(path.join(data, 'api-token')), 'the data directory of the file is used');
    // The readable format: ISO time, level, message, fields.
    await waitFor('the text log line of the start', () => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO {2}ferryd started .*dataDir=/m.test(s.err()), 10_000);
    assert.doesNotMatch(s.err(), /^\{"level"/m, 'no JSON lines in text format');
    s.proc.kill('SIGTERM');
    assert.equal(await s.exited, 0, s.err());

    // Without the command-line level: the file's warn holds, and SIGHUP with debug in the file applies it.
    const t = serve(['--config', config]);
    await waitFor('ferryd to start', () => t.out().includes('API listening'), 30_000);
    assert.doesNotMatch(t.err(), /ferryd started/, 'warn level: the info line is not logged');
    fs.writeFileSync(config, JSON.stringify({ data, nbd: '127.0.0.1:0', api: '127.0.0.1:0', repl: '127.0.0.1:0', logLevel: 'debug', logFormat: 'text', site: 'renamed' }));
    t.proc.kill('SIGHUP');
    await waitFor('the reload to be logged', () => /SIGHUP: log level changed logLevel=debug/.test(t.err()) && /configuration reloaded/.test(t.err()), 10_000);
    assert.match(t.err(), /SIGHUP: this setting changes at the next start only key=site value=renamed/);
    t.proc.kill('SIGTERM');
    assert.equal(await t.exited, 0, t.err());
  });

  test('a bad config file is refused, naming the file and the key, and creates nothing', async () => {
    const dir = tmpDir('ferry-service-bad-');
    const data = path.join(dir, 'data');
    for (const [content, message] of [
      [JSON.stringify({ data, colour: 'red' }), /unknown key 'colour'/],
      [JSON.stringify({ data, nbd: ['a'] }), /'nbd' must be a string or a number, as the flag --nbd takes/],
      ['{"data": ', /not valid JSON/],
      ['[1]', /must be a JSON object/],
    ] as const) {
      const config = path.join(dir, 'bad.json');
      fs.writeFileSync(config, content);
      const r = await run(process.execPath, [FERRY_BIN, 'serve', '--config', config], { timeoutMs: 30_000 });
      assert.notEqual(r.code, 0, describeRun('ferry serve --config', [config], r));
      assert.match(r.stderr, message, r.stderr);
      assert.ok(r.stderr.includes(config), r.stderr);
      assert.ok(!fs.existsSync(data), 'nothing created');
    }
  });

  test('systemd readiness: READY=1 with MAINPID once serving, STOPPING=1 at stop', async () => {
    const dir = tmpDir('ferry-notify-');
    const socket = path.join(dir, 'notify.sock');
    // A unix datagram socket that prints each notification on one line (newlines as '|').
    const py = spawn('/usr/bin/python3', ['-u', '-c', `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print('bound', flush=True)
while True:
    print(s.recv(4096).decode().replace('\\n', '|'), flush=True)
`, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(py);
    let got = '';
    py.stdout!.on('data', (b: Buffer) => (got += b.toString()));
    await waitFor('the notification socket', () => got.includes('bound'), 10_000);
    const s = serve(['--data', path.join(dir, 'data'), '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--repl', '127.0.0.1:0'], { ...process.env, NOTIFY_SOCKET: socket });
    await waitFor('READY=1', () => got.includes('READY=1'), 30_000);
    assert.ok(s.out().includes('API listening'), 'READY comes after ferryd serves');
    assert.ok(got.includes(`MAINPID=${s.proc.pid}`), got);
    s.proc.kill('SIGTERM');
    await waitFor('STOPPING=1', () => got.includes('STOPPING=1'), 30_000);
    assert.equal(await s.exited, 0, s.err());
    py.kill('SIGKILL');
  });

  test('a ferryd started by npm stops when that npm process is killed', async () => {
    const dir = tmpDir('ferry-orphan-');
    const out = path.join(dir, 'out');
    // The parent stands in for npm (ferryd knows it by $npm_execpath): it starts ferryd with its
    // output in a file, then waits to be killed with SIGKILL (no signal is forwarded).
    const parent = spawn(process.execPath, ['-e', `
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const fd = fs.openSync(process.argv[1], 'w');
const c = spawn(process.execPath, [process.argv[2], 'serve', '--data', process.argv[3], '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--repl', '127.0.0.1:0'], { stdio: ['ignore', fd, fd] });
console.log(c.pid);
setInterval(() => {}, 1000);
`, out, FERRY_BIN, path.join(dir, 'data')], { env: { ...process.env, npm_execpath: '/usr/lib/node_modules/npm/bin/npm-cli.js' }, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(parent);
    let pidText = '';
    parent.stdout!.on('data', (b: Buffer) => (pidText += b.toString()));
    await waitFor('ferryd to start under its parent', () => fs.existsSync(out) && fs.readFileSync(out, 'utf8').includes('API listening'), 30_000);
    const pid = Number(pidText.trim());
    assert.ok(pid > 0, pidText);
    const alive = (): boolean => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    assert.ok(alive());
    parent.kill('SIGKILL');
    await waitFor('ferryd to stop once its parent is gone', () => !alive() || /ferryd: stopped/.test(fs.readFileSync(out, 'utf8')), 30_000);
    await waitFor('the process to be gone', () => !alive(), 30_000);
    assert.match(fs.readFileSync(out, 'utf8'), /parent exited/, 'it stopped cleanly, saying why');
  });
});
