// Small shared pieces of the console: the error line (registry code and message), a status
// badge that says its state in words (colour is only a second signal), the typed
// confirmation of destructive actions, and a hook that re-renders on store changes.
import type { ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiFailure } from './api.js';
import { subscribe } from './store.js';

export function useStore(): void {
  const [, setTick] = useState(0);
  useEffect(() => subscribe(() => setTick((t) => t + 1)), []);
}

export function ErrorLine({ error }: { error: unknown }) {
  if (!error) return null;
  const e = error instanceof ApiFailure ? error : null;
  return (
    <p class="error" role="alert">
      <strong class="code">{e ? e.code : 'ERROR'}</strong>: {e ? e.message : String(error)}
    </p>
  );
}

/** A state in words with a symbol; `level` only colours it. */
export function Badge({ level, children }: { level: 'ok' | 'warn' | 'bad' | 'none'; children: ComponentChildren }) {
  const mark = level === 'ok' ? '✓' : level === 'warn' ? '!' : level === 'bad' ? '✗' : '·';
  return (
    <span class={`badge ${level}`}>
      <span aria-hidden="true">{mark} </span>
      {children}
    </span>
  );
}

/**
 * Runs `action` only once the disk's name is typed: what loses or abandons data (remove
 * --force, promote --force, disk purge, switchover --force), or what ends a consistency
 * group's shared write order (group delete: `noun` 'group', its name typed; member removal: the
 * disk's name).
 * Cancel or a wrong name does nothing.
 */
export function TypedConfirm({ disk, what, note, noun = 'disk', onConfirm, onCancel }: { disk: string; what: string; note?: string; noun?: 'disk' | 'group'; onConfirm: () => void; onCancel: () => void }) {
  const [typed, setTyped] = useState('');
  return (
    <div class="confirm" role="dialog" aria-modal="true" aria-labelledby="confirm-title">
      <h3 id="confirm-title">{what}</h3>
      <p>
        {note ?? 'This loses or abandons data.'} Type the {noun}'s name, <code>{disk}</code>, to confirm.
      </p>
      <label>
        {noun === 'disk' ? 'Disk' : 'Group'} name <input autoFocus value={typed} onInput={(e) => setTyped((e.target as HTMLInputElement).value)} aria-label={`type the ${noun} name to confirm`} />
      </label>
      <div class="buttons">
        <button type="button" class="danger" disabled={typed !== disk} onClick={() => typed === disk && onConfirm()}>
          {what}
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </div>
  );
}

/** A button running an API call, showing its error (code and message) next to it. */
export function useAction(): { busy: boolean; error: unknown; result: string | null; run: (label: string, fn: () => Promise<string | void>) => Promise<void> } {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [result, setResult] = useState<string | null>(null);
  const run = async (_label: string, fn: () => Promise<string | void>): Promise<void> => {
    setBusy(true);
    setError(null);
    setResult(null);
    try {
      const r = await fn();
      setResult(r ?? null);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, result, run };
}
