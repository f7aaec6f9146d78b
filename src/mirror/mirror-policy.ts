// A mirror's policies, as the administrator gives them at creation or changes them later
// (`mirror set`): what a full staging area does (--on-full), how far behind the mirror may
// fall (--max-lag), its recovery point objective (--rpo: a target, watched, never enforced),
// and for a mirror at a peer site the link's rate limit (--bandwidth) and compression
// (--compress). Parsed and checked here, before anything is created or changed.
import { FerryError } from '../errors.js';
import { parseSize } from '../disk/size.js';
/** What a full staging area does to writes while the mirror is behind (see docs/ARCHITECTURE.md, "Policies"). */
export type OnFullPolicy = 'bitmap' | 'throttle' | 'fail';

export interface MirrorPolicy {
  onFull: OnFullPolicy;
  maxLagBytes: number | null;
  maxLagMs: number | null;
  bandwidth: number;
  compress: 'zstd' | 'none';
  /** Recovery point objective: how old the newest image at the mirror may be (null: none). */
  rpoMs: number | null;
}

export interface PolicyRequest {
  onFull?: unknown;
  maxLag?: unknown;
  bandwidth?: unknown;
  compress?: unknown;
  rpo?: unknown;
}

const durationUnitsMs: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const lagMsMax = 7 * 24 * 3_600_000;
/** RPO targets: at least a second (status is computed once a second), at most a week. */
const rpoMsMin = 1000;
const rpoMsMax = 7 * 24 * 3_600_000;
/** The words `mirror set` takes to clear a limit. */
const noLimit = new Set(['none', 'off', 'unlimited']);

/** `--rpo`: a duration (30s, 5m, 1h; lowercase units); 'none' clears it (mirror set). */
export function parseRpo(value: unknown): number {
  if (typeof value !== 'string' && typeof value !== 'number') throw new FerryError('BAD_REQUEST', '--rpo takes a duration such as 30s, 5m or 1h');
  const text = String(value).trim();
  const d = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text);
  if (!d) throw new FerryError('BAD_REQUEST', `--rpo '${text}' is not a duration (30s, 5m, 1h)`);
  const ms = Math.round(Number(d[1]) * durationUnitsMs[d[2]!]!);
  if (!(ms >= rpoMsMin && ms <= rpoMsMax)) throw new FerryError('BAD_REQUEST', `--rpo ${text}: between 1s and 7 days`);
  return ms;
}

/** `--max-lag`: a duration (500ms, 30s, 5m, 1h: lowercase units) or a size (64M, 2G: uppercase suffixes). */
export function parseMaxLag(value: unknown): { bytes: number | null; ms: number | null } {
  if (typeof value !== 'string' && typeof value !== 'number') throw new FerryError('BAD_REQUEST', '--max-lag takes a duration (30s, 5m) or a size (64M)');
  const text = String(value).trim();
  const d = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text);
  if (d) {
    const ms = Math.round(Number(d[1]) * durationUnitsMs[d[2]!]!);
    if (!(ms >= 100 && ms <= lagMsMax)) throw new FerryError('BAD_REQUEST', `--max-lag ${text}: between 100ms and 7 days`);
    return { bytes: null, ms };
  }
  let bytes: number;
  try {
    bytes = parseSize(text);
  } catch {
    throw new FerryError('BAD_REQUEST', `--max-lag '${text}' is neither a duration (30s, 5m) nor a size (64M)`);
  }
  if (bytes < 1024 * 1024) throw new FerryError('BAD_REQUEST', `--max-lag ${text}: at least 1M`);
  return { bytes, ms: null };
}

/** `--bandwidth`: bytes per second, with size suffixes and an optional "/s" (100M, 1G/s). */
export function parseBandwidth(value: unknown): number {
  if (typeof value !== 'string' && typeof value !== 'number') throw new FerryError('BAD_REQUEST', '--bandwidth takes a rate such as 100M (bytes per second)');
  const text = String(value).trim().replace(/\/s$/i, '');
  let rate: number;
  try {
    rate = parseSize(text);
  } catch {
    throw new FerryError('BAD_REQUEST', `--bandwidth '${String(value)}' is not a rate (e.g. 100M or 1G/s, bytes per second)`);
  }
  if (rate < 64 * 1024) throw new FerryError('BAD_REQUEST', `--bandwidth ${String(value)}: at least 64K per second`);
  return rate;
}

/** Checks a creation request's policies against the kind of target; defaults differ by kind. */
export function parsePolicy(req: PolicyRequest, remote: boolean): MirrorPolicy {
  const onFull = req.onFull ?? (remote ? 'bitmap' : 'throttle');
  if (onFull !== 'bitmap' && onFull !== 'throttle' && onFull !== 'fail') throw new FerryError('BAD_REQUEST', `--on-full must be bitmap, throttle or fail, not ${JSON.stringify(onFull)}`);
  if (onFull === 'bitmap' && !remote) throw new FerryError('NOT_SUPPORTED', '--on-full bitmap is for mirrors at a peer site (a local mirror keeps pace with its disk); use throttle or fail');
  const lag = req.maxLag === undefined ? { bytes: null, ms: null } : parseMaxLag(req.maxLag);
  if (!remote && (req.bandwidth !== undefined || req.compress !== undefined)) {
    throw new FerryError('BAD_REQUEST', '--bandwidth and --compress apply to the link of a mirror at a peer site');
  }
  const bandwidth = req.bandwidth === undefined ? 0 : parseBandwidth(req.bandwidth);
  const compress = req.compress ?? (remote ? 'zstd' : 'none');
  if (compress !== 'zstd' && compress !== 'none') throw new FerryError('BAD_REQUEST', `--compress must be zstd or none, not ${JSON.stringify(compress)}`);
  const rpoMs = req.rpo === undefined ? null : parseRpo(req.rpo);
  return { onFull, maxLagBytes: lag.bytes, maxLagMs: lag.ms, bandwidth, compress, rpoMs };
}

const isNoLimit = (v: unknown): boolean => typeof v === 'string' && noLimit.has(v.trim().toLowerCase());

/**
 * `mirror set`: the policy after a change, checked as at creation (the same rules for the
 * kind of target); fields left out keep their value; `none` clears --max-lag, --bandwidth
 * and --rpo. A request that changes nothing is refused, so a typo of a field name is seen.
 */
export function changePolicy(current: MirrorPolicy, req: PolicyRequest, remote: boolean): MirrorPolicy {
  if (req.onFull === undefined && req.maxLag === undefined && req.bandwidth === undefined && req.compress === undefined && req.rpo === undefined) {
    throw new FerryError('BAD_REQUEST', 'nothing to change: give at least one of --on-full, --max-lag, --bandwidth, --compress, --rpo');
  }
  if (!remote && (req.bandwidth !== undefined || req.compress !== undefined)) {
    throw new FerryError('BAD_REQUEST', '--bandwidth and --compress apply to the link of a mirror at a peer site');
  }
  const next = parsePolicy(
    {
      onFull: req.onFull ?? current.onFull,
      ...(req.maxLag !== undefined && !isNoLimit(req.maxLag) ? { maxLag: req.maxLag } : {}),
      ...(remote ? { compress: req.compress ?? current.compress } : {}),
      ...(req.bandwidth !== undefined && !isNoLimit(req.bandwidth) && req.bandwidth !== '0' ? { bandwidth: req.bandwidth } : {}),
      ...(req.rpo !== undefined && !isNoLimit(req.rpo) ? { rpo: req.rpo } : {}),
    },
    remote,
  );
  return {
    ...next,
    ...(req.maxLag === undefined ? { maxLagBytes: current.maxLagBytes, maxLagMs: current.maxLagMs } : {}),
    ...(req.bandwidth === undefined ? { bandwidth: current.bandwidth } : {}),
    ...(req.rpo === undefined ? { rpoMs: current.rpoMs } : {}),
  };
}
