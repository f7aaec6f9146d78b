// Consistency groups in the console (the CLI's `ferry group`; docs/console.md): the list of
// groups (members, staging area, mirror and its state) with the form to create one, and a
// group's page: its members (each linking to its disk page, with its base, size, clients and
// its copy in the group's mirror: a file in DIR, or a disk at the peer), its staging area, its
// mirror's status (GET /v1/disks/{group}/mirror: a group's name is in the disks' namespace,
// so every mirror route takes it), the mirror's creation (local:DIR or PEER[:PREFIX]) and
// operations, adding and removing members, deleting the group. Member removal and group
// deletion end the shared write order: behind the typed confirmation (the member's name, the
// group's name).
import { useEffect, useState } from 'preact/hooks';
import type { Group, Mirror } from '../api/types.js';
import { api, ApiFailure, enc } from './api.js';
import { MirrorActions, MirrorSummary, StagingCard } from './disk-page.js';
import { EventList } from './events-feed.js';
import { bytes } from './format.js';
import { Field, PolicyFields, SetMirror, policies, type Fields } from './mirror-forms.js';
import { state } from './store.js';
import { Badge, ErrorLine, TypedConfirm, useAction, useStore } from './ui.js';

/** How often a groups view reads its routes (the store's poll covers disks and mirrors). */
const groupPollMs = 1000;

/**
 * GET `url` now and every second while shown: `undefined` until the first answer, `null` when
 * refused with `missing` (NO_MIRROR: nothing to show), else the value; other refusals in `error`.
 */
function usePolled<T>(url: string, missing?: string): { value: T | null | undefined; error: unknown; reload: () => void } {
  const [value, setValue] = useState<T | null | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let stop = false;
    let inFlight = false;
    const load = async (): Promise<void> => {
      if (inFlight) return; // one request at a time: a slow answer is not queued behind
      inFlight = true;
      try {
        const v = await api<T>('GET', url);
        if (!stop) {
          setValue(v);
          setError(null);
        }
      } catch (err) {
        if (stop) return;
        if (missing && err instanceof ApiFailure && err.code === missing) {
          setValue(null);
          setError(null);
        } else setError(err);
      } finally {
        inFlight = false;
      }
    };
    void load();
    const t = setInterval(() => void load(), groupPollMs);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [url, tick]);
  return { value, error, reload: () => setTick((x) => x + 1) };
}

function mirrorBadge(m: Mirror | undefined) {
  if (!m) return <Badge level="none">no mirror</Badge>;
  const level = m.state === 'in-sync' ? 'ok' : m.state === 'syncing' ? 'warn' : 'bad';
  return <Badge level={level}>{m.state === 'syncing' ? `syncing ${(m.syncProgress * 100).toFixed(0)}%` : m.state}</Badge>;
}

function DiskLinks({ disks }: { disks: string[] }) {
  return (
    <>
      {disks.map((d, i) => (
        <>
          {i > 0 && ', '}
          <a href={`#/disk/${enc(d)}`}>{d}</a>
        </>
      ))}
    </>
  );
}

/** Disks that may join a group: online, in no group (the server checks the rest). */
function freeDisks(): string[] {
  return state.disks.filter((d) => d.state === 'online' && !d.group).map((d) => d.name);
}

export function GroupsView() {
  useStore();
  const groups = usePolled<Group[]>('/v1/groups');
  const list = groups.value ?? [];
  return (
    <section aria-labelledby="groups-title">
      <h2 id="groups-title">Consistency groups</h2>
      <p>
        The disks of a group share one staging area, so their writes get one order, and the group's mirror holds every member at one point of it. {groups.value === undefined ? 'Loading…' : `${list.length} group(s).`}
      </p>
      <ErrorLine error={groups.error} />
      <div class="table-wrap">
        <table class="groups">
          <thead>
            <tr>
              <th scope="col">group</th>
              <th scope="col">state</th>
              <th scope="col">members</th>
              <th scope="col">staging area</th>
              <th scope="col">mirror</th>
              <th scope="col">lag</th>
            </tr>
          </thead>
          <tbody>
            {list.map((g) => {
              const m = state.mirrors.get(g.name);
              return (
                <tr data-group={g.name} class={g.state !== 'online' || (m && (m.syncError || m.committerError)) ? 'problem' : ''}>
                  <td>
                    <a href={`#/group/${enc(g.name)}`}>{g.name}</a>
                  </td>
                  <td>{g.state === 'online' ? <Badge level="ok">online</Badge> : <Badge level="bad">{`unavailable${g.error ? `: ${g.error}` : ''}`}</Badge>}</td>
                  <td data-testid="group-members">
                    <DiskLinks disks={g.members.map((x) => x.disk)} />
                  </td>
                  <td>{g.staging ? `${g.staging.path}${g.staging.copyPath ? ` + ${g.staging.copyPath}` : ''} (${bytes(g.staging.size)})` : 'none'}</td>
                  <td>
                    {mirrorBadge(m)} {g.mirror ?? ''}
                  </td>
                  <td class="num">{m ? `${m.lagRecords} rec, ${bytes(m.lagBytes)}` : '-'}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      <CreateGroup onCreated={groups.reload} />
    </section>
  );
}

function CreateGroup({ onCreated }: { onCreated: () => void }) {
  const [f, setF] = useState<Fields>({ stagingSize: '256M' });
  const set = (n: string, v: string): void => setF((x) => ({ ...x, [n]: v }));
  const a = useAction();
  const free = freeDisks();
  return (
    <form
      class="card"
      aria-labelledby="create-group-title"
      onSubmit={(e) => {
        e.preventDefault();
        void a.run('create group', async () => {
          const disks = (f.disks ?? '').split(',').map((d) => d.trim()).filter((d) => d.length > 0);
          const g = await api<Group>('POST', '/v1/groups', {
            name: f.name ?? '',
            disks,
            staging: f.staging ?? '',
            ...(f.stagingSize ? { stagingSize: f.stagingSize } : {}),
            ...(f.stagingCopy ? { stagingCopy: f.stagingCopy } : {}),
          });
          onCreated();
          return `consistency group ${g.name} created: ${g.members.map((m) => m.disk).join(', ')} share one staging area (${g.staging?.path})`;
        });
      }}
    >
      <h3 id="create-group-title">Create a group</h3>
      <Field label="Group name" name="name" f={f} set={set} />
      <Field label="Member disks" name="disks" f={f} set={set} placeholder="D1,D2" hint={free.length ? `free: ${free.slice(0, 12).join(', ')}${free.length > 12 ? ', …' : ''}` : 'no free disk'} />
      <fieldset>
        <legend>The group's staging area (every member's writes, one order)</legend>
        <Field label="Group staging path" name="staging" f={f} set={set} placeholder="/srv/staging/group.stg" />
        <Field label="Group staging size" name="stagingSize" f={f} set={set} placeholder="256M" />
        <Field label="Group staging copy" name="stagingCopy" f={f} set={set} placeholder="(optional)" />
      </fieldset>
      <button type="submit" disabled={a.busy}>
        Create group
      </button>
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </form>
  );
}

export function GroupPage({ name }: { name: string }) {
  useStore();
  const g = usePolled<Group>(`/v1/groups/${enc(name)}`);
  const m = usePolled<Mirror>(`/v1/disks/${enc(name)}/mirror`, 'NO_MIRROR');
  const reload = (): void => {
    g.reload();
    m.reload();
  };
  if (!g.value) return g.error ? <ErrorLine error={g.error} /> : <p>Loading…</p>;
  const group = g.value;
  const mirror = m.value ?? null;
  const s = state.staging?.disk === name ? state.staging : null;
  const members = new Set(group.members.map((x) => x.disk));
  return (
    <section aria-labelledby="group-title">
      <h2 id="group-title">
        Group {name} <small>(consistency group)</small>
      </h2>
      <p>
        {group.state === 'online' ? <Badge level="ok">online</Badge> : <Badge level="bad">{`unavailable${group.error ? `: ${group.error}` : ''}`}</Badge>} {group.members.length} member(s), address space {bytes(group.addressBytes)}; staging area{' '}
        {group.staging ? `${group.staging.path}${group.staging.copyPath ? ` + copy ${group.staging.copyPath}` : ''}, ${bytes(group.staging.size)}` : 'none'}
      </p>
      <ErrorLine error={g.error} />
      <GroupMembers group={group} mirror={mirror} onChanged={reload} />
      {s && <StagingCard s={s} />}
      <h3>The group's mirror</h3>
      <ErrorLine error={m.error} />
      {mirror ? (
        <>
          <MirrorSummary m={mirror} />
          <MirrorActions disk={name} m={mirror} noun="group" />
          {mirror.role === 'primary' && <SetMirror disk={name} />}
        </>
      ) : m.value === null ? (
        group.state === 'online' && <CreateGroupMirror name={name} onCreated={reload} />
      ) : null}
      <AddMember name={name} onAdded={reload} />
      <DeleteGroup name={name} />
      <h3>Recent events</h3>
      <EventList events={state.events.filter((e) => e.disk === name || (e.disk !== undefined && members.has(e.disk))).slice(-50)} />
    </section>
  );
}

function GroupMembers({ group, mirror, onChanged }: { group: Group; mirror: Mirror | null; onChanged: () => void }) {
  const a = useAction();
  const [removing, setRemoving] = useState<string | null>(null);
  return (
    <div class="card" aria-label="members">
      <h3>Members</h3>
      <div class="table-wrap">
        <table data-testid="group-member-table">
          <thead>
            <tr>
              <th scope="col">disk</th>
              <th scope="col">size</th>
              <th scope="col">base</th>
              <th scope="col">clients</th>
              <th scope="col">state</th>
              <th scope="col">copy in the group's mirror</th>
              <th scope="col">its share of the mirror's lag</th>
              <th scope="col"></th>
            </tr>
          </thead>
          <tbody>
            {group.members.map((x) => {
              const file = mirror?.members?.find((y) => y.disk === x.disk);
              return (
                <tr data-member={x.disk}>
                  <td>
                    <a href={`#/disk/${enc(x.disk)}`}>{x.disk}</a>
                  </td>
                  <td class="num">{bytes(x.size)}</td>
                  <td class="num">{bytes(x.base)}</td>
                  <td class="num">{x.clients}</td>
                  <td>{x.state === 'online' ? <Badge level="ok">online</Badge> : <Badge level="bad">unavailable</Badge>}</td>
                  <td>{file ? <>{file.target} {file.synced ? <Badge level="ok">copied</Badge> : <Badge level="warn">being copied</Badge>}</> : '-'}</td>
                  <td class="num" data-lag>{file ? (file.lagRecords === null || file.lagBytes === null ? 'unknown' : `${file.lagRecords} rec, ${bytes(file.lagBytes)}`) : '-'}</td>
                  <td>
                    <button type="button" class="danger" disabled={a.busy} onClick={() => setRemoving(x.disk)} aria-label={`Remove ${x.disk} from the group…`}>
                      Remove…
                    </button>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
      {removing && (
        <TypedConfirm
          disk={removing}
          what={`Remove ${removing} from group ${group.name}`}
          note={`What is staged for it is applied first; it keeps its data and is a disk of its own again, no longer in one write order with the others${group.mirror ? " (its file in the group's mirror stays, a copy as of now, no longer updated)" : ''}.`}
          onCancel={() => setRemoving(null)}
          onConfirm={() => {
            const disk = removing;
            setRemoving(null);
            void a.run('remove member', async () => {
              await api<Group>('DELETE', `/v1/groups/${enc(group.name)}/members/${enc(disk)}`);
              onChanged();
              return `${disk} removed from group ${group.name}; it is a disk of its own, with its data`;
            });
          }}
        />
      )}
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </div>
  );
}

function AddMember({ name, onAdded }: { name: string; onAdded: () => void }) {
  const [disk, setDisk] = useState('');
  const a = useAction();
  const free = freeDisks();
  return (
    <form
      class="card"
      aria-labelledby="add-member-title"
      onSubmit={(e) => {
        e.preventDefault();
        void a.run('add member', async () => {
          const g = await api<Group>('POST', `/v1/groups/${enc(name)}/members`, { disk });
          onAdded();
          return `${disk} added to group ${name}${g.mirror ? ' (the group mirror copies it)' : ''}`;
        });
      }}
    >
      <h3 id="add-member-title">Add a member</h3>
      <p>
        <small>Online: the members' requests are held for the change; the group's mirror copies the new member while the others keep streaming.</small>
      </p>
      <label>
        Disk to add <input name="member" required value={disk} onInput={(e) => setDisk((e.target as HTMLInputElement).value)} placeholder={free[0] ?? ''} />
        <small>{free.length ? `free: ${free.slice(0, 12).join(', ')}${free.length > 12 ? ', …' : ''}` : 'no free disk'}</small>
      </label>
      <button type="submit" disabled={a.busy}>
        Add to group
      </button>
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </form>
  );
}

function CreateGroupMirror({ name, onCreated }: { name: string; onCreated: () => void }) {
  const [f, setF] = useState<Fields>({ kind: 'local' });
  const set = (n: string, v: string): void => setF((x) => ({ ...x, [n]: v }));
  const a = useAction();
  const to = f.kind === 'local' ? `local:${f.dir ?? ''}` : `${f.peer ?? ''}${f.prefix ? `:${f.prefix}` : ''}`;
  return (
    <form
      class="card"
      aria-labelledby="create-group-mirror-title"
      onSubmit={(e) => {
        e.preventDefault();
        void a.run('create group mirror', async () => {
          const m = await api<Mirror>('POST', `/v1/groups/${enc(name)}/mirror`, { to, ...policies(f) });
          onCreated();
          return `mirror of group ${name} on ${m.target}: ${m.state} (${m.members?.length ?? 0} member copies)`;
        });
      }}
    >
      <h3 id="create-group-mirror-title">Create the group's mirror</h3>
      <p>
        <small>One copy per member, all at one point of the group's write order.</small>
      </p>
      <fieldset>
        <legend>Target</legend>
        <label>
          <input type="radio" name="group-kind" checked={f.kind === 'local'} onChange={() => set('kind', 'local')} /> a local directory (a file per member)
        </label>
        <label>
          <input type="radio" name="group-kind" checked={f.kind === 'peer'} onChange={() => set('kind', 'peer')} /> a peer site (a group of new disks there)
        </label>
        {f.kind === 'local' ? (
          <Field label="Mirror directory" name="dir" f={f} set={set} placeholder="/srv/mirror/group" />
        ) : (
          <>
            <Field label="Peer" name="peer" f={f} set={set} />
            <Field label="Name prefix at the peer" name="prefix" f={f} set={set} placeholder="(none)" hint={`the group there: ${f.prefix ?? ''}${name}, each member ${f.prefix ?? ''}MEMBER`} />
          </>
        )}
      </fieldset>
      <PolicyFields f={f} set={set} />
      <button type="submit" disabled={a.busy}>
        Create group mirror
      </button>
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </form>
  );
}

function DeleteGroup({ name }: { name: string }) {
  const a = useAction();
  const [confirm, setConfirm] = useState(false);
  return (
    <div class="card" aria-label="delete the group">
      <h3>Delete the group</h3>
      <div class="buttons">
        <button type="button" class="danger" disabled={a.busy} onClick={() => setConfirm(true)}>
          Delete group…
        </button>
      </div>
      {confirm && (
        <TypedConfirm
          disk={name}
          noun="group"
          what="Delete the group"
          note="Its staging area is applied and detached; every member stays, with its data, a disk of its own: their writes no longer share one order. Refused while the group has a mirror."
          onCancel={() => setConfirm(false)}
          onConfirm={() => {
            setConfirm(false);
            void a.run('delete group', async () => {
              const g = await api<Group>('DELETE', `/v1/groups/${enc(name)}`);
              location.hash = '#/groups';
              return `group ${g.name} deleted; ${g.members.map((m) => m.disk).join(', ')} are disks of their own`;
            });
          }}
        />
      )}
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </div>
  );
}
