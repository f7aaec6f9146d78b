// Disaster recovery commands under the `mirror` command that mirror-commands.ts creates:
// `ferry mirror switchover DISK` (planned switchover of a remote mirror, at the primary site)
// `ferry mirror reconnect DISK` (after a failover: the stale site becomes the survivor's replica,
// resyncing only the changed regions) and `ferry mirror generations DISK` (the generation history; fenced, split brain, switching).
import type { Command } from 'commander';
import type { DiskDr, Mirror as MirrorStatus, ReconnectResult, SwitchoverResult } from '../api/types.js';
import { watchProgress } from './progress-watch.js';
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
    .option('--wait', 'wait (with a progress bar in a terminal) until the changed regions are resynced and this disk is a consistent replica')
    .addOption(jsonOpt())
    .action(async (disk: string, opts: { force?: boolean; discardChangesAt?: string; wait?: boolean }, cmd: Command) => {
      const q = new URLSearchParams();
      if (opts.force) q.set('force', 'true');
      if (opts.discardChangesAt !== undefined) q.set('discardChangesAt', opts.discardChangesAt);
      const qs = q.toString() ? `?${q.toString()}` : '';
      const api = client(cmd);
      const r = await api.request<ReconnectResult>('POST', `/v1/disks/${encodeURIComponent(disk)}/mirror/reconnect${qs}`);
      if (opts.wait) await waitResynced(api, disk, r.resyncBytes);
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
    .command('unfence <disk>')
    .description('a fenced disk whose peer is gone for good serves its own (older) data again, or a switchover its lost peer cannot complete is abandoned; a peer that returns ahead finds a split brain')
    .option('--force', 'required: this gives up the writes the peer took since it was promoted')
    .addOption(jsonOpt())
    .action(async (disk: string, opts: { force?: boolean }, cmd: Command) => {
      const r = await client(cmd).request<{ disk: string; generation: string }>('POST', `/v1/disks/${encodeURIComponent(disk)}/mirror/unfence${opts.force ? '?force=true' : ''}`);
      print(cmd, r, () => `unfenced ${r.disk}: it takes writes again (generation ${r.generation}); its peer, should it return, finds a split brain\n`);
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

/**
 * Until the replica is consistent again (the survivor's delta sync done, the undo log gone);
 * progress: the bytes received here since the reconnect over the bytes it resyncs.
 */
async function waitResynced(api: ReturnType<typeof client>, disk: string, resyncBytes: number): Promise<void> {
  const get = (): Promise<MirrorStatus> => api.request<MirrorStatus>('GET', `/v1/disks/${encodeURIComponent(disk)}/mirror`);
  const startBytes = (await get()).link?.shippedBytes ?? 0;
  const startMs = Date.now();
  await watchProgress(`resync ${disk}`, async () => {
    const m = await get();
    const done = m.consistent && m.fallback === null;
    const bytesDone = Math.min(resyncBytes, Math.max(0, (m.link?.shippedBytes ?? 0) - startBytes));
    const bytesPerSec = bytesDone / Math.max(0.001, (Date.now() - startMs) / 1000);
    const sample = { progress: done ? 1 : Math.min(0.99, bytesDone / Math.max(1, resyncBytes)), bytesDone, bytesPerSec, etaSeconds: bytesPerSec > 0 ? (resyncBytes - bytesDone) / bytesPerSec : null };
    return done ? { sample, result: true } : { sample };
  });
}
