// `ferry peer ...`: pair this site with another ferryd (token on the other site, add
// here), list, show (with a live check of the link) and remove peers. `peer show` exits
// 1 when a peer with an address cannot be reached or authenticated.
import type { Command } from 'commander';
import { ApiClient } from './api-client.js';
import type { PairingToken as IssuedToken, Peer as PeerInfo, PeerDetails } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { keyValues, table } from './output.js';

export function registerPeerCommands(program: Command): void {
  const peer = program.command('peer').description('peers: other ferryd sites this one trusts (mutual TLS with pinned certificates, paired with a one-time token)');
  const path = (name: string): string => `/v1/peers/${encodeURIComponent(name)}`;

  peer
    .command('token')
    .description("issue a one-time pairing token on this site, for 'ferry peer add' on the other site")
    .option('--ttl <duration>', 'lifetime: seconds, or e.g. 30s, 10m, 1h (at most 24h)', '10m')
    .addOption(jsonOpt())
    .action(async (opts, cmd: Command) => {
      const t = await client(cmd).request<IssuedToken>('POST', `/v1/peers/tokens?ttl=${encodeURIComponent(opts.ttl as string)}`);
      const site = await client(cmd).request<{ replication: string }>('GET', '/v1/site');
      print(
        cmd,
        t,
        () =>
          `${t.token}\n` +
          `one-time pairing token for site ${t.name}, valid until ${t.expiresAt}; on the other site run:\n` +
          `  ferry peer add ${t.name} --address ${site.replication} --token ${t.token}\n` +
          `(use an address the other site can reach if ferryd listens on a wildcard or loopback address)\n`,
      );
    });

  peer
    .command('add <name>')
    .description('pair with the site at HOST:PORT using a token it issued; both sites then know each other')
    .requiredOption('--address <host:port>', "the other site's replication listener")
    .option('--token <token>', "the pairing token printed by 'ferry peer token' on the other site (required)")
    .addOption(jsonOpt())
    .action(async (name: string, opts, cmd: Command) => {
      // `--token` is also the global API-token option, which commander matches first: a
      // value with a '.' (pairing tokens have one, API tokens are hex) is the pairing token.
      const globals = cmd.optsWithGlobals() as { api?: string; token?: string; data?: string };
      const globalToken = (program.opts() as { token?: string }).token;
      const pairingToken = (opts.token as string | undefined) ?? (globalToken?.includes('.') ? globalToken : undefined);
      if (!pairingToken) {
        // A value without the '.' was taken as the API token: say it is malformed, not missing.
        if (globalToken !== undefined) throw new Error(`--token '${globalToken}' is not a pairing token: a pairing token must be <32 hex digits>.<16 hex digits>, as printed by 'ferry peer token' on the other site`);
        throw new Error("--token must be given: the pairing token printed by 'ferry peer token' on the other site");
      }
      const api = new ApiClient({ api: globals.api, data: globals.data, token: globalToken === pairingToken ? undefined : globalToken });
      const p = await api.request<PeerInfo>('POST', '/v1/peers', { name, address: opts.address, token: pairingToken });
      print(cmd, p, () => `paired with peer ${p.name} at ${p.address} (site ${p.siteId}, fingerprint ${p.fingerprint})\n`);
    });

  peer
    .command('list')
    .description('list peers')
    .addOption(jsonOpt())
    .action(async (_opts, cmd: Command) => {
      const peers = await client(cmd).request<PeerInfo[]>('GET', '/v1/peers');
      print(cmd, peers, () =>
        table(
          peers.map((p) => ({ name: p.name, address: p.address ?? '- (dials us)', site: p.siteId, fingerprint: p.fingerprint.slice(0, 16) + '…', created: p.createdAt })),
          ['name', 'address', 'site', 'fingerprint', 'created'],
        ),
      );
    });

  peer
    .command('show <name>')
    .description('show one peer and check the link now (exit 1 if it cannot be reached or authenticated)')
    .addOption(jsonOpt())
    .action(async (name: string, _opts, cmd: Command) => {
      const p = await client(cmd).request<PeerDetails>('GET', path(name));
      const c = p.check;
      const link = !c
        ? 'not checked: this peer dials us, we never dial it'
        : c.authenticated
          ? `ok: reachable and authenticated in ${c.rttMs} ms${c.remoteName ? ` (it calls itself ${c.remoteName})` : ''}`
          : `${c.reachable ? 'reachable, NOT authenticated' : 'UNREACHABLE'}: ${c.error?.code}: ${c.error?.message}`;
      print(cmd, p, () =>
        keyValues([
          ['name', p.name],
          ['address', p.address ?? '-'],
          ['site', p.siteId],
          ['fingerprint', p.fingerprint],
          ['created', p.createdAt],
          ['link', link],
        ]),
      );
      if (c && !c.authenticated) process.exitCode = 1;
    });

  peer
    .command('set <name>')
    .description("set the address this site dials the peer at (a peer that paired with this site has none; give it one to mirror back to it)")
    .requiredOption('--address <host:port>', "the peer's replication listener")
    .addOption(jsonOpt())
    .action(async (name: string, opts, cmd: Command) => {
      const p = await client(cmd).request<PeerInfo>('PATCH', path(name), { address: opts.address });
      print(cmd, p, () => `peer ${p.name} is dialled at ${p.address}\n`);
    });

  peer
    .command('remove <name>')
    .description('forget a peer (refused while mirrors use it); its connections are refused from then on')
    .addOption(jsonOpt())
    .action(async (name: string, _opts, cmd: Command) => {
      const p = await client(cmd).request<PeerInfo>('DELETE', path(name));
      print(cmd, p, () => `removed peer ${p.name}\n`);
    });
}
