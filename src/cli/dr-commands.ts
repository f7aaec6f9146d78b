// Disaster recovery commands under the `mirror` command that mirror-commands.ts creates:
// `ferry mirror switchover DISK` (planned switchover of a remote mirror, at the primary site)
// `ferry mirror reconnect DISK` (after a failover: the stale site becomes the survivor's replica,
// resyncing only the changed regions) and `ferry mirror generations DISK` (the generation history; fenced, split brain, switching).
import type { Command } from 'commander';
import type { DiskDr, ReconnectResult, SwitchoverResult } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, keyValues, table } from './output.js';

export function registerDrCommands(program: Command): void {
  const mirror = program.commands.find((c) => c.name() === 'mirror');
  if (!mirror) throw new Error('the mirror command is registered first');
  mirror
    .command('switchover <disk>')
    .description('at the primary site: stop writes, send every staged record to the replica, reverse the roles (no copy); this disk then follows the other site')
    .option('--force', 'disconnect the NBD clients attached here (without it, attached clients refuse the switchover: DISK_BUSY)')
    .addOption(jsonOpt())
    .action(async (disk: string, opts: { force?: boolean }, cmd: Command) => {
      const r = await client(cmd).request<SwitchoverResult>('POST', `/v1/disks/${encodeURIComponent(disk)}/mirror/switchover${opts.force ? '?force=true' : ''}`);
      print(
        cmd,
        r,
        () =>
          `switched over ${r.disk}: the primary is ${r.primary} now (generation ${r.generation}, from record ${r.seq + 1}); this site holds its replica. Writes were refused here for ${r.pauseMs.toFixed(0)} ms` +
          `${r.disconnected ? `; ${r.disconnected} NBD connection(s) closed` : ''}\n`,
      );
    });

  mirror
    .command('reconnect <disk>')
    .description('after a failover, at the site whose disk is fenced (or in split brain): this disk becomes the replica of the other site, which resyncs only the regions changed on either side since they diverged')
    .option('--discard-changes-at <site>', "the site whose writes since the sites diverged are thrown away: this site (required in split brain)")
    .option('--force', 'disconnect the NBD clients attached here (without it, attached clients refuse the reconnect: DISK_BUSY)')
    .addOption(jsonOpt())
    .action(async (disk: string, opts: { force?: boolean; discardChangesAt?: string }, cmd: Command) => {
      const q = new URLSearchParams();
      if (opts.force) q.set('force', 'true');
      if (opts.discardChangesAt !== undefined) q.set('discardChangesAt', opts.discardChangesAt);
      const qs = q.toString() ? `?${q.toString()}` : '';
      const r = await client(cmd).request<ReconnectResult>('POST', `/v1/disks/${encodeURIComponent(disk)}/mirror/reconnect${qs}`);
      print(
        cmd,
        r,
        () =>
          `reconnected ${r.disk}: it is the replica of ${r.primary} now (generation ${r.generation}); ${r.discardedAt}'s writes since the sites diverged are discarded.\n` +
          `resyncing ${bytes(r.resyncBytes)} of ${bytes(r.diskBytes)} (changed here ${bytes(r.changedHereBytes)}, at ${r.primary.split(':')[0]} ${bytes(r.changedThereBytes)}); ` +
          `'ferry mirror status ${r.disk}' shows the progress${r.disconnected ? `; ${r.disconnected} NBD connection(s) closed` : ''}\n`,
      );
    });

  mirror
    .command('generations <disk>')
    .description("the disk's generation history (newest last) and whether it is fenced or in split brain")
    .addOption(jsonOpt())
    .action(async (disk: string, _opts, cmd: Command) => {
      const dr = await client(cmd).request<DiskDr>('GET', `/v1/disks/${encodeURIComponent(disk)}/dr`);
      print(
        cmd,
        dr,
        () =>
          keyValues([
            ['disk', disk],
            ['state', dr.state + (dr.since ? ` since ${dr.since}` : '')],
            ...(dr.reason ? ([['reason', dr.reason]] as Array<[string, string]>) : []),
            ['generation', dr.generation ?? '-'],
            ...(dr.formerPrimary ? ([['promoted from', dr.formerPrimary]] as Array<[string, string]>) : []),
          ]) + (dr.generations.length ? table(dr.generations.map((g) => ({ generation: g.id, reason: g.reason, at: g.at })), ['generation', 'reason', 'at']) : ''),
      );
    });
}
