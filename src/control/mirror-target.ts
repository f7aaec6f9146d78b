// Mirror targets: `local:PATH` (a file or block device, new or existing, at least the disk's
// size) or `PEER:DISK` (a disk to create at a paired site). Parsing and every check happen
// here, before a mirror is created, and change nothing. A full sync onto an existing target
// that holds data (sampled, holdsData) needs --force.
import { FerryError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import fs from 'node:fs';
import path from 'node:path';
import { validateName } from '../names.js';
import { assertNotReserved, assertPathFree, resolveTargetPath } from './path-guard.js';
import type { DiskRow, MetadataStore, PeerRow } from './store.js';

export type Target = { kind: 'local'; real: string; exists: boolean } | { kind: 'remote'; peer: PeerRow; remoteDisk: string };

export interface TargetContext {
  store: MetadataStore;
  dataDir: string;
  /** The paired peer of that name (throws NOT_SUPPORTED without a replication listener). */
  peer: (name: string) => PeerRow | undefined;
}

/** `PEER:DISK` split at its first colon. */
export function parseRemote(target: string): { peer: string; remoteDisk: string } {
  const i = target.indexOf(':');
  return { peer: target.slice(0, i), remoteDisk: target.slice(i + 1) };
}

/** Parses and checks a mirror target (`local:PATH` or `PEER:DISK`) without changing anything. */
export function checkTarget(to: unknown, row: DiskRow, size: number, ctx: TargetContext, overwrite: { fullSync: boolean; force: boolean }): Target {
  if (typeof to !== 'string' || to.length === 0) throw new FerryError('INVALID_TARGET', 'give a target: local:PATH (or PEER:DISK for a remote mirror)');
  if (!to.startsWith('local:')) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*:[A-Za-z0-9][A-Za-z0-9._-]*$/.test(to)) throw new FerryError('INVALID_TARGET', `target '${to}' is neither local:PATH nor PEER:DISK`);
    const { peer: name, remoteDisk } = parseRemote(to);
    validateName('peer', name);
    validateName('disk', remoteDisk);
    const peer = ctx.peer(name);
    if (!peer) throw new FerryError('PEER_NOT_FOUND', `no peer named '${name}' (pair one with ferry peer add)`);
    if (!peer.address) throw new FerryError('INVALID_TARGET', `peer '${name}' paired with this site but has no address to dial; pair from this site (ferry peer add)`);
    const other = ctx.store.mirrors().find((x) => x.target === to);
    if (other) throw new FerryError('PATH_IN_USE', `${to} is already the mirror of disk '${other.disk}'`);
    return { kind: 'remote', peer, remoteDisk };
  }
  const p = to.slice('local:'.length);
  if (!path.isAbsolute(p)) throw new FerryError('INVALID_PATH', `mirror target path '${p}' must be absolute`);
  const { real, stat } = resolveTargetPath(p, 'mirror target');
  assertNotReserved(ctx.dataDir, real, stat);
  if (stat && !stat.isFile() && !stat.isBlockDevice()) throw new FerryError('INVALID_TARGET', `${real} is neither a regular file nor a block device`);
  const exists = stat !== null;
  if (real === row.path) throw new FerryError('PATH_IN_USE', `${real} is the disk itself`);
  assertPathFree(ctx.store, ctx.dataDir, real);
  if (exists) {
    const d = BlockDevice.open(real, { readOnly: true });
    try {
      if (d.size < size) throw new FerryError('TARGET_TOO_SMALL', `${real} holds ${d.size} bytes; disk '${row.name}' needs ${size}`);
      // A full sync overwrites the target: one that holds data is taken only when asked.
      if (overwrite.fullSync && !overwrite.force && holdsData(d)) {
        throw new FerryError('TARGET_HOLDS_DATA', `${real} holds data, which a full sync overwrites: give --force to overwrite it, or --sync checksum if it is an older copy of this disk`);
      }
    } finally {
      void d.close();
    }
  }
  return { kind: 'local', real, exists };
}

/** Bytes read from the start of each sampled region by holdsData. */
const sampleBytes = 1024 * 1024;
/** Data extents of a file sampled by holdsData. */
const sampledExtentsMax = 16;

/**
 * Whether a device holds data, by sampling (bounded, not a scan of the whole device): the
 * first MiB of each of the first data extents of a file (a sparse file with no data extent
 * holds none), or the first and last MiB of a block device (partition tables, file-system
 * and volume-manager labels live there). Any non-zero byte counts.
 */
function holdsData(d: BlockDevice): boolean {
  const regions = d.kind === 'file'
    ? d.extents(0, d.size, sampledExtentsMax).filter((e) => e.flags === 0).map((e) => ({ offset: e.offset, length: Math.min(e.length, sampleBytes) }))
    : [{ offset: 0, length: Math.min(d.size, sampleBytes) }, { offset: Math.max(0, d.size - sampleBytes), length: Math.min(d.size, sampleBytes) }];
  const buf = Buffer.alloc(sampleBytes);
  const fd = fs.openSync(d.path, 'r');
  try {
    for (const r of regions) {
      const n = fs.readSync(fd, buf, 0, r.length, r.offset);
      if (buf.subarray(0, n).some((b) => b !== 0)) return true;
    }
    return false;
  } finally {
    fs.closeSync(fd);
  }
}
