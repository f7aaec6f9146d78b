// The disk page's disaster-recovery part: the disk's DR state (normal, fenced, split-brain,
// switching; its generation), a planned switchover of a remote mirror (from either site: at
// the replica, ferryd asks the primary site to run it; force, which disconnects NBD clients,
// behind the typed confirmation), the reconnect of a fenced or split-brain disk as the other
// site's replica (its writes since divergence discarded: behind the typed confirmation), and
// a test failover of a replica at the mirror site
// (start it with an export name, scratch path and size; its figures, on both sites; end it).
import { useState } from 'preact/hooks';
import type { DiskDr, Mirror, ReconnectResult, SwitchoverResult, TestEnd, TestFailover } from '../api/types.js';
import { api, enc } from './api.js';
import { bytes, duration, time } from './format.js';
import { Badge, ErrorLine, TypedConfirm, useAction } from './ui.js';

type TestFigures = NonNullable<Mirror['test']>;

/** A DR state in words and a mark: normal is quiet, switching a warning, fenced and split brain bad. */
export function DrBadge({ dr }: { dr: Pick<DiskDr, 'state'> }) {
  const level = dr.state === 'normal' ? 'ok' : dr.state === 'switching' ? 'warn' : 'bad';
  return <Badge level={level}>{dr.state === 'normal' ? 'DR normal' : dr.state}</Badge>;
}

/** The disk's DR state and generation; the reason and since when, if not normal. */
export function DrSummary({ dr }: { dr: DiskDr }) {
  return (
    <p class={dr.state === 'normal' ? '' : 'dr-alert'} data-testid="dr-state">
      DR state: <DrBadge dr={dr} />
      {dr.generation && (
        <>
          {' '}
          generation <code>{dr.generation}</code>
        </>
      )}
      {dr.state !== 'normal' && (
        <>
          {' '}
          — <strong>{dr.state === 'fenced' ? 'writes refused (FENCED)' : dr.state === 'switching' ? 'a switchover has not completed: writes refused; switch over again to complete it' : 'both sites took writes: nothing is resynced'}</strong>
          {dr.reason && `: ${dr.reason}`}
          {dr.since && ` (since ${time(dr.since)})`}
        </>
      )}
      {dr.formerPrimary && ` — promoted here from ${dr.formerPrimary}`}
    </p>
  );
}

/** Planned switchover of a remote mirror: a confirmation step; force behind the typed disk name. */
export function Switchover({ disk, m, clients }: { disk: string; m: Mirror | undefined; clients: number }) {
  const a = useAction();
  const [confirm, setConfirm] = useState<null | 'plain' | 'force'>(null);
  // Offered on a remote mirror at either site; once run, the card stays to show the outcome
  // (the page's polls can see the mirror change hands before the request answers).
  const offered = m !== undefined && (m.role === 'replica' || m.link !== null);
  if (!offered && !a.busy && !a.result && !a.error) return null;
  const primary = m?.role === 'primary';
  const run = (force: boolean): void => {
    setConfirm(null);
    void a.run('switchover', async () => {
      const r = await api<SwitchoverResult>('POST', `/v1/disks/${enc(disk)}/mirror/switchover?force=${force}`);
      return `switched over: the primary is now ${r.primary}, generation ${r.generation}, writes paused ${r.pauseMs.toFixed(0)} ms, ${r.drainedRecords} record(s) drained, ${r.disconnected} client(s) disconnected`;
    });
  };
  return (
    <div class="card" aria-label="switchover">
      <h3>Planned switchover</h3>
      <p>
        <small>
          {primary
            ? `Writes here stop, every staged record reaches ${m!.target}, which becomes the primary; this disk becomes its replica. No data is copied.`
            : `Asks the primary site to switch over: this replica becomes the primary and the disk there its replica. No data is copied.`}
          {primary && clients > 0 && ` ${clients} NBD client(s) are attached here: refused (DISK_BUSY) unless forced.`}
        </small>
      </p>
      <div class="buttons">
        <button type="button" disabled={a.busy || !offered} onClick={() => setConfirm('plain')}>
          Switch over…
        </button>
        <button type="button" class="danger" disabled={a.busy || !offered} onClick={() => setConfirm('force')}>
          Switch over --force…
        </button>
      </div>
      {confirm === 'plain' && offered && (
        <div class="confirm" role="dialog" aria-modal="true" aria-labelledby="switchover-title">
          <h3 id="switchover-title">Switch over {disk}?</h3>
          <p>The roles of the two sites reverse. Refused with DISK_BUSY while NBD clients are attached at the primary site.</p>
          <div class="buttons">
            <button type="button" autoFocus onClick={() => run(false)}>
              Switch over
            </button>
            <button type="button" onClick={() => setConfirm(null)}>
              Cancel
            </button>
          </div>
        </div>
      )}
      {confirm === 'force' && offered && (
        <TypedConfirm
          disk={disk}
          what="Switch over, disconnecting NBD clients"
          note="This disconnects the NBD clients attached at the primary site (after their requests in flight)."
          onCancel={() => setConfirm(null)}
          onConfirm={() => run(true)}
        />
      )}
      {a.busy && <p role="status">switching over…</p>}
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </div>
  );
}

/**
 * After a failover, on a fenced or split-brain disk: it becomes the replica of the other site,
 * which resyncs only the regions changed on either side since they diverged. This site's
 * writes since then are thrown away (in split brain it is named as the side to discard), so
 * the typed confirmation guards it; attached NBD clients are disconnected.
 */
export function Reconnect({ disk, dr }: { disk: string; dr: DiskDr | null }) {
  const a = useAction();
  const [confirm, setConfirm] = useState(false);
  // Offered on a fenced or split-brain disk only; but once run, the card stays to show the
  // outcome: the page's polls see the roles change before the request answers.
  const offered = dr?.state === 'fenced' || dr?.state === 'split-brain';
  if (!offered && !a.busy && !a.result && !a.error) return null;
  const splitBrain = dr?.state === 'split-brain';
  const run = (): void => {
    setConfirm(false);
    void a.run('reconnect', async () => {
      const site = await api<{ name: string | null }>('GET', '/v1/site');
      const discard = splitBrain && site.name ? `&discardChangesAt=${enc(site.name)}` : '';
      const r = await api<ReconnectResult>('POST', `/v1/disks/${enc(disk)}/mirror/reconnect?force=true${discard}`);
      return `reconnected: the replica of ${r.primary} now, generation ${r.generation}; resyncing ${bytes(r.resyncBytes)} of ${bytes(r.diskBytes)} (changed here ${bytes(r.changedHereBytes)}, there ${bytes(r.changedThereBytes)}), ${r.disconnected} client(s) disconnected`;
    });
  };
  return (
    <div class="card" aria-label="reconnect">
      <h3>Reconnect as the replica</h3>
      <p>
        <small>
          {!splitBrain ? 'The other site was promoted past this one.' : 'Both sites took writes since they diverged; reconnecting here discards the writes made at this site.'} This disk becomes the replica of
          the other site, which sends only the regions changed on either side since they diverged; this site's writes since then are lost. Its current image is kept by an undo log
          until the resync completes.
        </small>
      </p>
      <div class="buttons">
        <button type="button" class="danger" disabled={a.busy || !offered} onClick={() => setConfirm(true)}>
          Reconnect…
        </button>
      </div>
      {confirm && offered && (
        <TypedConfirm
          disk={disk}
          what="Reconnect, discarding this site's writes"
          note="This site's writes since the sites diverged are thrown away, and NBD clients attached here are disconnected."
          onCancel={() => setConfirm(false)}
          onConfirm={run}
        />
      )}
      {a.busy && <p role="status">reconnecting…</p>}
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </div>
  );
}

/** A test failover's figures (as either site's mirror status reports them). */
export function TestFiguresView({ t }: { t: TestFigures }) {
  const level = t.state === 'running' ? 'ok' : t.state === 'ended' ? 'none' : 'bad';
  return (
    <dl class="summary" data-testid="test-failover">
      <dt>Export</dt>
      <dd>
        <code>{t.export}</code>
      </dd>
      <dt>State</dt>
      <dd>
        <Badge level={level}>{t.state}</Badge>
        {t.reason && ` (${t.reason})`}
      </dd>
      <dt>Started</dt>
      <dd>
        {time(t.startedAt)} ({duration(Math.max(0, (Date.now() - Date.parse(t.startedAt)) / 1000))} ago), at record {t.seq}
      </dd>
      <dt>Scratch</dt>
      <dd>
        <progress max={t.scratchBytes || 1} value={t.scratchUsedBytes} aria-label="scratch used" /> {bytes(t.scratchUsedBytes)} used of {bytes(t.scratchBytes)}
      </dd>
    </dl>
  );
}

/**
 * A replica's test failover: its figures and End, or the form to start one (at the mirror
 * site only: the primary site's page shows the figures its mirror status carries).
 */
export function TestFailoverPanel({ disk, m }: { disk: string; m: Mirror }) {
  const a = useAction();
  const [f, setF] = useState({ export: `${disk}-test`, scratch: '', scratchSize: '1G' });
  const set = (k: keyof typeof f) => (e: Event) => setF((x) => ({ ...x, [k]: (e.target as HTMLInputElement).value }));
  const base = `/v1/disks/${enc(disk)}/mirror/test`;
  const t = m.test;
  if (m.role === 'primary' && !t) return null;
  return (
    <div class="card" aria-label="test failover">
      <h3>Test failover{m.role === 'primary' ? ' (at the mirror site)' : ''}</h3>
      {t && <TestFiguresView t={t} />}
      {m.role === 'replica' && t && (
        <div class="buttons">
          <button
            type="button"
            disabled={a.busy}
            onClick={() =>
              void a.run('end test', async () => {
                const r = await api<TestEnd>('DELETE', base);
                return `test failover ${r.export} ended (${r.endedBy}): ${r.clientsDisconnected} client(s) disconnected, ${bytes(r.preservedBytes)} preserved, ${bytes(r.writtenBytes)} written${r.lostReason ? `; image lost: ${r.lostReason}` : ''}`;
              })
            }
          >
            End test failover
          </button>
        </div>
      )}
      {m.role === 'replica' && !t && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            void a.run('start test', async () => {
              const r = await api<TestFailover>('POST', base, { export: f.export, scratch: f.scratch, scratchSize: f.scratchSize });
              return `test failover started: export ${r.export} at record ${r.seq}`;
            });
          }}
        >
          <p>
            <small>A writable image of the replica as of now, served as an NBD export while replication goes on; its writes and what replication overwrites go to the scratch file.</small>
          </p>
          <label>
            Export name <input name="export" required value={f.export} onInput={set('export')} />
          </label>
          <label>
            Scratch path <input name="scratch" required value={f.scratch} onInput={set('scratch')} placeholder="/srv/scratch/disk.test" />
          </label>
          <label>
            Scratch size <input name="scratchSize" required value={f.scratchSize} onInput={set('scratchSize')} placeholder="4G" />
          </label>
          <button type="submit" disabled={a.busy}>
            Start test failover
          </button>
        </form>
      )}
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </div>
  );
}
