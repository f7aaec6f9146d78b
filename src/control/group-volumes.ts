// How a consistency group's data path is put together from its metadata: the group's
// primary is a ConcatStore of its members' devices at their fixed bases (disk/concat-store.ts),
// served by one Volume (the group's: its staging area, mirror, fence); each member is a
// Volume of its own whose primary is its window of the group's volume (volume/window-store.ts).
// Used at start (disk-registry.ts) and by every membership change (group-control.ts).
import { FerryError } from '../errors.js';
import { BlockDevice } from '../disk/block-device.js';
import { ConcatStore, type ConcatMember } from '../disk/concat-store.js';
import type { DiskStore } from '../disk/store.js';
import { Volume } from '../volume/volume.js';
import { WindowStore } from '../volume/window-store.js';
import type { GroupMemberRow } from './group-store.js';
import type { DiskRow } from './store.js';

/** Members start at multiples of this (a whole number of sync chunks, 4 MiB, and granules, 64 KiB): no chunk or granule is shared by two members. */
export const GROUP_ALIGN_BYTES = 64 * 1024 * 1024;
/** Members of one group at most (GCP's consistency groups hold up to 128 disks). */
export const GROUP_MEMBERS_MAX = 128;

export function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** The label a group's primary shows as its path (a group has no file of its own). */
export function groupPath(group: string): string {
  return `group:${group}`;
}

/** A member's place and size in the group's address space. */
export interface MemberPlace {
  disk: string;
  base: number;
  size: number;
}

/** The members' places, from their rows. */
export function memberPlaces(members: GroupMemberRow[], diskRow: (name: string) => DiskRow | undefined): MemberPlace[] {
  return members.map((m) => {
    const row = diskRow(m.disk);
    if (!row) throw new FerryError('INTERNAL', `member '${m.disk}' of group '${m.grp}' has no disk row`);
    return { disk: m.disk, base: m.base, size: row.size };
  });
}

/** A ConcatStore over `devices` (one per place, same order); checks each holds its member. */
export function concatOf(group: string, addressBytes: number, places: MemberPlace[], devices: DiskStore[]): ConcatStore {
  const members: ConcatMember[] = places.map((p, i) => {
    const store = devices[i]!;
    if (store.size < p.size) throw new FerryError('DISK_UNAVAILABLE', `member '${p.disk}' of group '${group}': ${store.path} holds ${store.size} bytes, the disk has ${p.size}`);
    return { name: p.disk, base: p.base, size: p.size, store };
  });
  return new ConcatStore(groupPath(group), addressBytes, members);
}

/** Opens every member's device (closing those opened if one fails). */
export async function openMemberDevices(places: MemberPlace[], diskRow: (name: string) => DiskRow | undefined): Promise<BlockDevice[]> {
  const opened: BlockDevice[] = [];
  try {
    for (const p of places) {
      const row = diskRow(p.disk)!;
      try {
        opened.push(BlockDevice.open(row.path));
      } catch (err) {
        throw new FerryError('DISK_UNAVAILABLE', `member '${p.disk}' (${row.path}): ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    return opened;
  } catch (err) {
    await Promise.all(opened.map((d) => d.close().catch(() => undefined)));
    throw err;
  }
}

/** The group's own volume over its members' devices (not served over NBD: its members are). */
export function groupVolume(group: string, addressBytes: number, places: MemberPlace[], devices: DiskStore[]): Volume {
  return new Volume(group, concatOf(group, addressBytes, places, devices), false);
}

/** A member's window of its group's volume. */
export function memberWindow(group: Volume, place: MemberPlace, path: string): WindowStore {
  return new WindowStore(group, place.base, place.size, path);
}
