// `ferry mirror test`, `mirror test-status` and `mirror test-end`: test failovers (DR drills)
// at the mirror site. A writable image of the replica as of now is served under a new NBD
// export (copy-on-write into a bounded scratch file) while replication goes on; test-end
// drops it. Added to the `mirror` command that mirror-commands.ts registers.
import type { Command } from 'commander';
import type { TestEnd, TestFailover } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, keyValues } from './output.js';

function testText(t: TestFailover): string {
  return keyValues([
    ['disk', t.disk],
    ['export', t.exports.length > 1 ? t.exports.join(', ') : t.export],
    ['state', t.state + (t.reason ? ` (${t.reason})` : '')],
    ['image', `the replica as of record ${t.seq}, ${t.startedAt}`],
    ['scratch', `${t.scratch ?? '-'}: ${bytes(t.scratchUsedBytes)} of ${bytes(t.scratchBytes)} used (${bytes(t.preservedBytes)} preserved for the test, ${bytes(t.writtenBytes)} written by it)`],
  ]);
}

export function registerDrillCommands(program: Command): void {
  const mirror = program.commands.find((c) => c.name() === 'mirror');
  if (!mirror) throw new Error('the mirror command must be registered first');
  const path = (disk: string): string => `/v1/disks/${encodeURIComponent(disk)}/mirror/test`;

  mirror
    .command('test <disk>')
    .description('at the mirror site: test failover (DR drill): serve a writable image of the replica as of now under a new NBD export while replication goes on (its writes go to a scratch file, never to the replica)')
    .requiredOption('--export <name>', 'the new NBD export name')
    .requiredOption('--scratch <path>', 'the scratch file Ferry creates (must not exist; deleted at test-end)')
    .requiredOption('--scratch-size <size>', "bound of the scratch file (e.g. 1G): the test's writes plus the replica's old contents replication overwrites; at least 1M")
    .addOption(jsonOpt())
    .action(async (disk: string, opts, cmd: Command) => {
      const t = await client(cmd).request<TestFailover>('POST', path(disk), { export: opts.export, scratch: opts.scratch, scratchSize: opts.scratchSize });
      print(cmd, t, () => `test failover of ${disk} started: export '${t.export}' serves the replica as of record ${t.seq} (writable; replication goes on)\n${testText(t)}end it with: ferry mirror test-end ${disk}\n`);
    });

  mirror
    .command('test-status <disk>')
    .description("at the mirror site: show the replica's test failover (exit 1 when none)")
    .addOption(jsonOpt())
    .action(async (disk: string, _opts, cmd: Command) => {
      const t = await client(cmd).request<TestFailover>('GET', path(disk));
      print(cmd, t, () => testText(t));
    });

  mirror
    .command('test-end <disk>')
    .description("at the mirror site: end the replica's test failover: drop its export (disconnecting its clients) and delete its scratch file")
    .addOption(jsonOpt())
    .action(async (disk: string, _opts, cmd: Command) => {
      const r = await client(cmd).request<TestEnd>('DELETE', path(disk));
      print(cmd, r, () =>
        r.endedBy === 'restart'
          ? `the test failover of ${disk} (export '${r.export}') had already ended when ferryd restarted; note cleared\n`
          : `test failover of ${disk} ended: export '${r.export}' dropped (${r.clientsDisconnected} client(s) disconnected), scratch file deleted${r.lostReason ? `; its image had been lost: ${r.lostReason}` : ''}\n`,
      );
    });
}
