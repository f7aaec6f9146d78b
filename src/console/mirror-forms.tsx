// The mirror creation form (the CLI's `mirror create`: a local target or a peer's disk,
// staging area path, size and copy, initial copy mode, policies incl. RPO) and `mirror set`.
import { useState } from 'preact/hooks';
import type { Mirror } from '../api/types.js';
import { api, enc } from './api.js';
import { ErrorLine, useAction } from './ui.js';

export type Fields = Record<string, string>;

export function Field({ label, name, f, set, placeholder, hint }: { label: string; name: string; f: Fields; set: (n: string, v: string) => void; placeholder?: string; hint?: string }) {
  return (
    <label>
      {label} <input name={name} value={f[name] ?? ''} placeholder={placeholder} onInput={(e) => set(name, (e.target as HTMLInputElement).value)} />
      {hint && <small>{hint}</small>}
    </label>
  );
}

function Select({ label, name, f, set, options }: { label: string; name: string; f: Fields; set: (n: string, v: string) => void; options: string[] }) {
  return (
    <label>
      {label}{' '}
      <select name={name} value={f[name] ?? ''} onChange={(e) => set(name, (e.target as HTMLSelectElement).value)}>
        {options.map((o) => (
          <option value={o}>{o || '(default)'}</option>
        ))}
      </select>
    </label>
  );
}

/** Policies as the API takes them: only the fields given. */
export function policies(f: Fields): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of ['onFull', 'maxLag', 'bandwidth', 'compress', 'rpo']) if (f[k]) out[k] = f[k]!;
  return out;
}

export function PolicyFields({ f, set }: { f: Fields; set: (n: string, v: string) => void }) {
  return (
    <fieldset>
      <legend>Policies</legend>
      <Select label="On full staging" name="onFull" f={f} set={set} options={['', 'bitmap', 'throttle', 'fail']} />
      <Field label="Max lag" name="maxLag" f={f} set={set} placeholder="30s or 64M" />
      <Field label="Bandwidth" name="bandwidth" f={f} set={set} placeholder="100M (bytes/s)" />
      <Select label="Compression" name="compress" f={f} set={set} options={['', 'zstd', 'none']} />
      <Field label="RPO target" name="rpo" f={f} set={set} placeholder="30s, 5m" />
    </fieldset>
  );
}

export function CreateMirror({ disk }: { disk: string }) {
  const [f, setF] = useState<Fields>({ kind: 'local', stagingSize: '256M', sync: 'full' });
  const set = (n: string, v: string): void => setF((x) => ({ ...x, [n]: v }));
  const [force, setForce] = useState(false);
  const a = useAction();
  const to = f.kind === 'local' ? `local:${f.path ?? ''}` : `${f.peer ?? ''}:${f.peerDisk || disk}`;
  return (
    <form
      class="card"
      aria-labelledby="create-mirror-title"
      onSubmit={(e) => {
        e.preventDefault();
        void a.run('create mirror', async () => {
          const m = await api<Mirror>('POST', `/v1/disks/${enc(disk)}/mirror`, {
            to,
            ...(f.staging ? { staging: f.staging } : {}),
            ...(f.stagingSize ? { stagingSize: f.stagingSize } : {}),
            ...(f.stagingCopy ? { stagingCopy: f.stagingCopy } : {}),
            ...(f.sync ? { sync: f.sync } : {}),
            ...(force ? { force: true } : {}),
            ...policies(f),
          });
          return `mirror of ${m.disk} on ${m.target}: ${m.state}`;
        });
      }}
    >
      <h3 id="create-mirror-title">Create a mirror</h3>
      <fieldset>
        <legend>Target</legend>
        <label>
          <input type="radio" name="kind" checked={f.kind === 'local'} onChange={() => set('kind', 'local')} /> local file or device
        </label>
        <label>
          <input type="radio" name="kind" checked={f.kind === 'peer'} onChange={() => set('kind', 'peer')} /> a peer's disk
        </label>
        {f.kind === 'local' ? (
          <Field label="Target path" name="path" f={f} set={set} placeholder="/srv/mirror/disk.img" />
        ) : (
          <>
            <Field label="Peer" name="peer" f={f} set={set} />
            <Field label="Disk on the peer" name="peerDisk" f={f} set={set} placeholder={disk} />
          </>
        )}
      </fieldset>
      <fieldset>
        <legend>Staging area (if the disk has none)</legend>
        <Field label="Staging path" name="staging" f={f} set={set} placeholder="/srv/staging/disk.stg" />
        <Field label="Staging size" name="stagingSize" f={f} set={set} placeholder="256M" />
        <Field label="Second copy" name="stagingCopy" f={f} set={set} placeholder="(optional)" />
      </fieldset>
      <Select label="Initial copy" name="sync" f={f} set={set} options={['full', 'checksum']} />
      <label>
        <input type="checkbox" checked={force} onChange={(e) => setForce((e.target as HTMLInputElement).checked)} /> overwrite a target that holds data
      </label>
      <PolicyFields f={f} set={set} />
      <button type="submit" disabled={a.busy}>
        Create mirror
      </button>
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </form>
  );
}

export function SetMirror({ disk }: { disk: string }) {
  const [f, setF] = useState<Fields>({});
  const set = (n: string, v: string): void => setF((x) => ({ ...x, [n]: v }));
  const a = useAction();
  return (
    <form
      class="card"
      aria-labelledby="set-mirror-title"
      onSubmit={(e) => {
        e.preventDefault();
        void a.run('mirror set', async () => {
          await api<Mirror>('PATCH', `/v1/disks/${enc(disk)}/mirror`, policies(f));
          return 'policies changed';
        });
      }}
    >
      <h3 id="set-mirror-title">Change policies (mirror set)</h3>
      <p>
        <small>Empty fields are left as they are; "none" clears max lag, bandwidth or RPO.</small>
      </p>
      <PolicyFields f={f} set={set} />
      <button type="submit" disabled={a.busy}>
        Apply
      </button>
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </form>
  );
}
