// `ferry status`: one overview of a site for an operator — who this site is and where it
// listens, then every disk with its role (primary, replica, unmirrored), mirror state, link
// and lag, and staging fill, with anything failing listed first. It only reads the API
// (/v1/server, /v1/site, /v1/disks, /v1/mirrors, each disk's staging area).
//
// Truthful states: a mirror whose link is down or whose sync failed is never shown as plain
// `in-sync` (mirror-state-text.ts).
import type { Command } from 'commander';
import type { DiskDr, Disk as DiskInfo, Group, Mirror as MirrorStatus, ServerInfo, Site as SiteInfo, Staging as StagingInfo } from '../api/types.js';
import { ApiError, type ApiClient } from './api-client.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, keyValues, table } from './output.js';
import { mirrorStateText } from './mirror-state-text.js';

export interface DiskOverview {
  name: string;
  role: 'primary' | 'replica' | 'unmirrored';
  state: DiskInfo['state'];
  clients: number;
  mirror: { state: string; target: string; link: string | null; lagSeconds: number; lagBytes: number; syncProgress: number } | null;
  staging: { usedBytes: number; ringBytes: number; fillPercent: number; copies: number; healthyCopies: number; failed: boolean } | null;
  problems: string[];
  /** A consistency group's row: its members (their staging area, mirror and roles are the group's). */
  members?: string[];
  /** A member's row: its group. */
  group?: string;
}

export interface StatusOverview {
  site: SiteInfo;
  server: ServerInfo;
  /** Every problem of every disk, the disk named first. */
  problems: string[];
  disks: DiskOverview[];
}

/** A disk's staging area, or null when it has none (NO_STAGING) or the disk is unavailable. */
async function stagingOf(api: ApiClient, disk: string): Promise<StagingInfo | null> {
  try {
    return await api.request<StagingInfo>('GET', `/v1/disks/${encodeURIComponent(disk)}/staging`);
  } catch (err) {
    if (err instanceof ApiError && (err.code === 'NO_STAGING' || err.code === 'DISK_UNAVAILABLE' || err.code === 'DISK_NOT_FOUND')) return null;
    throw err;
  }
}

function mirrorProblems(m: MirrorStatus): string[] {
  const out: string[] = [];
  if (m.syncError) out.push(`mirror sync failing: ${m.syncError}`);
  if (m.committerError) out.push(`mirror target failing: ${m.committerError}`);
  if (m.link && m.link.state !== 'connected') out.push(`link to ${m.link.peer} ${m.link.state}${m.link.lastError ? `: ${m.link.lastError}` : ''}`);
  if (m.state === 'bitmap' || m.state === 'resyncing') out.push(`mirror ${m.state}: ${bytes(m.dirtyBytes)} to resync (the staging area overflowed or the link was down)`);
  if (m.state === 'paused') out.push('mirror paused');
  if (m.rpo?.met === false && m.consistent) {
    out.push(`RPO missed: newest image at the mirror ${m.rpo.exposureSeconds === null ? 'unknown' : `${Math.round(m.rpo.exposureSeconds)}s old`} (target ${m.rpo.targetSeconds}s)${m.rpo.breachSeconds !== null ? `, for ${Math.round(m.rpo.breachSeconds)}s` : ''}`);
  }
  return out;
}

/** A disk fenced, in split brain or switching over, with the command that ends it. */
function drProblems(d: Pick<DiskInfo, 'name' | 'dr'>): string[] {
  const dr = d.dr;
  if (!dr || dr.state === 'normal') return [];
  const why = dr.reason ? `: ${dr.reason}` : '';
  if (dr.state === 'fenced') return [`fenced, writes refused${why} (\`ferry mirror reconnect ${d.name}\` makes it the replica of its peer)`];
  if (dr.state === 'split-brain') return [`split brain${why} (\`ferry mirror reconnect ${d.name} --discard-changes-at SITE\` at the site whose writes are to be discarded)`];
  return [`switchover not completed, writes refused${why}`];
}

export async function statusOverview(api: ApiClient): Promise<StatusOverview> {
  const [server, site, plain, mirrors, groups] = await Promise.all([
    api.request<ServerInfo>('GET', '/v1/server'),
    api.request<SiteInfo>('GET', '/v1/site'),
    api.request<DiskInfo[]>('GET', '/v1/disks'),
    api.request<MirrorStatus[]>('GET', '/v1/mirrors'),
    api.request<Group[]>('GET', '/v1/groups'),
  ]);
  // A consistency group is a row of its own (its staging area, mirror and roles are its members'); each member names it.
  const groupDr = await Promise.all(groups.map((g) => api.request<DiskDr>('GET', `/v1/disks/${encodeURIComponent(g.name)}/dr`).catch(() => undefined)));
  const disks: Array<DiskInfo & { members?: string[] }> = [
    ...plain,
    ...groups.map((g, i) => ({
      name: g.name,
      kind: 'virtual' as const,
      pool: null,
      path: `group:${g.name}`,
      size: g.addressBytes,
      readOnly: false,
      state: g.state,
      ...(g.error ? { error: g.error } : {}),
      clients: g.members.reduce((n, m) => n + m.clients, 0),
      allocatedBytes: null,
      createdAt: g.createdAt,
      stats: null,
      ...(groupDr[i] ? { dr: groupDr[i] } : {}),
      members: g.members.map((m) => m.disk),
    })),
  ];
  const byDisk = new Map(mirrors.map((m) => [m.disk, m]));
  const stagings = await Promise.all(disks.map((d) => (d.state === 'online' ? stagingOf(api, d.name) : Promise.resolve(null))));
  const overview: DiskOverview[] = disks.map((d, i) => {
    const m = byDisk.get(d.name) ?? null;
    const s = stagings[i] ?? null;
    const problems: string[] = [];
    if (d.state !== 'online') problems.push(`unavailable${d.error ? `: ${d.error}` : ''}`);
    if (s?.failed) problems.push('staging area failed: every copy is lost (see `ferry staging show`)');
    else if (s?.degraded) problems.push('staging area degraded: a copy failed (run `ferry staging repair`)');
    if (s?.committerError) problems.push(`writes to the disk failing: ${s.committerError}`);
    if (s?.waitingForSpace) problems.push('writes wait for staging space: the staging area is full (the disk or its mirror is behind)');
    if (m) problems.push(...mirrorProblems(m));
    problems.push(...drProblems(d));
    const healthy = s ? s.copies.filter((c) => c.healthy).length : 0;
    return {
      name: d.name,
      role: m ? m.role : 'unmirrored',
      state: d.state,
      clients: d.clients,
      mirror: m ? { state: mirrorStateText(m), target: m.target, link: m.link ? m.link.state : null, lagSeconds: m.lagSeconds, lagBytes: m.lagBytes, syncProgress: m.syncProgress } : null,
      staging: s ? { usedBytes: s.usedBytes, ringBytes: s.ringBytes, fillPercent: s.ringBytes > 0 ? Math.round((s.usedBytes / s.ringBytes) * 100) : 0, copies: s.copies.length, healthyCopies: healthy, failed: s.failed } : null,
      problems,
      ...(d.members ? { members: d.members } : {}),
      ...(d.group ? { group: d.group } : {}),
    };
  });
  // Disks with a problem first, then by name.
  overview.sort((a, b) => Number(b.problems.length > 0) - Number(a.problems.length > 0) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { site, server, problems: overview.flatMap((d) => d.problems.map((p) => `${d.name}: ${p}`)), disks: overview };
}

function render(o: StatusOverview): string {
  const head = keyValues([
    ['site', `${o.site.name} (id ${o.site.siteId}), replication ${o.site.replication}, ${o.site.peers} peer(s)`],
    ['ferryd', `${o.server.version}, up since ${o.server.startedAt}, data ${o.server.dataDir}`],
    ['listening', `NBD ${o.server.nbd} (${o.server.nbdConnections} client(s)), API ${o.server.api}`],
    ['problems', o.problems.length ? String(o.problems.length) : 'none'],
  ]);
  const lines = [head.trimEnd(), ...o.problems.map((p) => `  ! ${p}`), ''];
  if (o.disks.length === 0) return [...lines, '(no disks)'].join('\n');
  const rows = o.disks.map((d) => ({
    DISK: d.name,
    ROLE: d.members ? `group of ${d.members.join(',')}${d.role === 'unmirrored' ? '' : `, ${d.role}`}` : d.group ? `in group ${d.group}` : d.role,
    STATE: d.state,
    CLIENTS: String(d.clients),
    MIRROR: d.mirror ? d.mirror.state : '-',
    LINK: d.mirror?.link ?? (d.mirror ? 'local' : '-'),
    LAG: d.mirror ? `${d.mirror.lagSeconds.toFixed(1)}s ${bytes(d.mirror.lagBytes)}` : '-',
    STAGING: d.staging ? `${d.staging.fillPercent}% of ${bytes(d.staging.ringBytes)}${d.staging.copies > 1 || d.staging.healthyCopies < d.staging.copies ? ` (${d.staging.healthyCopies}/${d.staging.copies} copies)` : ''}` : '-',
  }));
  return [...lines, table(rows, ['DISK', 'ROLE', 'STATE', 'CLIENTS', 'MIRROR', 'LINK', 'LAG', 'STAGING'])].join('\n');
}

export function registerStatusCommand(program: Command): void {
  program
    .command('status')
    .description('overview of this site: identity, listeners, every disk with its role, mirror, link, lag and staging fill; problems first')
    .addOption(jsonOpt())
    .action(async (_opts, cmd: Command) => {
      const o = await statusOverview(client(cmd));
      print(cmd, o, () => render(o));
    });
}
