// Disaster recovery commands under the `mirror` command that mirror-commands.ts creates:
// `ferry mirror switchover DISK` (planned switchover of a remote mirror, at the primary site)
// and `ferry mirror generations DISK` (the generation history; fenced, split brain, switching).
import type { Command } from 'commander';
import type { DiskDr, SwitchoverResult } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { keyValues, table } from './output.js';

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
