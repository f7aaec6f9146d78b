// `ferry group`: consistency groups. Several disks share one staging area, so their writes
// get one sequence and the group's mirror (`ferry mirror create --group NAME`) holds every
// member at the same point of it. Members stay NBD exports of their own; membership changes
// online. Every mirror command takes the group's name where it takes a disk's.
import type { Command } from 'commander';
import type { Group } from '../api/types.js';
import { client, jsonOpt, print } from './command-kit.js';
import { bytes, keyValues, table } from './output.js';

function groupText(g: Group): string {
  return (
    keyValues([
      ['group', g.name],
      ['state', g.state + (g.error ? ` (${g.error})` : '')],
      ['staging', g.staging ? `${g.staging.path}${g.staging.copyPath ? ` + copy ${g.staging.copyPath}` : ''}, ${bytes(g.staging.size)}` : 'none'],
      ['mirror', g.mirror ?? 'none'],
      ['address space', bytes(g.addressBytes)],
    ]) +
    table(
      g.members.map((m) => ({ MEMBER: m.disk, SIZE: bytes(m.size), BASE: bytes(m.base), CLIENTS: String(m.clients), STATE: m.state })),
      ['MEMBER', 'SIZE', 'BASE', 'CLIENTS', 'STATE'],
    )
  );
}

export function registerGroupCommands(program: Command): void {
  const group = program.command('group').description('consistency groups: several disks, one staging area, one write order (and one point at the mirror)');
  const path = (name: string): string => `/v1/groups/${encodeURIComponent(name)}`;

  group
    .command('create <name>')
    .description('create a consistency group over existing disks: their writes share one staging area, so they get one sequence')
    .requiredOption('--disks <list>', 'the member disks, comma-separated (D1,D2,...): online, with no staging area or mirror of their own')
    .requiredOption('--staging <path>', "the group's staging area (a new file, or a block device)")
    .option('--staging-size <size>', 'its size, e.g. 4G (a new file needs one)')
    .option('--staging-copy <path>', 'a second copy of the staging area')
    .addOption(jsonOpt())
    .action(async (name: string, opts, cmd: Command) => {
      const disks = String(opts.disks).split(',').map((d) => d.trim()).filter((d) => d.length > 0);
      const g = await client(cmd).request<Group>('POST', '/v1/groups', { name, disks, staging: opts.staging, stagingSize: opts.stagingSize, stagingCopy: opts.stagingCopy });
      print(cmd, g, () => `consistency group ${name} created: ${g.members.map((m) => m.disk).join(', ')} share one staging area (${g.staging?.path})\n`);
    });

  group
    .command('list')
    .description('every consistency group')
    .addOption(jsonOpt())
    .action(async (_opts, cmd: Command) => {
      const gs = await client(cmd).request<Group[]>('GET', '/v1/groups');
      print(cmd, gs, () => (gs.length === 0 ? 'no consistency groups\n' : table(gs.map((g) => ({ GROUP: g.name, MEMBERS: g.members.map((m) => m.disk).join(','), STATE: g.state, MIRROR: g.mirror ?? '-' })), ['GROUP', 'MEMBERS', 'STATE', 'MIRROR'])));
    });

  group
    .command('show <name>')
    .description('a consistency group: its members and where they lie, its staging area and mirror')
    .addOption(jsonOpt())
    .action(async (name: string, _opts, cmd: Command) => {
      const g = await client(cmd).request<Group>('GET', path(name));
      print(cmd, g, () => groupText(g));
    });

  group
    .command('add <name> <disk>')
    .description("add a disk online (requests of the members are held for the change); the group's mirror copies it while the others keep streaming")
    .addOption(jsonOpt())
    .action(async (name: string, disk: string, _opts, cmd: Command) => {
      const g = await client(cmd).request<Group>('POST', `${path(name)}/members`, { disk });
      print(cmd, g, () => `${disk} added to group ${name}${g.mirror ? ` (its mirror copies it: ferry mirror status ${name})` : ''}\n`);
    });

  group
    .command('remove <name> <disk>')
    .description('remove a member online: what is staged for it is applied first; it keeps its data and is a disk of its own again')
    .addOption(jsonOpt())
    .action(async (name: string, disk: string, _opts, cmd: Command) => {
      const g = await client(cmd).request<Group>('DELETE', `${path(name)}/members/${encodeURIComponent(disk)}`);
      print(cmd, g, () => `${disk} removed from group ${name}; it is a disk of its own, with its data${g.mirror ? " (its file in the group's mirror stays, a copy as of now)" : ''}\n`);
    });

  group
    .command('delete <name>')
    .description('delete a consistency group (remove its mirror first): its staging area is applied and detached; the members stay, with their data')
    .addOption(jsonOpt())
    .action(async (name: string, _opts, cmd: Command) => {
      const g = await client(cmd).request<Group>('DELETE', path(name));
      print(cmd, g, () => `group ${name} deleted; ${g.members.map((m) => m.disk).join(', ')} are disks of their own\n`);
    });
}
