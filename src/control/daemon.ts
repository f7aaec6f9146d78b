// The control layer owns the daemon's state and lifecycle: the data directory, the
// metadata store, the disk registry, the API token, the site identity and peers, and
// the NBD and replication listeners. The API server sits above this layer: the process
// (cli/serve.ts) starts it on a started daemon and closes it before stopping the daemon.
// Start order: data directory lock → token, identity → store → NBD and replication listeners
// bound (open()) → the API (cli/serve.ts) → disks recovered (load()); so a second ferryd on the
// directory or a port in use fails the start before any journal is read. Stop order is the
// reverse, with in-flight NBD requests finished and every file synced before the store closes
// and the lock is dropped.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { FerryError } from '../errors.js';
import type { Logger } from 'pino';
import { MetadataStore, type PeerRow } from './store.js';
import { DiskRegistry } from './disk-registry.js';
import { StagingControl } from './staging-control.js';
import { GroupControl } from './group-control.js';
import { MirrorControl } from './mirror-control.js';
import { NbdServer, type NbdTlsConfig } from '../nbd/server.js';
import { PeerControl } from './peer-control.js';
import { loadOrCreateIdentity, type SiteIdentity } from '../replication/identity.js';
import { ReplListener } from '../replication/repl-listener.js';
import { connectPeer } from '../replication/peer-connector.js';
import { Receiver, type ReplicaHost } from '../replication/receiver.js';
import { ReplicaControl } from './replica-control.js';
import { DrillControl } from './drill-control.js';
import { DrControl } from './dr-control.js';
import { SwitchoverControl } from './switchover.js';
import { ReconnectControl } from './reconnect.js';
import { serveControl, type ControlHandlers } from './control-session.js';
import { lockPath, type FileLock } from '../disk/file-lock.js';
import type { ConnectionLimits } from '../net/connection-limiter.js';

export interface DaemonConfig {
  dataDir: string;
  nbd: { host: string; port: number };
  api: { host: string; port: number };
  /** The replication listener (peers dial it). */
  repl: { host: string; port: number };
  /** This site's name for its peers (--site); saved in the data directory once given. */
  siteName?: string;
  tls: NbdTlsConfig;
  /** NBD idle polling window, µs (nbd/idle-poller.ts); the NBD server's default when absent. */
  pollUsMax?: number;
  /** Listener connection limits over the defaults (src/net/connection-limiter.ts). */
  limits?: { nbd?: Partial<ConnectionLimits>; repl?: Partial<ConnectionLimits> };
  log: Logger;
}

export const TOKEN_FILE = 'api-token';
/** How long a stop waits for in-flight NBD requests before refusing writes still waiting for space. */
const stopGraceMs = 10_000;
export const DB_FILE = 'ferry.db';
export const LOCK_FILE = 'lock';

export class Daemon {
  readonly config: DaemonConfig;
  readonly log: Logger;
  store!: MetadataStore;
  disks!: DiskRegistry;
  staging!: StagingControl;
  mirrors!: MirrorControl;
  groups!: GroupControl;
  replicas!: ReplicaControl;
  drills!: DrillControl;
  dr!: DrControl;
  switchovers!: SwitchoverControl;
  reconnects!: ReconnectControl;
  identity!: SiteIdentity;
  peers!: PeerControl;
  repl!: ReplListener;
  private nbd!: NbdServer;
  /** The API bearer token (created on first start); the API server checks it. */
  token!: string;
  readonly startedAt = new Date();
  /** Held from the first step of open() to the last of stop(): one ferryd per data directory. */
  private dirLock: FileLock | null = null;
  /** Set once load() has recovered every disk: until then no export is served, no session taken. */
  ready = false;
  nbdAddress!: { host: string; port: number };
  /** Where the API server listens, once the process started it (shown by the status route). */
  apiAddress: { host: string; port: number } | null = null;
  replAddress!: { host: string; port: number };

  constructor(config: DaemonConfig) {
    this.config = config;
    this.log = config.log;
  }

  /** open() then load(): what a caller that binds nothing else needs. */
  async start(): Promise<void> {
    await this.open();
    await this.load();
  }

  /**
   * Takes the data directory (its lock first: a second ferryd on it is refused here, having
   * read nothing), opens the metadata store and binds the NBD and replication listeners, so a
   * port in use fails the start before recovery touches any journal. Until load() ends, NBD
   * clients find no export and peers' sessions are closed (they reconnect).
   */
  async open(): Promise<void> {
    const dir = this.config.dataDir;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.dirLock = lockPath(path.join(dir, LOCK_FILE), 'data directory lock');
    this.token = loadOrCreateToken(dir);
    this.identity = loadOrCreateIdentity(dir, this.config.siteName);
    this.store = new MetadataStore(path.join(dir, DB_FILE));
    this.disks = new DiskRegistry(this.store, dir, this.log);
    this.dr = new DrControl(this.store, this.log, path.join(dir, 'bitmaps'));
    const dr = this.dr;
    this.staging = new StagingControl(this.store, this.disks, dir, this.log, (disk) => () => dr.beforeWrite(disk));
    this.replicas = new ReplicaControl(this.store, this.disks, this.staging, dir, this.log, this.dr);
    const identity = this.identity;
    const store = this.store;
    this.mirrors = new MirrorControl(this.store, this.disks, this.staging, dir, this.log, {
      peer: (name) => store.peer(name),
      connect: (peer, hello) => connectPeer(identity, peer, hello),
      replicas: this.replicas,
      dr: this.dr,
    });
    const mirrors = this.mirrors;
    this.groups = new GroupControl(this.store, this.disks, this.staging, mirrors, this.log);
    this.peers = new PeerControl(this.store, this.identity, this.log, { inUse: (name) => mirrors.usesPeer(name) });
    this.nbd = new NbdServer({
      host: this.config.nbd.host,
      port: this.config.nbd.port,
      tls: this.config.tls,
      pollUsMax: this.config.pollUsMax,
      limits: this.config.limits?.nbd,
      log: this.log,
      catalog: {
        find: (name) => (this.ready ? (this.disks.volume(name) ?? this.drills.exportVolume(name)) : undefined),
        names: () => (this.ready ? [...this.disks.names(), ...this.drills.exportNames()].sort() : []),
      },
    });
    const nbd = this.nbd;
    this.drills = new DrillControl({ store: this.store, disks: this.disks, replicas: this.replicas, disconnect: (v) => nbd.disconnect(v) }, dir, this.log);
    this.nbdAddress = await this.nbd.listen();
    // What a switchover and a reconnect both work with (each runs between this site and a peer).
    const drDeps = {
      store: this.store,
      disks: this.disks,
      mirrors,
      replicas: this.replicas,
      dr: this.dr,
      disconnectClients: async (disk: string): Promise<number> => {
        let n = 0;
        for (const v of this.disks.exportVolumes(disk)) n += await this.nbd.disconnect(v);
        return n;
      },
      replPort: () => this.replAddress.port,
      siteName: this.identity.siteName,
      connect: (peer: PeerRow) => connectPeer(identity, peer, { purpose: 'control' }),
      log: this.log,
    };
    this.switchovers = new SwitchoverControl(drDeps);
    this.reconnects = new ReconnectControl({ ...drDeps, staging: this.staging, dataDir: dir });
    const replicas = this.replicas;
    const switchovers = this.switchovers;
    const reconnects = this.reconnects;
    // What a peer may ask of this site over a 'control' session (control-session.ts).
    const controlOps: ControlHandlers = {
      switchover: (from, meta) => switchovers.serveRequest(from, meta),
      reconnect: (from, meta, payload) => reconnects.serveRequest(from, meta, payload),
    };
    // What a replication session asks of this site: its replicas, and a switchover's take-over.
    const replicaHost: ReplicaHost = {
      attach: (peer, meta) => replicas.attach(peer, meta),
      markSynced: (disk, synced) => replicas.markSynced(disk, synced),
      beginResync: (disk) => replicas.beginResync(disk),
      release: (disk) => replicas.release(disk),
      generations: (disk) => replicas.generations(disk),
      switchover: (disk, meta, from) => switchovers.takeOver(disk, meta, from),
    };
    this.repl = new ReplListener({
      host: this.config.repl.host,
      port: this.config.repl.port,
      identity: this.identity,
      peers: { byFingerprint: (fp) => this.peers.byFingerprint(fp) },
      pairing: this.peers.pairing,
      limits: this.config.limits?.repl,
      onSession: (session) => {
        if (session.hello.purpose === 'control' && this.ready) {
          void serveControl(session, controlOps, this.log);
          return;
        }
        if (session.hello.purpose !== 'mirror' || !this.ready) {
          session.socket.destroy();
          return;
        }
        void new Receiver(session, replicaHost, this.log.child({ peer: session.peer.name })).run();
      },
      log: this.log,
    });
    this.replAddress = await this.repl.listen();
  }

  /** Opens every registered disk, recovering its staging area and mirror (after open()). */
  async load(): Promise<void> {
    await this.disks.load(async (row, volume) => {
      this.dr.openAtStart(row.name, volume); // a fenced disk refuses writes before any client is served
      await this.replicas.guardAtStart(row, volume); // before the staging area replays (U1)
      await this.staging.openAtStart(row, volume);
      await this.dr.openChangeMap(row.name, volume); // the regions changed since divergence: before any client write, and before a reconnect's delta sync resumes
      await this.mirrors.openAtStart(row, volume);
      this.replicas.openAtStart(row, volume);
    });
    this.drills.recoverAtStart(); // a test failover a stop or crash interrupted is ended (drill-control.ts)
    this.ready = true;
  }

  get nbdConnections(): number {
    return this.nbd.connectionCount;
  }

  async stop(): Promise<void> {
    // In-flight NBD requests are answered first. A write waiting for staging space that may
    // never come (its primary full, its mirror's link down) is refused after a grace period:
    // it was never acknowledged, so nothing is lost, and the stop is bounded.
    const nbdClosed = this.nbd?.close();
    if (nbdClosed) {
      const grace = new AbortController();
      const ended = await Promise.race([nbdClosed.then(() => true), sleep(stopGraceMs, false, { signal: grace.signal }).catch(() => true)]);
      grace.abort();
      if (!ended) {
        this.log.warn({ graceMs: stopGraceMs }, 'stopping: writes still waiting for staging space are refused (not acknowledged)');
        this.disks?.refuseWaitingWrites(new FerryError('SHUTTING_DOWN', 'ferryd is stopping: this write waited for staging space too long and was not acknowledged'));
        await nbdClosed;
      }
    }
    await this.drills?.close();
    this.replicas?.close();
    await this.repl?.close().catch((err) => this.log.error({ err: String(err) }, 'closing the replication listener failed'));
    await this.mirrors?.close();
    await this.disks?.close();
    this.store?.close();
    this.dirLock?.release();
  }
}

/** The API bearer token, created (0600) on first start; the CLI reads the same file. */
export function loadOrCreateToken(dataDir: string): string {
  const file = path.join(dataDir, TOKEN_FILE);
  try {
    const t = fs.readFileSync(file, 'utf8').trim();
    if (t.length >= 32) return t;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const token = crypto.randomBytes(32).toString('hex');
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, `${token}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
  return token;
}
