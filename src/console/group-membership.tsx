// On a member's disk page: the consistency group it belongs to (a link to the group's page),
// and what that means: its writes are staged in the group's staging area, in one order with
// the other members', and its mirror is the group's (its state, and whether this member's copy
// in it is complete yet). The mirror is managed on the group's page, never on the member's.
import { Badge } from './ui.js';
import { state } from './store.js';
import { enc } from './api.js';

export function GroupMembership({ disk, group }: { disk: string; group: string }) {
  const m = state.mirrors.get(group);
  const file = m?.members?.find((x) => x.disk === disk);
  return (
    <p class="card" data-testid="group-membership">
      Member of consistency group <a href={`#/group/${enc(group)}`}>{group}</a>: its writes are staged in the group's staging area, in one order with the other members'.{' '}
      {m ? (
        <>
          Mirrored by the group's mirror: <Badge level={m.state === 'in-sync' ? 'ok' : m.state === 'syncing' ? 'warn' : 'bad'}>{m.state}</Badge> on {m.target}
          {file && (
            <>
              {', '}this disk's copy {file.target} {file.synced ? <Badge level="ok">copied</Badge> : <Badge level="warn">being copied</Badge>}
            </>
          )}
          .
        </>
      ) : (
        "The group has no mirror (create it on the group's page)."
      )}
    </p>
  );
}
