// `ferry serve`: runs ferryd in the foreground with embedded defaults (or a --config file,
// serve-config.ts), prints where it listens, tells systemd when it is ready
// (service-notify.ts), re-reads its configuration on SIGHUP, and shuts down cleanly on
// SIGINT/SIGTERM (in-flight NBD requests are answered, files synced, the metadata store
// closed), or when the npm/npx process that started it is gone.
import net from 'node:net';
import path from 'node:path';
import { pino } from 'pino';
import { ApiServer } from '../api/server.js';
import { MetricsServer } from '../api/metrics-server.js';
import { Daemon } from '../control/daemon.js';
import type { TlsMode } from '../nbd/handshake.js';
import { DEFAULT_DATA } from './api-client.js';
import { validateName } from '../names.js';
import { RELOADABLE, changedKeys, mergeConfig, readConfigFile, type ConfigKey, type ServeConfig } from './serve-config.js';
import { textDestination } from './log-text.js';
import { notifyService } from './service-notify.js';
import type { ConnectionLimits } from '../net/connection-limiter.js';

export interface ServeOptions {
  data?: string;
  nbd: string;
  api: string;
  repl: string;
  site?: string;
  tls: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  pollUs?: string;
  /** HOST:PORT of an unauthenticated GET /metrics listener (off when absent). */
  metrics?: string;
  logLevel: string;
  /** json (default: one object per line, ISO times) or text (readable, for a terminal). */
  logFormat: string;
  /** A JSON file of serve flags (serve-config.ts); flags given on the command line win. */
  config?: string;
  /** Listener connection limits (whole numbers as given); the defaults when absent. */
  nbdConnections?: string;
  nbdConnectionsPerAddress?: string;
  apiConnections?: string;
  apiConnectionsPerAddress?: string;
  replConnections?: string;
  replConnectionsPerAddress?: string;
}

/** `--X-connections` and `--X-connections-per-address` as limits over the listener's defaults. */
function limitsOf(total: string | undefined, perAddress: string | undefined, flag: string): Partial<ConnectionLimits> {
  const count = (v: string | undefined, f: string): number | undefined => {
    if (v === undefined) return undefined;
    if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > 100_000) throw new Error(`${f} must be a whole number from 1 to 100000, got '${v}'`);
    return Number(v);
  };
  const out: Partial<ConnectionLimits> = {};
  const t = count(total, `--${flag}-connections`);
  const p = count(perAddress, `--${flag}-connections-per-address`);
  if (t !== undefined) out.connectionsMax = t;
  if (p !== undefined) out.perAddressMax = p;
  if (t !== undefined && p !== undefined && p > t) throw new Error(`--${flag}-connections-per-address (${p}) cannot exceed --${flag}-connections (${t})`);
  return out;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'];

export function parseHostPort(value: string, what: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`${what} must be HOST:PORT (e.g. 127.0.0.1:10809), got '${value}'`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/**
 * Binds and releases each fixed address (port 0 needs no check), so a taken one is refused
 * naming the flag to change. Another process may still take it before ferryd binds it; then
 * the start fails the same way, later, but still before any journal is read.
 */
async function probeAddresses(addresses: Array<[string, { host: string; port: number }]>): Promise<void> {
  for (const [flag, a] of addresses) {
    if (a.port === 0) continue;
    await new Promise<void>((resolve, reject) => {
      const server = net.createServer();
      server.once('error', (err: NodeJS.ErrnoException) => {
        const why = err.code === 'EADDRINUSE' ? 'is in use (another ferryd or program listens there)' : err.code === 'EACCES' ? 'needs privileges this user lacks' : `cannot be bound (${err.code ?? err.message})`;
        reject(new Error(`${flag} ${a.host}:${a.port} ${why}; choose another address with ${flag} (${err.code ?? 'error'}); nothing was created`));
      });
      server.listen({ host: a.host, port: a.port, exclusive: true }, () => server.close(() => resolve()));
    });
  }
}

export async function serve(given: ServeOptions, fromCli: (key: ConfigKey) => boolean = () => true): Promise<void> {
  const configFile = given.config === undefined ? null : path.resolve(given.config);
  let fileConfig: ServeConfig = configFile ? readConfigFile(configFile) : {};
  const opts = mergeConfig(given, fromCli, fileConfig);
  if (!LOG_LEVELS.includes(opts.logLevel)) throw new Error(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got '${opts.logLevel}'`);
  if (!['json', 'text'].includes(opts.logFormat)) throw new Error(`--log-format must be json or text, got '${opts.logFormat}'`);
  const dataDir = path.resolve(opts.data ?? process.env.FERRY_DATA ?? DEFAULT_DATA);
  if (!['off', 'on', 'require'].includes(opts.tls)) throw new Error(`--tls must be off, on or require, got '${opts.tls}'`);
  const repl = parseHostPort(opts.repl, '--repl');
  if (opts.site !== undefined) {
    try {
      validateName('peer', opts.site);
    } catch (err) {
      throw new Error(`--site must be a valid name: ${(err as Error).message}`);
    }
  }
  const pollUsMax = opts.pollUs === undefined ? undefined : Number(opts.pollUs);
  if (opts.pollUs !== undefined && (!/^\d+$/.test(opts.pollUs) || pollUsMax! > 10_000)) throw new Error(`--poll-us must be a whole number of microseconds from 0 to 10000, got '${opts.pollUs}'`);
  const nbdLimits = limitsOf(opts.nbdConnections, opts.nbdConnectionsPerAddress, 'nbd');
  const apiLimits = limitsOf(opts.apiConnections, opts.apiConnectionsPerAddress, 'api');
  const replLimits = limitsOf(opts.replConnections, opts.replConnectionsPerAddress, 'repl');
  const metricsAt = opts.metrics === undefined ? null : parseHostPort(opts.metrics, '--metrics');
  const log = pino(
    { level: opts.logLevel, base: { svc: 'ferryd' }, timestamp: pino.stdTimeFunctions.isoTime },
    opts.logFormat === 'text' ? textDestination(2) : pino.destination({ fd: 2, sync: false }),
  );
  const daemon = new Daemon({
    dataDir,
    nbd: parseHostPort(opts.nbd, '--nbd'),
    api: parseHostPort(opts.api, '--api'),
    repl,
    siteName: opts.site,
    tls: { mode: opts.tls as TlsMode, certFile: opts.tlsCert, keyFile: opts.tlsKey, caFile: opts.tlsCa },
    pollUsMax,
    limits: { nbd: nbdLimits, repl: replLimits },
    log,
  });
  // A taken address is found before anything is created (data directory, token, identity).
  await probeAddresses([
    ['--nbd', daemon.config.nbd],
    ['--api', daemon.config.api],
    ['--repl', daemon.config.repl],
    ...(metricsAt ? [['--metrics', metricsAt] as [string, { host: string; port: number }]] : []),
  ]);
  // Every listener is bound before load() recovers a journal: a port taken since fails here.
  await daemon.open().catch(async (err) => {
    await daemon.stop().catch(() => undefined);
    throw err;
  });
  const api = new ApiServer({ daemon, token: daemon.token, log });
  const metrics = metricsAt ? new MetricsServer(daemon) : null;
  let apiAddress: { host: string; port: number };
  let metricsAddress: { host: string; port: number } | null = null;
  try {
    apiAddress = await api.listen(daemon.config.api.host, daemon.config.api.port, apiLimits);
    if (metrics && metricsAt) metricsAddress = await metrics.listen(metricsAt.host, metricsAt.port);
    await daemon.load();
    // What recovery logged reaches stderr before the lines that say ferryd is up.
    await new Promise<void>((resolve) => log.flush(() => resolve()));
  } catch (err) {
    await metrics?.close().catch(() => undefined);
    await api.close().catch(() => undefined);
    await daemon.stop().catch(() => undefined);
    throw err;
  }
  daemon.apiAddress = apiAddress;
  const fmt = (a: { host: string; port: number }): string => (a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`);
  process.stdout.write(`ferryd: data directory ${dataDir}\n`);
  process.stdout.write(`ferryd: NBD listening on ${fmt(daemon.nbdAddress)}${opts.tls !== 'off' ? ` (TLS ${opts.tls})` : ''}\n`);
  process.stdout.write(`ferryd: replication listening on ${fmt(daemon.replAddress)} (site ${daemon.identity.siteName})\n`);
  process.stdout.write(`ferryd: API listening on http://${fmt(apiAddress)}\n`);
  if (metricsAddress) process.stdout.write(`ferryd: metrics (GET /metrics, no token) on http://${fmt(metricsAddress)}/metrics\n`);
  process.stdout.write(`ferryd: API token in ${path.join(dataDir, 'api-token')}; Ctrl-C (SIGINT) or SIGTERM stops ferryd\n`);
  log.info({ dataDir, nbd: daemon.nbdAddress, api: apiAddress, repl: daemon.replAddress, site: daemon.identity.siteName, siteId: daemon.identity.siteId }, 'ferryd started');
  const notReady = notifyService(`READY=1\nMAINPID=${process.pid}\nSTATUS=serving`);
  if (notReady) log.warn({ err: notReady }, 'could not tell systemd that ferryd is ready ($NOTIFY_SOCKET)');

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, 'shutting down: finishing in-flight requests');
    notifyService('STOPPING=1');
    Promise.all([api.close(), metrics?.close()])
      .catch((err) => log.error({ err: String(err) }, 'closing the API failed'))
      .then(() => daemon.stop())
      .then(
        () => {
          process.stdout.write('ferryd: stopped\n');
          log.flush();
          process.exit(0);
        },
        (err) => {
          log.error({ err: String(err) }, 'shutdown failed');
          log.flush();
          process.exit(1);
        },
      );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGHUP', () => {
    if (!configFile) {
      log.info('SIGHUP: no --config file to reload');
      return;
    }
    let next: ServeConfig;
    try {
      next = readConfigFile(configFile);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'SIGHUP: configuration not reloaded; ferryd goes on as it was');
      return;
    }
    for (const key of changedKeys(fileConfig, next)) {
      if (fromCli(key)) log.warn({ key }, 'SIGHUP: this setting was given on the command line, which wins over the file');
      else if (key === 'logLevel' && next.logLevel !== undefined && LOG_LEVELS.includes(next.logLevel)) {
        log.level = next.logLevel;
        log.info({ logLevel: next.logLevel }, 'SIGHUP: log level changed');
      } else if (RELOADABLE.includes(key)) log.error({ key, value: next[key] }, 'SIGHUP: invalid value, not applied');
      else log.warn({ key, value: next[key] }, 'SIGHUP: this setting changes at the next start only');
    }
    fileConfig = next;
    log.info({ config: configFile }, 'configuration reloaded');
  });
  // Started by npm or npx (`npm start`, `npx ferry serve`): when that parent is gone (killed
  // without forwarding a signal), stop too instead of running on unattended.
  if (process.env.npm_execpath !== undefined) {
    const parent = process.ppid;
    setInterval(() => {
      if (process.ppid !== parent) stop('parent exited');
    }, parentPollMs).unref();
  }
}

/** How often a ferryd started by npm checks that npm still runs. */
const parentPollMs = 1000;
