// A disk's page: live charts (write throughput, lag in seconds and bytes, link throughput;
// the last 15 minutes, one point a second), sync progress with rate and ETA, the staging
// area's use and its copies' health, the mirror's operations (pause, resume, verify, swap,
// promote, remove; destructive ones behind a typed confirmation), its DR state, switchover,
// reconnect and test failover (dr-panels.tsx), and its recent events. A member of a
// consistency group says so (its staging area and mirror are the group's: group-membership.tsx).
import { useState } from 'preact/hooks';
import type { Mirror, PromoteResult, RemovedMirror, Staging, SwapResult, VerifyResult } from '../api/types.js';
import { api, enc } from './api.js';
import { Chart } from './chart.js';
import { EventList } from './events-feed.js';
import { bytes, duration, percent, rate } from './format.js';
import { DrSummary, Reconnect, Switchover, TestFailoverPanel } from './dr-panels.js';
import { GroupMembership } from './group-membership.js';
import { CreateMirror, SetMirror } from './mirror-forms.js';
import { roleOf, severity, state } from './store.js';
import { Badge, ErrorLine, TypedConfirm, useAction, useStore } from './ui.js';

export function DiskPage({ name }: { name: string }) {
  useStore();
  const d = state.disks.find((x) => x.name === name);
  if (!d) return <p>{state.polledAt ? `No disk named ${name}.` : 'Loading…'}</p>;
  const m = state.mirrors.get(name);
  const h = state.history.get(name);
  const sev = severity(d, m);
  const s = state.staging?.disk === name ? state.staging : null;
  return (
    <section aria-labelledby="disk-title">
      <h2 id="disk-title">
        Disk {name} <small>({roleOf(m)})</small>
      </h2>
      <p>
        {d.state === 'online' ? <Badge level="ok">online</Badge> : <Badge level="bad">unavailable</Badge>} {bytes(d.size)}, {d.kind}, {d.clients} NBD client(s), {d.path}
        {sev.problem && (
          <>
            {' '}
            — <strong>problem: {sev.problem}</strong>
          </>
        )}
      </p>
      {d.group && <GroupMembership disk={name} group={d.group} />}
      {(d.dr ?? m?.dr) && <DrSummary dr={(d.dr ?? m?.dr)!} />}
      {m && <MirrorSummary m={m} />}
      {h && (
        <div class="charts">
          <Chart testId="chart-write" title="Write throughput" t={h.t} series={[{ label: 'writes', values: h.writeBps, unit: rate, stroke: '#1f77b4' }]} />
          <Chart
            testId="chart-lag"
            title="Lag"
            t={h.t}
            series={[
              { label: 'lag bytes', values: h.lagBytes, unit: bytes, stroke: '#d62728' },
              { label: 'lag seconds', values: h.lagSeconds, unit: (v) => duration(v), stroke: '#ff7f0e', dash: [6, 3], scale: 's' },
            ]}
          />
          <Chart testId="chart-link" title="Link throughput" t={h.t} series={[{ label: 'link', values: h.linkBps, unit: rate, stroke: '#2ca02c' }]} />
        </div>
      )}
      {s && <StagingCard s={s} />}
      {m ? <MirrorActions disk={name} m={m} /> : d.state === 'online' && !d.group && <CreateMirror disk={name} />}
      <Switchover disk={name} m={m} clients={d.clients} />
      <Reconnect disk={name} dr={d.dr ?? m?.dr ?? null} />
      {m && <TestFailoverPanel disk={name} m={m} />}
      {m && m.role === 'primary' && <SetMirror disk={name} />}
      <DiskRemove disk={name} />
      <h3>Recent events</h3>
      <EventList events={state.events.filter((e) => e.disk === name).slice(-50)} />
    </section>
  );
}

/** A staging area's use, its records not yet applied and each copy's health (a disk's, or a group's). */
export function StagingCard({ s }: { s: Staging }) {
  return (
    <div class="card" aria-label="staging area">
      <h3>Staging area</h3>
      <p>
        {bytes(s.usedBytes)} used of {bytes(s.ringBytes)} ({percent(s.ringBytes ? s.usedBytes / s.ringBytes : 0)}), {s.unappliedRecords} record(s) not yet on the disk
        {s.waitingForSpace && <strong> — writes are waiting for space</strong>}
        {s.failed && <strong> — FAILED: no copy left</strong>}
      </p>
      <ul>
        {s.copies.map((c) => (
          <li>
            {c.path}: {c.healthy ? <Badge level="ok">healthy</Badge> : <Badge level="bad">failed</Badge>}
            {c.rebuilding && ' (rebuilding)'} {c.problem ?? ''}
          </li>
        ))}
      </ul>
    </div>
  );
}

export function MirrorSummary({ m }: { m: Mirror }) {
  return (
    <dl class="summary" data-testid="mirror-summary">
      <dt>Mirror</dt>
      <dd>
        <Badge level={m.state === 'in-sync' ? 'ok' : m.state === 'syncing' ? 'warn' : 'bad'}>{m.state}</Badge> on {m.target}
      </dd>
      <dt>Consistency</dt>
      <dd>{m.consistent ? <Badge level="ok">consistent</Badge> : <Badge level="bad">not consistent</Badge>}</dd>
      {m.state === 'syncing' || m.state === 'resyncing' ? (
        <>
          <dt>Sync</dt>
          <dd>
            <progress max={1} value={m.syncProgress} aria-label="sync progress" /> {percent(m.syncProgress)} of {bytes(m.syncBytes)}, {rate(m.syncBytesPerSec)}, ETA {duration(m.syncEtaSeconds)}
          </dd>
        </>
      ) : null}
      <dt>Lag</dt>
      <dd>
        {m.lagRecords} records, {bytes(m.lagBytes)}, {duration(m.lagSeconds)}
      </dd>
      {m.link && (
        <>
          <dt>Link</dt>
          <dd>
            <Badge level={m.link.state === 'connected' ? 'ok' : 'bad'}>{m.link.state}</Badge> to {m.link.peer}, {rate(m.link.bytesPerSec)}
            {m.link.lastError && ` (${m.link.lastError})`}
          </dd>
        </>
      )}
      {m.rpo && (
        <>
          <dt>RPO</dt>
          <dd>
            {m.rpo.met === null ? 'no target' : m.rpo.met ? <Badge level="ok">met</Badge> : <Badge level="bad">missed</Badge>} exposure {duration(m.rpo.exposureSeconds)}
            {m.rpo.targetSeconds !== null && `, target ${duration(m.rpo.targetSeconds)}`}
          </dd>
        </>
      )}
      {m.verify && (
        <>
          <dt>Verify</dt>
          <dd>
            {percent(m.verify.progress)}, {rate(m.verify.bytesPerSec)}, ETA {duration(m.verify.etaSeconds)}
          </dd>
        </>
      )}
    </dl>
  );
}

/** The mirror's operations on a disk's page, or on a group's (`noun` 'group': the same routes with its name). */
export function MirrorActions({ disk, m, noun = 'disk' }: { disk: string; m: Mirror; noun?: 'disk' | 'group' }) {
  const a = useAction();
  const [confirm, setConfirm] = useState<null | 'remove' | 'promote'>(null);
  const base = `/v1/disks/${enc(disk)}/mirror`;
  const simple = (label: string, method: string, url: string, describe: (r: any) => string) => (
    <button type="button" disabled={a.busy} onClick={() => void a.run(label, async () => describe(await api(method, url)))}>
      {label}
    </button>
  );
  return (
    <div class="card" aria-label="mirror operations">
      <h3>Mirror operations</h3>
      <div class="buttons">
        {m.role === 'primary' && simple('Pause', 'POST', `${base}/pause`, (r: Mirror) => `mirror of ${disk}: ${r.state}`)}
        {m.role === 'primary' && simple('Resume', 'POST', `${base}/resume`, (r: Mirror) => `mirror of ${disk}: ${r.state}`)}
        {m.role === 'primary' && simple('Verify', 'POST', `${base}/verify`, (r: VerifyResult) => `verified ${bytes(r.bytesCompared)}: ${r.differences.length} difference(s), ${r.regionsSkipped} region(s) skipped`)}
        {m.role === 'primary' && simple('Swap', 'POST', `${base}/swap`, (r: SwapResult) => `swapped: primary ${r.primary}, mirror ${r.mirror} (writes paused ${r.pauseMs} ms)`)}
        {m.role === 'replica' && simple('Promote', 'POST', `${base}/promote`, (r: PromoteResult) => `promoted: image ${r.image}, seq ${r.seq}`)}
        {m.role === 'replica' && (
          <button type="button" class="danger" onClick={() => setConfirm('promote')}>
            Promote --force…
          </button>
        )}
        {simple('Remove mirror', 'DELETE', base, (r: RemovedMirror) => `mirror removed; the copy left is ${r.copy}`)}
        <button type="button" class="danger" onClick={() => setConfirm('remove')}>
          Remove --force…
        </button>
      </div>
      {confirm && (
        <TypedConfirm
          disk={disk}
          noun={noun}
          what={confirm === 'remove' ? 'Remove the mirror, abandoning its sync' : 'Promote the replica as it is'}
          onCancel={() => setConfirm(null)}
          onConfirm={() => {
            const c = confirm;
            setConfirm(null);
            void a.run(c, async () =>
              c === 'remove'
                ? `mirror removed; the copy left is ${(await api<RemovedMirror>('DELETE', `${base}?force=true`)).copy}`
                : `promoted: image ${(await api<PromoteResult>('POST', `${base}/promote?force=true`)).image}`,
            );
          }}
        />
      )}
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </div>
  );
}

function DiskRemove({ disk }: { disk: string }) {
  const a = useAction();
  const [confirm, setConfirm] = useState(false);
  return (
    <div class="card" aria-label="remove the disk">
      <h3>Remove the disk</h3>
      <div class="buttons">
        <button type="button" disabled={a.busy} onClick={() => void a.run('remove', async () => `disk ${(await api<{ name: string }>('DELETE', `/v1/disks/${enc(disk)}`)).name} unregistered (file kept)`)}>
          Unregister
        </button>
        <button type="button" class="danger" onClick={() => setConfirm(true)}>
          Remove and purge…
        </button>
      </div>
      {confirm && (
        <TypedConfirm
          disk={disk}
          what="Remove the disk and delete its file"
          onCancel={() => setConfirm(false)}
          onConfirm={() => {
            setConfirm(false);
            void a.run('purge', async () => `disk ${(await api<{ name: string }>('DELETE', `/v1/disks/${enc(disk)}?purge=true`)).name} removed and purged`);
          }}
        />
      )}
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </div>
  );
}
