// The overview: every disk, worst first (unavailable, DR fenced/split-brain/switching, link not connected, failing, RPO missed, bitmap,
// paused, inconsistent, syncing, unmirrored, healthy), with role, mirror state, consistency,
// lag (records, bytes, seconds), link and RPO (the DR state beside the role when not normal; a
// consistency group's member says its group, and shows the group's mirror); and the form to create a disk.
import { useLayoutEffect, useState } from 'preact/hooks';
import type { Disk, Mirror } from '../api/types.js';
import { api } from './api.js';
import { bytes, duration } from './format.js';
import { roleOf, severity, state } from './store.js';
import { DrBadge } from './dr-panels.js';
import { Badge, ErrorLine, useAction, useStore } from './ui.js';

/** The last render time of the overview table, ms (shown, and read by the tests). */
export const renderStats = { ms: 0, msMax: 0, rows: 0 };

function mirrorBadge(m: Mirror | undefined) {
  if (!m) return <Badge level="none">no mirror</Badge>;
  const level = m.state === 'in-sync' ? 'ok' : m.state === 'syncing' ? 'warn' : 'bad';
  return <Badge level={level}>{m.state === 'syncing' ? `syncing ${(m.syncProgress * 100).toFixed(0)}%` : m.state}</Badge>;
}

function Row({ d, m }: { d: Disk; m: Mirror | undefined }) {
  const sev = severity(d, m);
  const dr = d.dr ?? m?.dr;
  return (
    <tr data-disk={d.name} class={sev.rank >= 45 ? 'problem' : ''}>
      <td>
        <a href={`#/disk/${encodeURIComponent(d.name)}`}>{d.name}</a>
      </td>
      <td>
        {roleOf(m)}
        {dr && dr.state !== 'normal' && (
          <>
            {' '}
            <DrBadge dr={dr} />
          </>
        )}
        {m?.test && ` (test ${m.test.state})`}
        {d.group && (
          <>
            {' '}
            in group <a href={`#/group/${encodeURIComponent(d.group)}`}>{d.group}</a>
          </>
        )}
      </td>
      <td>{d.state === 'online' ? <Badge level="ok">online</Badge> : <Badge level="bad">unavailable</Badge>}</td>
      <td>{mirrorBadge(m)}</td>
      <td>{m ? m.consistent ? <Badge level="ok">consistent</Badge> : <Badge level="bad">not consistent</Badge> : '-'}</td>
      <td class="num">{m ? `${m.lagRecords} rec` : '-'}</td>
      <td class="num">{m ? bytes(m.lagBytes) : '-'}</td>
      <td class="num">{m ? duration(m.lagSeconds) : '-'}</td>
      <td>{m ? (m.link ? <Badge level={m.link.state === 'connected' ? 'ok' : 'bad'}>{`${m.link.state} (${m.link.peer})`}</Badge> : 'local') : '-'}</td>
      <td>{m?.rpo?.met === true ? <Badge level="ok">met</Badge> : m?.rpo?.met === false ? <Badge level="bad">missed</Badge> : '-'}</td>
      <td>{sev.problem ?? ''}</td>
    </tr>
  );
}

/** A disk's mirror; a group member's is its group's (its state, lag and problems are the member's too). */
function mirrorOf(d: Disk): Mirror | undefined {
  return state.mirrors.get(d.name) ?? (d.group ? state.mirrors.get(d.group) : undefined);
}

export function Overview() {
  useStore();
  const started = performance.now();
  const rows = state.disks
    .map((d) => ({ d, m: mirrorOf(d) }))
    .map(({ d, m }) => ({ d, m, rank: severity(d, m).rank }))
    .sort((a, b) => b.rank - a.rank || a.d.name.localeCompare(b.d.name));
  useLayoutEffect(() => {
    renderStats.ms = performance.now() - started;
    renderStats.msMax = Math.max(renderStats.msMax, renderStats.ms);
    renderStats.rows = rows.length;
    document.body.dataset.renderMs = renderStats.ms.toFixed(1);
    document.body.dataset.renderMsMax = renderStats.msMax.toFixed(1);
  });
  const problems = rows.filter((r) => r.rank >= 45).length;
  return (
    <section aria-labelledby="overview-title">
      <h2 id="overview-title">Disks</h2>
      <p>
        {rows.length} disk(s), {problems} with a problem{problems ? ' (listed first)' : ''}.
      </p>
      <div class="table-wrap">
        <table class="disks">
          <thead>
            <tr>
              <th scope="col">disk</th>
              <th scope="col">role</th>
              <th scope="col">state</th>
              <th scope="col">mirror</th>
              <th scope="col">consistency</th>
              <th scope="col">lag records</th>
              <th scope="col">lag bytes</th>
              <th scope="col">lag time</th>
              <th scope="col">link</th>
              <th scope="col">RPO</th>
              <th scope="col">problem</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <Row key={r.d.name} d={r.d} m={r.m} />
            ))}
          </tbody>
        </table>
      </div>
      <CreateDisk />
    </section>
  );
}

function CreateDisk() {
  const [name, setName] = useState('');
  const [size, setSize] = useState('1G');
  const [pool, setPool] = useState('');
  const a = useAction();
  return (
    <form
      class="card"
      aria-labelledby="create-disk-title"
      onSubmit={(e) => {
        e.preventDefault();
        void a.run('create disk', async () => {
          const d = await api<Disk>('POST', '/v1/disks', { name, size, ...(pool ? { pool } : {}) });
          return `created virtual disk ${d.name} (${bytes(d.size)}) at ${d.path}`;
        });
      }}
    >
      <h3 id="create-disk-title">Create a disk</h3>
      <label>
        Name <input name="name" required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
      </label>
      <label>
        Size <input name="size" required value={size} onInput={(e) => setSize((e.target as HTMLInputElement).value)} placeholder="10G" />
      </label>
      <label>
        Pool <input name="pool" value={pool} onInput={(e) => setPool((e.target as HTMLInputElement).value)} placeholder="default" />
      </label>
      <button type="submit" disabled={a.busy}>
        Create disk
      </button>
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </form>
  );
}
