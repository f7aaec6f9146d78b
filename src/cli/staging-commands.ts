// `ferry staging ...`: attach, show, detach and repair a disk's staging area.
import type { Command } from 'commander';
import type { StagingInfo } from '../control/staging-control.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, keyValues, table } from './output.js';

function details(s: StagingInfo): string {
  const pct = s.ringBytes ? ((100 * s.usedBytes) / s.ringBytes).toFixed(1) : '0';
  return (
    keyValues([
      ['disk', s.disk],
      ['size', `${bytes(s.size)} (${s.size} bytes)`],
      ['used', `${bytes(s.usedBytes)} (${pct}%)`],
      ['state', s.degraded ? 'DEGRADED: a copy failed, run `ferry staging repair`' : 'healthy'],
      ['records', `next ${s.nextSeq}, durable through ${s.durableSeq}`],
      ['overlay extents', String(s.overlayExtents)],
      ...(s.committerError ? ([['committer error', s.committerError]] as Array<[string, string]>) : []),
    ]) +
    '\n' +
    table(
      s.copies.map((c) => ({ copy: c.path, health: c.healthy ? 'healthy' : c.rebuilding ? 'rebuilding' : 'FAILED', problem: c.problem ?? '' })),
      ['copy', 'health', 'problem'],
    ) +
    '\n' +
    table(
      s.consumers.map((c) => ({ consumer: c.name, 'next record': String(c.nextSeq), pending: String(c.pendingRecords) })),
      ['consumer', 'next record', 'pending'],
    )
  );
}

export function registerStagingCommands(program: Command): void {
  const staging = program.command('staging').description("a disk's staging area: the crash-safe write journal in front of it");

  staging
    .command('attach <disk>')
    .description('attach a dedicated, preallocated staging area (a new file, or a block device)')
    .requiredOption('--path <path>', 'absolute path: a new file Ferry creates, or a block device')
    .option('--size <size>', 'size, e.g. 4G (at least 64M; defaults to the block device size)')
    .option('--copy <path>', 'a second copy on another device: every record is on both before it counts')
    .addOption(jsonOpt())
    .action(async (disk: string, opts, cmd: Command) => {
      const s = await client(cmd).request<StagingInfo>('POST', `/v1/disks/${encodeURIComponent(disk)}/staging`, { path: opts.path, size: opts.size, copy: opts.copy });
      print(cmd, s, () => `attached a ${bytes(s.size)} staging area to disk ${s.disk} at ${s.path}${s.copyPath ? ` (copy ${s.copyPath})` : ''}\n`);
    });

  staging
    .command('show <disk>')
    .description('size, use, records pending per consumer, copies and their health')
    .addOption(jsonOpt())
    .action(async (disk: string, _opts, cmd: Command) => {
      const s = await client(cmd).request<StagingInfo>('GET', `/v1/disks/${encodeURIComponent(disk)}/staging`);
      print(cmd, s, () => details(s));
    });

  staging
    .command('detach <disk>')
    .description('apply every staged write to the disk, then detach the staging area')
    .addOption(jsonOpt())
    .action(async (disk: string, _opts, cmd: Command) => {
      const s = await client(cmd).request<StagingInfo>('DELETE', `/v1/disks/${encodeURIComponent(disk)}/staging`);
      print(cmd, s, () => `detached the staging area of disk ${s.disk}: every staged write is on the disk\n`);
    });

  staging
    .command('repair <disk>')
    .description('rebuild failed staging copies from the healthy one (writes go on meanwhile)')
    .addOption(jsonOpt())
    .action(async (disk: string, _opts, cmd: Command) => {
      const s = await client(cmd).request<StagingInfo>('POST', `/v1/disks/${encodeURIComponent(disk)}/staging/repair`);
      print(cmd, s, () => details(s));
    });
}
