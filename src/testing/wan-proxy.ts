// The testing layer: WanProxy is a userspace WAN emulator for tests of site-to-site
// replication (no netem here). It listens on 127.0.0.1 and forwards each accepted
// connection to a target host:port; it owns both sockets of every proxied connection and,
// per direction of each, a bounded queue of chunks stamped with their arrival time. A
// chunk leaves at arrival + delayMs (one timer per queue head, many chunks in flight),
// through a token bucket shared by every connection in that direction. cut() pulls the
// cable: nothing passes either way, new connections are accepted but held silent (the
// target is not even dialled) and data is kept; restore() lets it flow again. A FIN or an
// abrupt close travels in band, behind the data, delayed and held by a cut like the data.
// resetAll() resets every connection on both sides at once. Memory is bounded: past
// maxBufferedBytes queued in one direction of one connection, the source is paused.
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export type Direction = 'up' | 'down'; // up: client → target; down: target → client

export interface WanProxyOptions {
  targetPort: number;
  targetHost?: string; // default 127.0.0.1
  listenPort?: number; // default 0 (ephemeral)
  delayMs?: number; // one-way, each direction; default 0
  bytesPerSec?: number; // per direction, shared by all connections; 0 = unlimited (default)
  burstBytes?: number; // token bucket size; default max(4 KiB, 20 ms worth of bytesPerSec)
  maxBufferedBytes?: number; // per direction per connection; default 16 MiB
}

export interface WanProxyStats {
  bytesUp: number; // delivered to the target
  bytesDown: number; // delivered to clients
  connectionsAccepted: number;
  activeConnections: number;
  bufferedUp: number; // queued in the proxy, plus unflushed in the sockets' write buffers
  bufferedDown: number;
  maxBufferedOneWay: number; // the most any one direction of one connection holds now
}

type Item = { at: number; data: Buffer } | { at: number; mark: 'end' | 'reset' };

type Bucket = { tokens: number; last: number };

/** Resets a socket (RST) where Node can (resetAndDestroy: Node ≥ 18.3), else destroys it. */
function hardClose(s: net.Socket): void {
  try {
    if (typeof s.resetAndDestroy === 'function' && !s.destroyed && !s.connecting) return void s.resetAndDestroy();
  } catch {} // e.g. a handle that is not TCP
  s.destroy();
}

/** One direction of one connection. */
class Pipe {
  queue: Item[] = [];
  queued = 0;
  ready = false; // destination connected
  dead = false;
  private timer: NodeJS.Timeout | undefined;
  private draining = false;
  private paused = false;

  constructor(
    private readonly proxy: WanProxy,
    readonly dir: Direction,
    readonly src: net.Socket,
    readonly dst: net.Socket,
  ) {
    src.on('data', (b: Buffer) => this.push({ at: performance.now(), data: b }));
    src.on('end', () => this.push({ at: performance.now(), mark: 'end' }));
    dst.on('drain', () => {
      this.draining = false;
      this.pump();
    });
  }

  get buffered(): number {
    return this.queued + (this.dst.destroyed ? 0 : this.dst.writableLength);
  }

  push(item: Item): void {
    if (this.dead) return;
    this.queue.push(item);
    if ('data' in item) {
      this.queued += item.data.length;
      if (this.queued >= this.proxy.maxBufferedBytes && !this.paused) {
        this.paused = true;
        this.src.pause();
      }
    }
    if (this.queue.length === 1) this.pump();
  }

  /** The source went away without a FIN: pass a reset on, after the data already queued. */
  sourceClosed(ended: boolean): void {
    if (!ended) this.push({ at: performance.now(), mark: 'reset' });
  }

  /** The destination is gone: nothing more can be delivered. */
  kill(): void {
    this.dead = true;
    this.queue = [];
    this.queued = 0;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  pump(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const p = this.proxy;
    while (!this.dead && this.ready && !p.isCut && !this.draining && this.queue.length > 0) {
      const head = this.queue[0]!;
      const now = performance.now();
      const wait = head.at + p.delayMs - now;
      if (wait > 0) return this.schedule(wait);
      if ('mark' in head) {
        this.queue.shift();
        if (head.mark === 'end') this.dst.end();
        else hardClose(this.dst);
        continue;
      }
      let n = head.data.length;
      const rate = p.bytesPerSec;
      if (rate > 0) {
        const b = p.bucket(this.dir, now);
        const need = Math.min(n, p.burstBytes);
        if (b.tokens < need) return this.schedule(((need - b.tokens) * 1000) / rate);
        n = Math.min(n, Math.floor(b.tokens));
        b.tokens -= n;
      }
      const out = n === head.data.length ? head.data : head.data.subarray(0, n);
      if (n === head.data.length) this.queue.shift();
      else head.data = head.data.subarray(n);
      this.queued -= n;
      p.count(this.dir, n);
      if (this.paused && this.queued < p.maxBufferedBytes) {
        this.paused = false;
        this.src.resume();
      }
      if (!this.dst.write(out)) this.draining = true;
    }
  }

  private schedule(ms: number): void {
    this.timer = setTimeout(() => this.pump(), Math.max(1, Math.ceil(ms))); // pump() rechecks the clock
  }
}

// open: sockets not yet closed; dialled: the target connection was started.
type Conn = { client: net.Socket; target: net.Socket; up: Pipe; down: Pipe; dialled: boolean; open: number };

export class WanProxy {
  readonly targetHost: string;
  readonly targetPort: number;
  maxBufferedBytes: number;
  private delay: number;
  private rate: number;
  private burst: number | undefined;
  private cutNow = false;
  private readonly server: net.Server;
  private readonly conns = new Set<Conn>();
  private readonly buckets: Record<Direction, Bucket> = { up: { tokens: 0, last: 0 }, down: { tokens: 0, last: 0 } };
  private counters = { bytesUp: 0, bytesDown: 0, connectionsAccepted: 0 };
  private readonly listenPort: number;

  constructor(opts: WanProxyOptions) {
    this.targetHost = opts.targetHost ?? '127.0.0.1';
    this.targetPort = opts.targetPort;
    this.listenPort = opts.listenPort ?? 0;
    this.delay = opts.delayMs ?? 0;
    this.rate = opts.bytesPerSec ?? 0;
    this.burst = opts.burstBytes;
    this.maxBufferedBytes = opts.maxBufferedBytes ?? 16 * 2 ** 20;
    this.resetBuckets();
    this.server = net.createServer({ allowHalfOpen: true }, (s) => this.accept(s));
  }

  /** Creates a proxy and waits until it listens. */
  static async start(opts: WanProxyOptions): Promise<WanProxy> {
    const p = new WanProxy(opts);
    await p.listen();
    return p;
  }

  /** Starts listening on 127.0.0.1; resolves with the port. */
  listen(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.listenPort, '127.0.0.1', () => {
        this.server.off('error', reject);
        resolve(this.port);
      });
    });
  }

  get port(): number {
    const a = this.server.address();
    return a && typeof a === 'object' ? a.port : this.listenPort;
  }

  get delayMs(): number {
    return this.delay;
  }
  /** Applies to queued data too: each chunk leaves at its arrival + the current delay. */
  set delayMs(ms: number) {
    this.delay = Math.max(0, ms);
    this.pumpAll();
  }

  get bytesPerSec(): number {
    return this.rate;
  }
  set bytesPerSec(r: number) {
    this.rate = Math.max(0, r);
    this.resetBuckets();
    this.pumpAll();
  }

  get burstBytes(): number {
    return this.burst ?? Math.max(4096, Math.ceil(this.rate / 50));
  }
  set burstBytes(b: number | undefined) {
    this.burst = b === undefined ? undefined : Math.max(1, b);
    this.resetBuckets();
    this.pumpAll();
  }

  get isCut(): boolean {
    return this.cutNow;
  }

  /** Pulls the cable: no byte, FIN or reset passes either way until restore(). */
  cut(): void {
    this.cutNow = true;
  }

  /** Plugs the cable back: held data flows; connections accepted during the cut dial the target. */
  restore(): void {
    if (!this.cutNow) return;
    this.cutNow = false;
    for (const c of this.conns) if (!c.dialled) this.dial(c);
    this.pumpAll();
  }

  /** Resets every proxied connection on both sides, now (nothing queued is delivered). */
  resetAll(): void {
    for (const c of [...this.conns]) {
      c.up.kill();
      c.down.kill();
      hardClose(c.client);
      if (c.dialled) hardClose(c.target); // else the client's close retires it
    }
  }

  stats(): WanProxyStats {
    let bufferedUp = 0;
    let bufferedDown = 0;
    let maxBufferedOneWay = 0;
    for (const c of this.conns) {
      bufferedUp += c.up.buffered;
      bufferedDown += c.down.buffered;
      maxBufferedOneWay = Math.max(maxBufferedOneWay, c.up.buffered, c.down.buffered);
    }
    return { ...this.counters, activeConnections: this.conns.size, bufferedUp, bufferedDown, maxBufferedOneWay };
  }

  /** Resets every connection and stops listening; resolves when the server is closed. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.resetAll();
    });
  }

  /** @internal */
  bucket(dir: Direction, now: number): Bucket {
    const b = this.buckets[dir];
    b.tokens = Math.min(this.burstBytes, b.tokens + ((now - b.last) * this.rate) / 1000);
    b.last = now;
    return b;
  }

  /** @internal */
  count(dir: Direction, n: number): void {
    if (dir === 'up') this.counters.bytesUp += n;
    else this.counters.bytesDown += n;
  }

  private resetBuckets(): void {
    const now = performance.now();
    for (const b of Object.values(this.buckets)) {
      b.tokens = Math.min(b.tokens, this.burstBytes);
      b.last = now;
    }
  }

  private pumpAll(): void {
    for (const c of this.conns) {
      c.up.pump();
      c.down.pump();
    }
  }

  private accept(client: net.Socket): void {
    this.counters.connectionsAccepted++;
    client.setNoDelay(true);
    // Not connected yet: created now so both pipes exist; dialled at once, or on restore().
    const target = new net.Socket({ allowHalfOpen: true }).setNoDelay(true); // applied on connect
    const c: Conn = { client, target, dialled: false, open: 2, up: new Pipe(this, 'up', client, target), down: new Pipe(this, 'down', target, client) };
    c.down.ready = true;
    this.conns.add(c);
    for (const s of [client, target]) s.on('error', () => {}); // each ends in 'close'
    const closed = (): void => {
      if (--c.open === 0) this.conns.delete(c);
    };
    client.on('close', () => {
      c.down.kill();
      c.up.sourceClosed(client.readableEnded);
      closed();
      if (!c.dialled) {
        // Never dialled (accepted during a cut): there is no target connection to tell.
        c.dialled = true;
        c.up.kill();
        closed();
      }
    });
    target.on('close', () => {
      c.up.kill();
      c.down.sourceClosed(target.readableEnded);
      closed();
    });
    if (!this.cutNow) this.dial(c);
  }

  private dial(c: Conn): void {
    c.dialled = true;
    c.target.connect({ host: this.targetHost, port: this.targetPort }, () => {
      c.up.ready = true;
      c.up.pump();
    });
  }
}
