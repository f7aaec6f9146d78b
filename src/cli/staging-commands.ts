// `ferry staging ...`: attach, show, detach (or, for one with no copy left, detach by force) and repair a disk's staging area.
import type { Command } from 'commander';
import type { Staging as StagingInfo, StagingDiscard as StagingDiscardInfo } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, keyValues, table } from './output.js';

function details(s: StagingInfo): string {
  const pct = s.ringBytes ? ((100 * s.usedBytes) / s.ringBytes).toFixed(1) : '0';
  return (
    keyValues([
      ['disk', s.disk],
      ['size', `${bytes(s.size)} (${s.size} bytes)`],
      ['used', `${bytes(s.usedBytes)} (${pct}%)`],
      ['state', stateLine(s)],
      ['unapplied', `${s.unappliedRecords} record(s) not yet on the disk`],
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

function stateLine(s: StagingInfo): string {
  if (s.failed) return `FAILED: no copy is left; run \`ferry staging detach ${s.disk} --force\` to serve the disk without it (the ${s.unappliedRecords} record(s) not yet on the disk are lost)`;
  return s.degraded ? 'DEGRADED: a copy failed, run `ferry staging repair`' : 'healthy';
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
    .option('--force', 'only for a staging area with no copy left: detach it WITHOUT applying it and serve the disk without it; reports the acknowledged writes not yet on the disk, which are lost')
    .addOption(jsonOpt())
    .action(async (disk: string, opts, cmd: Command) => {
      if (opts.force) {
        const r = await client(cmd).request<StagingDiscardInfo>('POST', `/v1/disks/${encodeURIComponent(disk)}/staging/discard`);
        print(cmd, r, () => `detached the failed staging area of disk ${r.disk} without applying it: ${r.message}\n`);
        return;
      }
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
