// `ferry mirror ...`: create, set, status (with --watch and a progress bar in a terminal),
// pause, resume, verify (with its progress), swap and remove.
import { setTimeout as sleep } from 'node:timers/promises';
import { Option, type Command } from 'commander';
import type { Mirror as MirrorStatus, PromoteResult as PromoteReport, RemovedMirror, SwapResult as SwapReport, VerifyResult as VerifyReport } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, duration, table } from './output.js';
import { linkText, mirrorStateText, rpoText } from './mirror-state-text.js';
import { watchProgress } from './progress-watch.js';

function statusTable(list: MirrorStatus[]): string {
  return table(
    list.map((m) => ({
      disk: m.disk,
      role: m.role,
      target: m.target,
      state: mirrorStateText(m),
      link: linkText(m),
      consistent: m.consistent ? 'yes' : 'NO',
      sync: m.consistent ? 'done' : `${(m.syncProgress * 100).toFixed(1)}% ${bytes(m.syncBytesPerSec)}/s eta ${duration(m.syncEtaSeconds)}`,
      lag: `${m.lagRecords} rec ${bytes(m.lagBytes)} ${duration(m.lagSeconds)}`,
      rpo: rpoText(m),
      error: m.syncError ?? m.committerError ?? m.link?.lastError ?? (m.fallback ? `fallback image: record ${m.fallback.seq}` : ''),
    })),
    ['disk', 'role', 'target', 'state', 'link', 'consistent', 'sync', 'lag', 'rpo', 'error'],
  ) + membersTable(list);
}

/** A consistency group's mirror: its members (one point of the group's order; the lag above is the group's, each member's share of it here). */
function membersTable(list: MirrorStatus[]): string {
  const share = (x: NonNullable<MirrorStatus['members']>[number]): string => (x.lagRecords === null || x.lagBytes === null ? 'unknown' : `${x.lagRecords} rec ${bytes(x.lagBytes)}`);
  const rows = list.flatMap((m) => (m.members ?? []).map((x) => ({ group: m.disk, member: x.disk, target: x.target, copied: x.synced ? 'yes' : 'being copied', lag: share(x) })));
  return rows.length === 0 ? '' : `\n${table(rows, ['group', 'member', 'target', 'copied', 'lag'])}`;
}


/** Waits until the mirror is in sync (or its sync fails), showing its progress (progress-watch.ts). */
function waitInSync(cmd: Command, disk: string): Promise<MirrorStatus> {
  const api = client(cmd);
  return watchProgress(`sync ${disk}`, async () => {
    const m = await api.request<MirrorStatus>('GET', `/v1/disks/${encodeURIComponent(disk)}/mirror`);
    const sample = { progress: m.syncProgress, bytesDone: m.syncBytes, bytesPerSec: m.syncBytesPerSec, etaSeconds: m.syncEtaSeconds };
    return { sample, ...(m.consistent || m.syncError ? { result: m } : {}) };
  });
}

/** The policy options of `mirror create` and `mirror set` (the API's MirrorPolicyFields). */
function policyOptions(c: Command, set: boolean): Command {
  const clear = set ? "; 'none' clears it" : '';
  return c
    .addOption(new Option('--on-full <policy>', 'when the staging area fills (link down too long): bitmap (remember dirty regions, resync them later; remote default), throttle (slow writes; local default) or fail (writes fail)').choices(['bitmap', 'throttle', 'fail']))
    .option('--max-lag <limit>', `slow writes so the mirror never falls further behind: a duration (30s, 5m) or a size (64M)${clear}`)
    .option('--bandwidth <rate>', `rate limit of the replication link in bytes per second (e.g. 100M)${clear}`)
    .addOption(new Option('--compress <codec>', 'compression on the replication link (default zstd)').choices(['zstd', 'none']))
    .option('--rpo <duration>', `recovery point objective (30s, 5m): status and metrics say whether the mirror holds an image that recent; never slows writes${clear}`);
}

const policyBody = (opts: Record<string, unknown>): Record<string, unknown> => ({ onFull: opts.onFull, maxLag: opts.maxLag, bandwidth: opts.bandwidth, compress: opts.compress, rpo: opts.rpo });

export function registerMirrorCommands(program: Command): void {
  const mirror = program.command('mirror').description('mirrors: a second copy of a disk, kept write-order consistent through its staging area');
  const path = (disk: string, rest = ''): string => `/v1/disks/${encodeURIComponent(disk)}/mirror${rest}`;

  const create = mirror
    .command('create [disk]')
    .description('create a mirror and sync it in the background while clients keep writing')
    .requiredOption('--to <target>', 'local:PATH (a new file, or an existing file or block device at least as large as the disk), or PEER:DISK (a disk at a paired site, created there if it does not exist); for --group: local:DIR (a new file per member in DIR)')
    .option('--group <name>', "mirror a consistency group (instead of a disk): one mirror, one order for all its members")
    .option('--staging <path>', 'staging area to attach if the disk has none (a new file or a block device)')
    .option('--staging-size <size>', 'size of that staging area, e.g. 4G')
    .option('--staging-copy <path>', 'a second copy of that staging area')
    .addOption(new Option('--sync <mode>', 'full, or checksum: copy only chunks that differ on a target holding similar data').choices(['full', 'checksum']).default('full'));
  policyOptions(create, false)
    .option('--wait', 'wait (with a progress bar in a terminal) until the mirror is in sync')
    .option('--force', 'overwrite an existing local target that holds data (a full sync does)')
    .addOption(jsonOpt())
    .action(async (diskArg: string | undefined, opts, cmd: Command) => {
      if ((diskArg === undefined) === (opts.group === undefined)) cmd.error('give a disk, or --group NAME (not both)', { exitCode: 2 });
      const disk: string = diskArg ?? opts.group;
      if (opts.group !== undefined) {
        // A group's staging area is given at group create; its mirror is new (a full sync) and never overwrites.
        for (const [flag, given] of [['--staging', opts.staging], ['--staging-size', opts.stagingSize], ['--staging-copy', opts.stagingCopy], ['--force', opts.force]] as const) {
          if (given !== undefined) cmd.error(`${flag} does not apply to --group (the group's staging area is given at group create)`, { exitCode: 2 });
        }
        if (opts.sync !== 'full') cmd.error("--sync checksum does not apply to --group (a group's mirror is new)", { exitCode: 2 });
        let g = await client(cmd).request<MirrorStatus>('POST', `/v1/groups/${encodeURIComponent(disk)}/mirror`, { to: opts.to, ...policyBody(opts) });
        if (opts.wait) g = await waitInSync(cmd, disk);
        print(cmd, g, () => (g.consistent ? `mirror of group ${disk} on ${g.target} is in sync\n` : `mirror of group ${disk} on ${g.target} created (${g.members?.length ?? 0} member files); syncing (ferry mirror status ${disk} --watch)\n`));
        return;
      }
      let m = await client(cmd).request<MirrorStatus>('POST', path(disk), {
        ...(opts.force ? { force: true } : {}),
        to: opts.to,
        staging: opts.staging,
        stagingSize: opts.stagingSize,
        stagingCopy: opts.stagingCopy,
        sync: opts.sync,
        ...policyBody(opts),
      });
      if (opts.wait) m = await waitInSync(cmd, disk);
      if (m.syncError) process.exitCode = 1;
      print(cmd, m, () => (m.consistent ? `mirror of ${disk} on ${m.target} is in sync\n` : `mirror of ${disk} on ${m.target} created; syncing (ferry mirror status ${disk} --watch)\n`));
    });

  policyOptions(mirror.command('set <disk>').description("change a mirror's policies at once, without a restart (at the primary site)"), true)
    .addOption(jsonOpt())
    .action(async (disk: string, opts, cmd: Command) => {
      const m = await client(cmd).request<MirrorStatus>('PATCH', path(disk), policyBody(opts));
      const p = m.policy!;
      print(cmd, m, () => `mirror of ${disk}: on-full ${p.onFull}, max-lag ${p.maxLagMs !== null ? duration(p.maxLagMs / 1000) : p.maxLagBytes !== null ? bytes(p.maxLagBytes) : 'none'}, bandwidth ${p.bandwidth ? `${bytes(p.bandwidth)}/s` : 'unlimited'}, compress ${p.compress}, rpo ${p.rpoMs !== null ? duration(p.rpoMs / 1000) : 'none'}\n`);
    });

  mirror
    .command('status [disk]')
    .description('state, consistency, sync progress (throughput, ETA) and lag (records, bytes, seconds)')
    .option('--watch', 'refresh every second (a progress bar while a single disk syncs)')
    .addOption(jsonOpt())
    .action(async (disk: string | undefined, opts, cmd: Command) => {
      const api = client(cmd);
      const get = async (): Promise<MirrorStatus[]> => (disk ? [await api.request<MirrorStatus>('GET', path(disk))] : api.request<MirrorStatus[]>('GET', '/v1/mirrors'));
      if (opts.watch && disk && !opts.json) {
        const first = (await get())[0]!;
        if (!first.consistent) await waitInSync(cmd, disk);
      }
      for (;;) {
        const list = await get();
        if (opts.watch && process.stdout.isTTY && !opts.json) process.stdout.write('\x1b[2J\x1b[H');
        print(cmd, disk ? list[0] : list, () => statusTable(list));
        if (!opts.watch) return;
        await sleep(1000);
      }
    });

  for (const [name, description] of [
    ['pause', 'stop applying records to the mirror; they wait in the staging area'],
    ['resume', 'resume applying records (and the sync) to the mirror'],
  ] as const) {
    mirror
      .command(`${name} <disk>`)
      .description(description)
      .addOption(jsonOpt())
      .action(async (disk: string, _opts, cmd: Command) => {
        const m = await client(cmd).request<MirrorStatus>('POST', path(disk, `/${name}`));
        print(cmd, m, () => `mirror of ${disk}: ${m.state}\n`);
      });
  }

  mirror
    .command('verify <disk>')
    .description('compare disk and mirror online and report the ranges that differ (exit 1 if any)')
    .addOption(jsonOpt())
    .action(async (disk: string, opts, cmd: Command) => {
      const api = client(cmd);
      const running = api.request<VerifyReport>('POST', path(disk, '/verify'));
      let settled: { report: VerifyReport } | { err: unknown } | undefined;
      running.then((report) => (settled = { report }), (err: unknown) => (settled = { err }));
      // Its progress while it runs (ferryd's figures, from mirror status), unless --json.
      if (!opts.json) {
        await watchProgress(`verify ${disk}`, async () => {
          if (settled) return { sample: 'report' in settled ? { progress: 1, bytesDone: settled.report.bytesCompared, bytesPerSec: 0, etaSeconds: 0 } : null, result: true };
          const v = (await api.request<MirrorStatus>('GET', path(disk)).catch(() => null))?.verify ?? null;
          return { sample: v ? { progress: v.progress, bytesDone: v.bytesDone, bytesPerSec: v.bytesPerSec, etaSeconds: v.etaSeconds } : null };
        });
      }
      const r = await running;
      print(cmd, r, () => {
        const head = `compared ${bytes(r.bytesCompared)} in ${duration(r.seconds)}: ${r.regionsVerified} regions verified, ${r.regionsSkipped} skipped (written throughout)\n`;
        if (r.differences.length === 0) return head + 'disk and mirror are identical\n';
        return head + `${r.differences.length} differing range(s):\n` + table(r.differences.map((d) => ({ offset: String(d.offset), length: String(d.length) })), ['offset', 'length']);
      });
      if (r.differences.length > 0) process.exitCode = 1;
    });

  mirror
    .command('swap <disk>')
    .description('exchange the roles of disk and mirror (in sync only); NBD clients stay connected')
    .addOption(jsonOpt())
    .action(async (disk: string, _opts, cmd: Command) => {
      const r = await client(cmd).request<SwapReport>('POST', path(disk, '/swap'));
      print(cmd, r, () => `swapped: ${disk} now on ${r.primary}, mirror on ${r.mirror} (writes paused ${r.pauseMs.toFixed(1)} ms)\n`);
    });

  mirror
    .command('promote <disk>')
    .description('at the mirror site, if the primary site is lost: make the replica a normal, writable disk holding a consistent image (mid-resync: rolled back to the last consistent one)')
    .option('--force', 'take a replica that never completed its first sync as it is (it holds no consistent image)')
    .addOption(jsonOpt())
    .action(async (disk: string, opts, cmd: Command) => {
      const r = await client(cmd).request<PromoteReport>('POST', path(disk, `/promote${opts.force ? '?force=true' : ''}`));
      const what = {
        newest: `the newest image received (up to record ${r.seq})`,
        'rolled-back': `its last consistent image (up to record ${r.seq}; ${bytes(r.restoredBytes)} rolled back from the interrupted resync)`,
        'as-is': 'an INCOMPLETE image (forced: it never completed its first sync)',
      }[r.image];
      print(cmd, r, () => `promoted ${disk}: a normal, writable disk holding ${what}; it no longer follows the primary site\n`);
    });

  mirror
    .command('remove <disk>')
    .description('detach the mirror, brought up to date first (unless paused); the copy is left intact and no longer used by Ferry')
    .option('--force', 'abandon a mirror that is still syncing (its copy is incomplete)')
    .addOption(jsonOpt())
    .action(async (disk: string, opts, cmd: Command) => {
      const m = await client(cmd).request<RemovedMirror>('DELETE', path(disk, opts.force ? '?force=true' : ''));
      const copy = {
        'up-to-date': 'is a consistent, up-to-date copy',
        'as-of-pause': 'is a consistent copy as of the pause',
        incomplete: 'is INCOMPLETE (it never finished its first sync)',
        unknown: `is in an UNKNOWN state: the mirror site did not confirm the last records (${m.unconfirmed ?? 'no answer'}); check it there`,
      }[m.copy];
      print(cmd, m, () => `removed the mirror of ${disk}; ${m.target.replace(/^local:/, '')} ${copy} and no longer used by Ferry\n`);
    });
}
