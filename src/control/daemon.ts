// The control layer owns the daemon's state and lifecycle: the data directory, the
// metadata store, the disk registry, the API token, the site identity and peers, and
// the NBD and replication listeners. The API server sits above this layer: the process
// (cli/serve.ts) starts it on a started daemon and closes it before stopping the daemon.
// Start order: data dir → identity → store → disks → NBD → replication (then the API);
// stop order is the reverse, with in-flight NBD requests finished and every file synced
// before the store closes.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { MetadataStore } from './store.js';
import { DiskRegistry } from './disk-registry.js';
import { StagingControl } from './staging-control.js';
import { MirrorControl } from './mirror-control.js';
import { NbdServer, type NbdTlsConfig } from '../nbd/server.js';
import { PeerControl } from './peer-control.js';
import { loadOrCreateIdentity, type SiteIdentity } from '../replication/identity.js';
import { ReplListener } from '../replication/repl-listener.js';
import { connectPeer } from '../replication/peer-connector.js';
import { Receiver } from '../replication/receiver.js';
import { ReplicaControl } from './replica-control.js';

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
  log: Logger;
}

export const TOKEN_FILE = 'api-token';
export const DB_FILE = 'ferry.db';

export class Daemon {
  readonly config: DaemonConfig;
  readonly log: Logger;
  store!: MetadataStore;
  disks!: DiskRegistry;
  staging!: StagingControl;
  mirrors!: MirrorControl;
  replicas!: ReplicaControl;
  identity!: SiteIdentity;
  peers!: PeerControl;
  repl!: ReplListener;
  private nbd!: NbdServer;
  /** The API bearer token (created on first start); the API server checks it. */
  token!: string;
  readonly startedAt = new Date();
  nbdAddress!: { host: string; port: number };
  /** Where the API server listens, once the process started it (shown by the status route). */
  apiAddress: { host: string; port: number } | null = null;
  replAddress!: { host: string; port: number };

  constructor(config: DaemonConfig) {
    this.config = config;
    this.log = config.log;
  }

  async start(): Promise<void> {
    const dir = this.config.dataDir;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.token = loadOrCreateToken(dir);
    this.identity = loadOrCreateIdentity(dir, this.config.siteName);
    this.store = new MetadataStore(path.join(dir, DB_FILE));
    this.disks = new DiskRegistry(this.store, dir, this.log);
    this.staging = new StagingControl(this.store, this.disks, dir, this.log);
    this.replicas = new ReplicaControl(this.store, this.disks, this.staging, dir, this.log);
    const identity = this.identity;
    const store = this.store;
    this.mirrors = new MirrorControl(this.store, this.disks, this.staging, dir, this.log, {
      peer: (name) => store.peer(name),
      connect: (peer, hello) => connectPeer(identity, peer, hello),
      replicas: this.replicas,
    });
    const mirrors = this.mirrors;
    this.peers = new PeerControl(this.store, this.identity, this.log, { inUse: (name) => mirrors.usesPeer(name) });
    await this.disks.load(async (row, volume) => {
      await this.replicas.guardAtStart(row, volume); // before the staging area replays (U1)
      await this.staging.openAtStart(row, volume);
      await this.mirrors.openAtStart(row, volume);
      this.replicas.openAtStart(row, volume);
    });
    this.nbd = new NbdServer({
      host: this.config.nbd.host,
      port: this.config.nbd.port,
      tls: this.config.tls,
      pollUsMax: this.config.pollUsMax,
      log: this.log,
      catalog: { find: (name) => this.disks.volume(name), names: () => this.disks.names() },
    });
    this.nbdAddress = await this.nbd.listen();
    const replicas = this.replicas;
    this.repl = new ReplListener({
      host: this.config.repl.host,
      port: this.config.repl.port,
      identity: this.identity,
      peers: { byFingerprint: (fp) => this.peers.byFingerprint(fp) },
      pairing: this.peers.pairing,
      onSession: (session) => {
        if (session.hello.purpose !== 'mirror') {
          session.socket.destroy();
          return;
        }
        void new Receiver(session, replicas, this.log.child({ peer: session.peer.name })).run();
      },
      log: this.log,
    });
    this.replAddress = await this.repl.listen();
  }

  get nbdConnections(): number {
    return this.nbd.connectionCount;
  }

  async stop(): Promise<void> {
    await this.nbd?.close();
    this.replicas?.close();
    await this.repl?.close().catch((err) => this.log.error({ err: String(err) }, 'closing the replication listener failed'));
    await this.mirrors?.close();
    await this.disks?.close();
    this.store?.close();
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
