// A mirror's policies, as the administrator gives them at creation: what a full staging
// area does (--on-full), how far behind the mirror may fall (--max-lag), and for a mirror
// at a peer site the link's rate limit (--bandwidth) and compression (--compress).
// Parsed and checked here, before anything is created.
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
}

export interface PolicyRequest {
  onFull?: unknown;
  maxLag?: unknown;
  bandwidth?: unknown;
  compress?: unknown;
}

const durationUnitsMs: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const lagMsMax = 7 * 24 * 3_600_000;

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
  return { onFull, maxLagBytes: lag.bytes, maxLagMs: lag.ms, bandwidth, compress };
}
