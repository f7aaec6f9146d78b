// `ferry mirror generations DISK`: a disk's disaster-recovery state (its generation history,
// fenced or split brain), under the `mirror` command that mirror-commands.ts creates.
import type { Command } from 'commander';
import type { DiskDr } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { keyValues, table } from './output.js';

export function registerDrCommands(program: Command): void {
  const mirror = program.commands.find((c) => c.name() === 'mirror');
  if (!mirror) throw new Error('the mirror command is registered first');
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
