// Shared kit of the fuzzers in test/fuzz: the run's seed and budget (FERRY_FUZZ_SEED,
// FERRY_FUZZ_SECONDS, FERRY_FUZZ_CASES), a seeded random source with the helpers the
// fuzzers use to build and mutate inputs, a runner that executes cases a few at a time and
// stops at whichever comes first (the case count or the time budget: the budget only bounds
// how many cases run, never what is asserted), and the daemon checks made after each batch:
// the process is alive, its RSS is under a bound, and it logged nothing at error level or
// above that is not expected.
//
// Every case gets its own seed derived from the run's seed and its index, so a failure names
// `FERRY_FUZZ_SEED=<seed>` and the case index, and the input is printed with it: the case
// can be replayed alone: FERRY_FUZZ_SEED=<seed> FERRY_FUZZ_CASE=<index> (FERRY_FUZZ_DEBUG=1
// also prints what the server sent, where a fuzzer supports it).
import fs from 'node:fs';
import net from 'node:net';
import { seededRng, type Rng } from '../../src/testing/faulty-store.js';
import type { Ferryd } from '../harness.js';

export interface FuzzConfig {
  seed: number;
  seconds: number;
  maxCases: number;
}

/**
 * The seed CI runs with (CI=true, as .ci/run sets): the same cases every run, so a change is
 * judged on known ground and a failure there is the change's. New ground is explored by hand
 * and by every run outside CI, which takes a fresh seed (or FERRY_FUZZ_SEED).
 */
export const CI_SEED = 20261206;

/** Seed and budget of this run: env overrides, else CI_SEED in CI or a fresh seed, 60 s and `defaultCases`. */
export function fuzzConfig(name: string, defaultCases: number): FuzzConfig {
  const envSeed = process.env.FERRY_FUZZ_SEED;
  const seed = envSeed !== undefined && envSeed !== '' ? Number(envSeed) >>> 0 : process.env.CI ? CI_SEED : (Date.now() ^ (process.pid << 8)) >>> 0;
  const seconds = Number(process.env.FERRY_FUZZ_SECONDS ?? '') || 60;
  const cases = Number(process.env.FERRY_FUZZ_CASES ?? '');
  // A run by hand with a longer budget runs as many cases as that budget allows.
  const maxCases = cases > 0 ? cases : process.env.FERRY_FUZZ_SECONDS ? Number.MAX_SAFE_INTEGER : defaultCases;
  console.log(`# fuzz ${name}: seed ${seed} (replay: FERRY_FUZZ_SEED=${seed}), budget ${seconds} s or ${maxCases === Number.MAX_SAFE_INTEGER ? 'unbounded' : maxCases} cases`);
  return { seed, seconds, maxCases };
}

/** The random source of case `index` of the run seeded `seed`. */
export function caseRng(seed: number, index: number): R {
  return new R(seededRng((seed ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0));
}

/** A seeded random source with the helpers inputs are built with. */
export class R {
  constructor(readonly next: Rng) {}
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  /** Picks by weight: [[weight, value], ...]. */
  weighted<T>(xs: ReadonlyArray<readonly [number, T]>): T {
    const total = xs.reduce((s, [w]) => s + w, 0);
    let x = this.next() * total;
    for (const [w, v] of xs) {
      if ((x -= w) < 0) return v;
    }
    return xs[xs.length - 1]![1];
  }
  u32(): number {
    return (this.int(0x10000) * 0x10000 + this.int(0x10000)) >>> 0;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  /** A u32 chosen to hit edges: 0, 1, powers of two and their neighbours, the maximum, or random. */
  edgyU32(): number {
    return this.weighted<() => number>([
      [2, () => 0],
      [1, () => 1],
      [3, () => 2 ** this.int(32) + this.pick([-1, 0, 1])],
      [1, () => 0xffffffff],
      [1, () => 0x7fffffff],
      [2, () => this.u32()],
      [3, () => this.int(4096)],
    ])() >>> 0;
  }
  /** A u64 chosen to hit edges (offsets): small, near 2^k, near the top, random. */
  edgyU64(near: bigint[] = []): bigint {
    const v = this.weighted<() => bigint>([
      [3, () => BigInt(this.int(1 << 20))],
      [2, () => (1n << BigInt(this.int(64))) + BigInt(this.pick([-1, 0, 1]))],
      [1, () => 0xffffffffffffffffn],
      [1, () => 0x7fffffffffffffffn],
      [1, () => this.u64()],
      [near.length ? 4 : 0, () => this.pick(near) + BigInt(this.range(-4096, 4096))],
    ])();
    return BigInt.asUintN(64, v);
  }
  /** Mutates a buffer: bit flips, byte sets, truncation, insertion, duplication of a slice. */
  mutate(b: Buffer, rounds = 1 + this.int(4)): Buffer {
    let out: Buffer = Buffer.from(b);
    for (let k = 0; k < rounds; k++) {
      const at = out.length ? this.int(out.length) : 0;
      out = this.weighted<() => Buffer>([
        [3, () => (out.length ? (out[at] = out[at]! ^ (1 << this.int(8)), out) : out)],
        [3, () => (out.length ? (out[at] = this.pick([0, 0xff, 0x7f, 0x80, this.int(256)]), out) : out)],
        [2, () => out.subarray(0, this.int(out.length + 1))],
        [2, () => Buffer.concat([out.subarray(0, at), this.bytes(1 + this.int(16)), out.subarray(at)])],
        [1, () => Buffer.concat([out.subarray(0, at), out.subarray(at, at + 1 + this.int(32)), out.subarray(at)])],
        [1, () => Buffer.concat([out.subarray(0, at), out.subarray(Math.min(out.length, at + 1 + this.int(8)))])],
      ])();
    }
    return out;
  }
}

export interface CaseResult {
  /** A short printable description of the input (enough to see what was sent). */
  input: string;
  /** Problems found in this case (a protocol answer that breaks the rules). */
  problems?: string[];
}

/** A case still running after this long has hung (a server that never answers nor closes): a problem. */
export const CASE_MS_MAX = 60_000;

/** Runs one case; one that takes longer than `ms` is reported with the input it had built so far. */
async function bounded(one: (rng: R, index: number, trace: string[]) => Promise<CaseResult>, seed: number, i: number, ms: number): Promise<CaseResult> {
  const trace: string[] = [];
  let timer: NodeJS.Timeout | undefined;
  const hung = new Promise<CaseResult>((resolve) => {
    timer = setTimeout(() => resolve({ input: trace.join(' | '), problems: [`the case did not end within ${ms / 1000} s (hung)`] }), ms);
  });
  try {
    return await Promise.race([one(caseRng(seed, i), i, trace), hung]);
  } finally {
    clearTimeout(timer);
  }
}

export interface RunStats {
  cases: number;
  seconds: number;
  problems: string[];
}

/**
 * Runs cases `concurrency` at a time until `cfg.maxCases` ran or `cfg.seconds` passed; after
 * every `batch` cases (and at the end) awaits `check` with no case running. A case that
 * throws is a problem reported with its index and input (the run goes on); `check` throwing
 * ends the run (the daemon is broken: later cases would only repeat it).
 */
export async function runCases(
  cfg: FuzzConfig,
  opts: { concurrency: number; batch: number; name: string; caseMs?: number },
  one: (rng: R, index: number, trace: string[]) => Promise<CaseResult>,
  check: (casesSoFar: number) => Promise<void>,
): Promise<RunStats> {
  const started = Date.now();
  const deadline = started + cfg.seconds * 1000;
  const problems: string[] = [];
  let index = 0;
  let lastInputs: string[] = [];
  const only = process.env.FERRY_FUZZ_CASE;
  if (only !== undefined && only !== '') {
    // Replays one case alone (FERRY_FUZZ_SEED and FERRY_FUZZ_CASE), then the checks.
    const i = Number(only);
    const r = await bounded(one, cfg.seed, i, opts.caseMs ?? CASE_MS_MAX);
    console.log(`# replay of case #${i}: ${r.input}`);
    for (const p of r.problems ?? []) problems.push(`${opts.name} seed ${cfg.seed} case #${i}: ${p}`);
    await check(1);
    return { cases: 1, seconds: (Date.now() - started) / 1000, problems };
  }
  while (index < cfg.maxCases && Date.now() < deadline) {
    const batchEnd = Math.min(cfg.maxCases, index + opts.batch);
    lastInputs = [];
    const worker = async (): Promise<void> => {
      while (index < batchEnd && Date.now() < deadline) {
        const i = index++;
        let input = '(not built)';
        const t0 = Date.now();
        try {
          const r = await bounded(one, cfg.seed, i, opts.caseMs ?? CASE_MS_MAX);
          input = r.input;
          if (process.env.FERRY_FUZZ_DEBUG && Date.now() - t0 > 1000) console.log(`# slow case #${i} (${Date.now() - t0} ms): ${input.slice(0, 300)}`);
          lastInputs.push(`#${i} ${input}`);
          if (lastInputs.length > 50) lastInputs.shift();
          for (const p of r.problems ?? []) problems.push(`${opts.name} seed ${cfg.seed} case #${i}: ${p}\n  input: ${input}`);
        } catch (err) {
          const cause = (err as Error).cause ? ` (cause: ${String((err as { cause: unknown }).cause)})` : '';
          problems.push(`${opts.name} seed ${cfg.seed} case #${i}: threw ${(err as Error).stack ?? String(err)}${cause}\n  input: ${input}`);
        }
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency }, worker));
    try {
      await check(index);
    } catch (err) {
      const cause = (err as Error).cause ? ` (cause: ${String((err as { cause: unknown }).cause)})` : '';
      const msg = `${opts.name} seed ${cfg.seed}: check after case #${index - 1} failed: ${(err as Error).message}${cause}\n  the last cases of the batch:\n    ${lastInputs.slice(-20).join('\n    ')}`;
      problems.push(msg);
      break;
    }
  }
  const seconds = (Date.now() - started) / 1000;
  console.log(`# fuzz ${opts.name}: seed ${cfg.seed}: ${index} cases in ${seconds.toFixed(1)} s (${Math.round((index / seconds) * 60)} per minute), ${problems.length} problems`);
  return { cases: index, seconds, problems };
}

/** Resident memory of a process, bytes (VmRSS of /proc/<pid>/status). */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

export const RSS_BOUND = 1024 * 1024 * 1024;

/**
 * The daemon checks every fuzzer makes after a batch: the process has not exited; its RSS is
 * under RSS_BOUND; and its log (JSON lines on stderr) holds no line at error level or above
 * since the last check other than those `expected` accepts, nor an uncaught exception.
 * Returns a function to call at each check.
 */
export function daemonWatch(d: Ferryd, expected: (line: any) => boolean = () => false): () => void {
  let seen = 0;
  let peakRss = 0;
  const check = (): void => {
    if (d.proc.exitCode !== null || d.proc.signalCode !== null) {
      throw new Error(`ferryd exited (code ${d.proc.exitCode}, signal ${d.proc.signalCode}); its last log lines:\n${d.stderr.trim().split('\n').slice(-20).join('\n')}`);
    }
    const rss = rssBytes(d.proc.pid!);
    peakRss = Math.max(peakRss, rss);
    if (rss > RSS_BOUND) throw new Error(`ferryd RSS ${Math.round(rss / 2 ** 20)} MiB is over the bound of ${RSS_BOUND / 2 ** 20} MiB`);
    const text = d.stderr.slice(seen);
    const end = text.lastIndexOf('\n') + 1;
    seen += end;
    const bad: string[] = [];
    for (const line of text.slice(0, end).split('\n')) {
      if (!line.trim()) continue;
      // Node's own warnings (a deprecation in a dependency) are not errors of ferryd.
      if (/^\(node:\d+\) |^\(Use `node --trace-warnings/.test(line)) continue;
      let j: any;
      try {
        j = JSON.parse(line);
      } catch {
        // Not a log line: something printed outside the logger (an uncaught exception's stack).
        bad.push(line);
        continue;
      }
      if (typeof j.level === 'number' && j.level >= 50 && !expected(j)) bad.push(line);
      else if (/uncaught|unhandled/i.test(String(j.msg ?? ''))) bad.push(line);
    }
    if (bad.length) throw new Error(`ferryd logged errors:\n${bad.slice(0, 20).join('\n')}`);
  };
  Object.defineProperty(check, 'peakRss', { get: () => peakRss });
  return check;
}

export function peakRssMiB(check: () => void): number {
  return Math.round(((check as unknown as { peakRss: number }).peakRss ?? 0) / 2 ** 20);
}

/** Prints a JSON-ish rendering of an input, bounded in length. */
export function show(x: unknown, max = 600): string {
  const s = Buffer.isBuffer(x) ? `hex:${x.toString('hex')}` : typeof x === 'string' ? JSON.stringify(x) : JSON.stringify(x, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v));
  return s.length > max ? `${s.slice(0, max)}…(${s.length} chars)` : s;
}

/**
 * One raw exchange over plain TCP: sends the bytes, half-closes, reads until the server closes
 * (closedByServer) or closeMs pass (then the socket is destroyed: a bound, not an assertion).
 */
export function exchangeRaw(to: net.TcpNetConnectOpts, bytes: Buffer, closeMs = 20_000): Promise<{ received: Buffer; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const s = net.connect({ ...to, noDelay: true });
    const chunks: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    s.on('data', (b: Buffer) => chunks.push(b));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ received: Buffer.concat(chunks), closedByServer: true });
    });
    s.once('connect', () =>
      s.write(bytes, () => {
        s.end();
        timer = setTimeout(() => {
          s.destroy();
          resolve({ received: Buffer.concat(chunks), closedByServer: false });
        }, closeMs);
      }),
    );
  });
}
