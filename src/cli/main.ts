// The cli layer: the `ferry` command. `ferry serve` runs the daemon; every other
// command is a thin client of ferryd's REST API (api-client.ts), printing tables for
// people and JSON with --json. Exit codes: 0 ok, 1 the server refused (error code
// printed), 2 bad usage, 3 ferryd unreachable.
import fs from 'node:fs';
import path from 'node:path';
import { Command, Option, CommanderError } from 'commander';
import { packageRoot } from '../package-root.js';
import { ApiError } from './api-client.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, keyValues, table } from './output.js';
import type { Disk as DiskInfo, Pool as PoolInfo } from '../api/types.js';
import { registerStagingCommands } from './staging-commands.js';
import { registerStatusCommand } from './status-command.js';
import { registerMirrorCommands } from './mirror-commands.js';
import { registerPeerCommands } from './peer-commands.js';
import { registerDrillCommands } from './drill-commands.js';
import { registerGroupCommands } from './group-commands.js';
import { registerDrCommands } from './dr-commands.js';
import { registerEventsCommand } from './events-command.js';

const program = new Command('ferry')
  .description('Ferry: asynchronous block-device mirroring server (NBD) and its management CLI')
  .option('--api <url>', 'ferryd API address (default $FERRY_API or http://127.0.0.1:7400)')
  .option('--token <token>', 'API token (default $FERRY_TOKEN or <data>/api-token)')
  .option('--data <dir>', 'data directory, to find the token (default $FERRY_DATA or ./var/ferry)')
  .version((JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version, '-V, --version', 'print the version of ferry and exit')
  .showHelpAfterError('(run with --help for usage)')
  // Every command's help lists the global options (--api, --token, --data) too.
  .configureHelp({ showGlobalOptions: true })
  .exitOverride();

function diskDetails(d: DiskInfo): string {
  return keyValues([
    ['name', d.name],
    ['kind', d.kind],
    ['state', d.state + (d.error ? ` (${d.error})` : '')],
    ['size', `${bytes(d.size)} (${d.size} bytes)`],
    ['allocated', bytes(d.allocatedBytes)],
    ['path', d.path],
    ['pool', d.pool ?? '-'],
    ['read-only', d.readOnly ? 'yes' : 'no'],
    ['clients', String(d.clients)],
    ...(d.group ? ([['group', `${d.group} (its writes go through the group's staging area; its mirror is the group's: ferry group show ${d.group})`]] as Array<[string, string]>) : []),
    ['created', d.createdAt],
    ...(d.dr ? ([['dr', `${d.dr.state}${d.dr.reason ? ` (${d.dr.reason})` : ''}, generation ${d.dr.generation ?? '-'}`]] as Array<[string, string]>) : []),
  ]);
}

program
  .command('serve')
  .description('run the ferryd daemon in the foreground')
  .option('--data <dir>', 'data directory (default $FERRY_DATA or ./var/ferry)')
  .option('--nbd <host:port>', 'NBD listen address', '127.0.0.1:10809')
  .option('--api <host:port>', 'management API listen address', '127.0.0.1:7400')
  .option('--repl <host:port>', 'replication listen address (peers dial it)', '127.0.0.1:7401')
  .option('--site <name>', "this site's name for its peers (default site-<id>; remembered once given)")
  .addOption(new Option('--tls <mode>', 'NBD TLS: off, on (clients may STARTTLS) or require').choices(['off', 'on', 'require']).default('off'))
  .option('--tls-cert <file>', 'PEM certificate for NBD TLS')
  .option('--tls-key <file>', 'PEM private key for NBD TLS')
  .option('--tls-ca <file>', 'PEM CA bundle: require NBD clients to present a certificate it signed')
  .option('--poll-us <us>', 'poll for the next NBD request this long (µs) after the last one replies, instead of sleeping; 0: never (default 200)')
  .option('--nbd-connections <n>', 'NBD connections at once, in total (default: from the open-files limit, at most 512)')
  .option('--nbd-connections-per-address <n>', 'NBD connections at once from one client address (default 128)')
  .option('--api-connections <n>', 'API connections at once, in total (default: from the open-files limit, at most 256)')
  .option('--api-connections-per-address <n>', 'API connections at once from one client address (default 64)')
  .option('--repl-connections <n>', 'replication connections at once, in total (default: from the open-files limit, at most 128)')
  .option('--repl-connections-per-address <n>', 'replication connections at once from one address (default 64)')
  .option('--metrics <host:port>', 'also serve GET /metrics here without the API token, for Prometheus (default: off; /metrics on the API needs the token)')
  .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace']).default('info'))
  .addOption(new Option('--log-format <format>', 'json (one object per line, ISO times) or text (readable, for a terminal)').choices(['json', 'text']).default('json'))
  .option('--config <file>', 'a JSON file of these flags by camelCase name ({"data": "/var/lib/ferry", "logLevel": "info"}); flags on the command line win; SIGHUP reloads it')
  .action(async (opts, cmd: Command) => {
    // --data and --api are also global options of the client commands; take this command's own values.
    const own = cmd.opts();
    // Loaded only for `serve`: the daemon's modules (fastify, SQLite, the data path) cost a client command nothing.
    const { serve } = await import('./serve.js');
    const globals = program.opts() as { data?: string; api?: string };
    const fromCli = (key: string): boolean => cmd.getOptionValueSource(key) === 'cli' || ((key === 'data' || key === 'api') && globals[key] !== undefined);
    await serve({ ...opts, data: own.data ?? globals.data, api: cmd.getOptionValueSource('api') === 'default' && globals.api ? globals.api : own.api }, fromCli);
  });

const disk = program.command('disk').description('virtual and service-enabled (adopted) disks');

disk
  .command('create <name>')
  .description('create a thin-provisioned virtual disk in a storage pool')
  .requiredOption('--size <size>', 'size, e.g. 10G (K/M/G/T binary suffixes)')
  .option('--pool <pool>', 'storage pool (default: the pool in the data directory)')
  .option('--read-only', 'serve it read-only')
  .addOption(jsonOpt())
  .action(async (name: string, opts, cmd: Command) => {
    const d = await client(cmd).request<DiskInfo>('POST', '/v1/disks', { name, size: opts.size, pool: opts.pool, readOnly: opts.readOnly });
    print(cmd, d, () => `created virtual disk ${d.name} (${bytes(d.size)}) at ${d.path}\n`);
  });

disk
  .command('adopt <name>')
  .description('serve an existing image file or block device as-is (nothing but client data is written into it)')
  .requiredOption('--path <path>', 'absolute path of the image file or block device')
  .option('--read-only', 'serve it read-only')
  .addOption(jsonOpt())
  .action(async (name: string, opts, cmd: Command) => {
    const d = await client(cmd).request<DiskInfo>('POST', '/v1/disks/adopt', { name, path: opts.path, readOnly: opts.readOnly });
    print(cmd, d, () => `adopted ${d.path} as disk ${d.name} (${bytes(d.size)})\n`);
  });

disk
  .command('list')
  .description('list disks')
  .addOption(jsonOpt())
  .action(async (_opts, cmd: Command) => {
    const disks = await client(cmd).request<DiskInfo[]>('GET', '/v1/disks');
    print(cmd, disks, () =>
      table(
        disks.map((d) => ({ name: d.name, kind: d.kind, size: bytes(d.size), allocated: bytes(d.allocatedBytes), state: d.state, clients: String(d.clients), path: d.path })),
        ['name', 'kind', 'size', 'allocated', 'state', 'clients', 'path'],
      ),
    );
  });

disk
  .command('show <name>')
  .description('show one disk')
  .addOption(jsonOpt())
  .action(async (name: string, _opts, cmd: Command) => {
    const d = await client(cmd).request<DiskInfo>('GET', `/v1/disks/${encodeURIComponent(name)}`);
    print(cmd, d, () => diskDetails(d));
  });

disk
  .command('remove <name>')
  .description("unregister a disk (--purge also deletes a virtual disk's file; adopted data is never deleted)")
  .option('--purge', "delete the virtual disk's file too")
  .addOption(jsonOpt())
  .action(async (name: string, opts, cmd: Command) => {
    const d = await client(cmd).request<DiskInfo>('DELETE', `/v1/disks/${encodeURIComponent(name)}${opts.purge ? '?purge=true' : ''}`);
    print(cmd, d, () => `removed disk ${d.name}${opts.purge ? ` and deleted ${d.path}` : ` (data left at ${d.path})`}\n`);
  });

const pool = program.command('pool').description('storage pools (directories that hold virtual disks)');

pool
  .command('add <name>')
  .description('register a directory as a storage pool')
  .requiredOption('--path <dir>', 'absolute path of an existing directory')
  .addOption(jsonOpt())
  .action(async (name: string, opts, cmd: Command) => {
    const p = await client(cmd).request<PoolInfo>('POST', '/v1/pools', { name, path: opts.path });
    print(cmd, p, () => `added pool ${p.name} at ${p.path}\n`);
  });

pool
  .command('list')
  .description('list storage pools')
  .addOption(jsonOpt())
  .action(async (_opts, cmd: Command) => {
    const pools = await client(cmd).request<PoolInfo[]>('GET', '/v1/pools');
    print(cmd, pools, () => table(pools.map((p) => ({ name: p.name, disks: String(p.disks), path: p.path })), ['name', 'disks', 'path']));
  });

pool
  .command('remove <name>')
  .description('unregister an empty pool (the directory is left alone)')
  .addOption(jsonOpt())
  .action(async (name: string, _opts, cmd: Command) => {
    const p = await client(cmd).request<PoolInfo>('DELETE', `/v1/pools/${encodeURIComponent(name)}`);
    print(cmd, p, () => `removed pool ${p.name}\n`);
  });

registerStatusCommand(program);
registerStagingCommands(program);
registerMirrorCommands(program);
registerDrillCommands(program);
registerPeerCommands(program);
registerDrCommands(program);
registerGroupCommands(program);
registerEventsCommand(program);

async function main(): Promise<void> {
  try {
    // `ferry help mirror promote` is `ferry mirror promote --help` (commander's help command
    // looks one level down only).
    const argv = process.argv.slice(2);
    const args = argv[0] === 'help' && argv.length > 2 ? [...argv.slice(1), '--help'] : argv;
    await program.parseAsync(args, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
    const json = process.argv.includes('--json');
    if (err instanceof ApiError) {
      if (json) process.stderr.write(JSON.stringify({ error: { code: err.code, message: err.message } }) + '\n');
      else process.stderr.write(`ferry: ${err.code}: ${err.message}\n`);
      process.exit(err.code === 'UNREACHABLE' ? 3 : 1);
    }
    process.stderr.write(`ferry: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof Error && /must be|must be HOST/.test(err.message) ? 2 : 1);
  }
}

void main();
