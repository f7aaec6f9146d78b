// A ferryd site for the disaster-recovery measurements (bench/dr-rows.ts) that can be killed
// (kill -9) and started again on the same data directory and the same ports: the NBD, API and
// replication listeners are on loopback ports chosen once (freePort), and the site has a name
// (`--site`), which `mirror reconnect?discardChangesAt=` names. Its child is tracked by
// bench/proc.ts (stopped at the end of the run, on failure and on the watchdog).
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freePort, isRunning, spawnTracked, stopChild } from './proc.js';
import type { FerryApi, StartedServer } from './servers.js';

export class DrSite {
  private child: ChildProcess | null = null;
  private out = '';
  private constructor(
    readonly name: string,
    readonly dataDir: string,
    private readonly bin: string,
    readonly ports: { nbd: number; api: number; repl: number },
  ) {}

  /** Starts a new site `name` (a fresh data directory `dir/data`) on ports of its own. */
  static async start(dir: string, name: string, bin: string): Promise<DrSite> {
    const dataDir = path.join(dir, 'data');
    fs.mkdirSync(dataDir, { recursive: true });
    const site = new DrSite(name, dataDir, bin, { nbd: await freePort(), api: await freePort(), repl: await freePort() });
    await site.launch();
    return site;
  }

  get args(): string[] {
    const at = (p: number): string => `127.0.0.1:${p}`;
    return [this.bin, 'serve', '--data', this.dataDir, '--nbd', at(this.ports.nbd), '--api', at(this.ports.api), '--repl', at(this.ports.repl), '--site', this.name];
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  /** The replication listener, HOST:PORT (what a peer dials). */
  get replAddress(): string {
    return `127.0.0.1:${this.ports.repl}`;
  }

  uri(disk: string): string {
    return `nbd://127.0.0.1:${this.ports.nbd}/${disk}`;
  }

  /** The command line, for the report. */
  get command(): string {
    return `\`node ${this.args.map((a) => (a === this.bin ? path.relative(process.cwd(), a) : a)).join(' ')}\``;
  }

  /** What the run registers, so that its cleanup stops whichever process is the site's now. */
  get server(): StartedServer {
    return { uri: this.uri(''), pid: this.pid, command: this.command, stop: () => this.stop() };
  }

  readonly api: FerryApi = async (method, url, body) => {
    const token = fs.readFileSync(path.join(this.dataDir, 'api-token'), 'utf8').trim();
    const res = await fetch(`http://127.0.0.1:${this.ports.api}${url}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(120_000),
    });
    const text = await res.text();
    if (res.status >= 300) throw new Error(`${this.name} ${method} ${url}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  };

  private async launch(): Promise<void> {
    if (this.child && isRunning(this.child)) throw new Error(`${this.name} is running`);
    const child = spawnTracked(process.execPath, this.args);
    this.child = child;
    this.out = '';
    child.stderr!.on('data', (b: Buffer) => void (this.out = (this.out + b.toString()).slice(-16_384)));
    let stdout = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: ferryd did not start in 60 s\n${stdout}\n${this.out}`)), 60_000);
      const onData = (b: Buffer): void => {
        stdout += b.toString();
        if (/NBD listening/.test(stdout) && /API listening/.test(stdout) && /replication listening/.test(stdout)) {
          clearTimeout(timer);
          child.stdout!.off('data', onData);
          child.stdout!.resume();
          resolve();
        }
      };
      child.stdout!.on('data', onData);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`${this.name}: ferryd exited (${code ?? signal}) before listening\n${stdout}\n${this.out}`));
      });
    });
  }

  /** kill -9; resolves once the process is gone. */
  async kill9(): Promise<void> {
    const child = this.child;
    if (!child || !isRunning(child)) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGKILL');
    await gone;
  }

  /** Starts ferryd again on the same data directory and ports (after kill9 or stop). */
  restart(): Promise<void> {
    return this.launch();
  }

  async stop(): Promise<void> {
    if (this.child) await stopChild(this.child, 15_000);
  }
}
