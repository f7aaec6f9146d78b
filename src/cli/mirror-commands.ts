// `ferry mirror ...`: create, status (with --watch and a progress bar in a terminal),
// pause, resume, verify, swap and remove.
import { setTimeout as sleep } from 'node:timers/promises';
import { Option, type Command } from 'commander';
import type { Mirror as MirrorStatus, PromoteResult as PromoteReport, RemovedMirror, SwapResult as SwapReport, VerifyResult as VerifyReport } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, table } from './output.js';
import { linkText, mirrorStateText } from './mirror-state-text.js';

function duration(seconds: number | null): string {
  if (seconds === null) return '-';
  if (seconds < 1) return `${Math.round(seconds * 1000)}ms`;
  if (seconds < 120) return `${seconds.toFixed(1)}s`;
  return `${Math.floor(seconds / 60)}m${Math.round(seconds % 60)}s`;
}

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
      error: m.syncError ?? m.committerError ?? m.link?.lastError ?? (m.fallback ? `fallback image: record ${m.fallback.seq}` : ''),
    })),
    ['disk', 'role', 'target', 'state', 'link', 'consistent', 'sync', 'lag', 'error'],
  );
}


/** Without a terminal, one progress line this often (a log, not a bar). */
const progressLineMs = 10_000;

/**
 * Waits until the mirror is in sync (or its sync fails): a progress bar on a terminal, else a
 * line every progressLineMs on stderr. Rate and ETA are ferryd's (syncBytesPerSec,
 * syncEtaSeconds), measured where the copy happens.
 */
async function waitInSync(cmd: Command, disk: string): Promise<MirrorStatus> {
  const api = client(cmd);
  const tty = process.stderr.isTTY;
  // Loaded only when a bar is drawn (a terminal): a short command does not pay for it.
  const cliProgress = tty ? (await import('cli-progress')).default : null;
  const bar = cliProgress ? new cliProgress.SingleBar({ format: `sync ${disk} [{bar}] {percentage}% | {rate}/s | eta {eta}`, hideCursor: true }, cliProgress.Presets.shades_classic) : null;
  bar?.start(100, 0, { rate: '0B', eta: '-' });
  let lineAtMs = Date.now();
  for (;;) {
    const m = await api.request<MirrorStatus>('GET', `/v1/disks/${encodeURIComponent(disk)}/mirror`);
    const pct = Math.floor(m.syncProgress * 100);
    const rate = bytes(m.syncBytesPerSec);
    bar?.update(pct, { rate, eta: duration(m.syncEtaSeconds) });
    if (!bar && Date.now() - lineAtMs >= progressLineMs && !m.consistent) {
      lineAtMs = Date.now();
      process.stderr.write(`sync ${disk}: ${pct}% (${bytes(m.syncBytes)}), ${rate}/s, eta ${duration(m.syncEtaSeconds)}\n`);
    }
    if (m.consistent || m.syncError) {
      bar?.update(m.consistent ? 100 : pct, { eta: m.consistent ? '0s' : '-' });
      bar?.stop();
      return m;
    }
    await sleep(500);
  }
}

export function registerMirrorCommands(program: Command): void {
  const mirror = program.command('mirror').description('mirrors: a second copy of a disk, kept write-order consistent through its staging area');
  const path = (disk: string, rest = ''): string => `/v1/disks/${encodeURIComponent(disk)}/mirror${rest}`;

  mirror
    .command('create <disk>')
    .description('create a mirror and sync it in the background while clients keep writing')
    .requiredOption('--to <target>', 'local:PATH (a new file, or an existing file or block device at least as large as the disk), or PEER:DISK (a disk at a paired site, created there if it does not exist)')
    .option('--staging <path>', 'staging area to attach if the disk has none (a new file or a block device)')
    .option('--staging-size <size>', 'size of that staging area, e.g. 4G')
    .option('--staging-copy <path>', 'a second copy of that staging area')
    .addOption(new Option('--sync <mode>', 'full, or checksum: copy only chunks that differ on a target holding similar data').choices(['full', 'checksum']).default('full'))
    .addOption(new Option('--on-full <policy>', 'when the staging area fills (link down too long): bitmap (remember dirty regions, resync them later; remote default), throttle (slow writes; local default) or fail (writes fail)').choices(['bitmap', 'throttle', 'fail']))
    .option('--max-lag <limit>', 'slow writes so the mirror never falls further behind: a duration (30s, 5m) or a size (64M)')
    .option('--bandwidth <rate>', 'rate limit of the replication link in bytes per second (e.g. 100M)')
    .addOption(new Option('--compress <codec>', 'compression on the replication link (default zstd)').choices(['zstd', 'none']))
    .option('--wait', 'wait (with a progress bar in a terminal) until the mirror is in sync')
    .option('--force', 'overwrite an existing local target that holds data (a full sync does)')
    .addOption(jsonOpt())
    .action(async (disk: string, opts, cmd: Command) => {
      let m = await client(cmd).request<MirrorStatus>('POST', path(disk), {
        ...(opts.force ? { force: true } : {}),
        to: opts.to,
        staging: opts.staging,
        stagingSize: opts.stagingSize,
        stagingCopy: opts.stagingCopy,
        sync: opts.sync,
        onFull: opts.onFull,
        maxLag: opts.maxLag,
        bandwidth: opts.bandwidth,
        compress: opts.compress,
      });
      if (opts.wait) m = await waitInSync(cmd, disk);
      if (m.syncError) process.exitCode = 1;
      print(cmd, m, () => (m.consistent ? `mirror of ${disk} on ${m.target} is in sync\n` : `mirror of ${disk} on ${m.target} created; syncing (ferry mirror status ${disk} --watch)\n`));
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
    .action(async (disk: string, _opts, cmd: Command) => {
      const r = await client(cmd).request<VerifyReport>('POST', path(disk, '/verify'));
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
