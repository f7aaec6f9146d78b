// CLI start-up time (issue 13): whole-process wall time of `ferry disk list` against a
// running ferryd and of `ferry --version`, beside `node -e 0` on the same machine, in the
// same run, interleaved; medians of BENCH_CLI_RUNS runs (default 15). The compiled CLI
// (dist/, scripts/build.js) is what bin/ferry.cjs runs when it is fresh; this script builds it
// first if needed and says which one ran. Prints a markdown table for docs/BENCHMARKS.md.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(ROOT, 'bin', 'ferry.cjs');
const runs = Number(process.env.BENCH_CLI_RUNS ?? 15);

function timeOnce(args: string[], env: NodeJS.ProcessEnv): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${r.status}: ${r.stderr.toString()}`);
  return ms;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

async function main(): Promise<void> {
  spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'build.js'), '--if-stale'], { stdio: 'inherit' });
  const { distFresh } = createRequire(import.meta.url)(path.join(ROOT, 'scripts', 'dist-fresh.cjs')) as { distFresh(): boolean };
  const compiled = distFresh();
  const data = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-cli-bench-'));
  const daemon = spawn(process.execPath, [BIN, 'serve', '--data', data, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--repl', '127.0.0.1:0', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const api = await new Promise<string>((resolve, reject) => {
      let out = '';
      daemon.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        const m = /API listening on (http:\/\/\S+)/.exec(out);
        if (m) resolve(m[1]!);
      });
      daemon.on('exit', (code) => reject(new Error(`ferryd exited ${code}`)));
    });
    const env = { ...process.env, FERRY_API: api, FERRY_DATA: data };
    const subjects: Array<[string, string[]]> = [
      ['node -e 0', ['-e', '0']],
      ['ferry --version', [BIN, '--version']],
      ['ferry disk list (against a running ferryd)', [BIN, 'disk', 'list']],
    ];
    for (const [, args] of subjects) timeOnce(args, env); // warm the page cache
    const times = new Map<string, number[]>(subjects.map(([n]) => [n, []]));
    for (let i = 0; i < runs; i++) for (const [n, args] of subjects) times.get(n)!.push(timeOnce(args, env));
    const base = median(times.get('node -e 0')!);
    process.stdout.write(`CLI start-up, ${runs} interleaved runs each, medians (${compiled ? 'compiled dist/' : 'TypeScript sources through tsx: dist/ is stale'}; ${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(2)}):\n\n`);
    process.stdout.write('| command | median wall time | vs `node -e 0` |\n|---|---:|---:|\n');
    for (const [n] of subjects) {
      const m = median(times.get(n)!);
      process.stdout.write(`| \`${n}\` | ${m.toFixed(0)} ms | ${(m / base).toFixed(2)}× |\n`);
    }
  } finally {
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon.once('exit', r));
    fs.rmSync(data, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
