// How the CLI names a mirror's state for people (`ferry status`, `ferry mirror status`): the
// state the mirror reports, with what is wrong beside it, so a mirror whose link is down or
// whose sync or target fails is never shown as plain `in-sync`.
import type { Mirror as MirrorStatus } from '../api/types.js';

export function mirrorStateText(m: MirrorStatus): string {
  // Fenced or split brain says more than any state of the stream (which is held).
  if (m.dr && m.dr.state !== 'normal') return `${m.dr.state} (${m.state})`;
  const notes: string[] = [];
  if (m.link && m.link.state !== 'connected') notes.push(`link ${m.link.state}`);
  if (m.syncError) notes.push('sync failing');
  if (m.committerError) notes.push('target failing');
  if (m.state === 'syncing') notes.push(`${Math.floor(m.syncProgress * 100)}%`);
  if (m.rpo?.met === false) notes.push('RPO missed');
  if (m.test) notes.push(m.test.state === 'running' ? `test failover on export ${m.test.export}` : `test failover ${m.test.state}`);
  return notes.length ? `${m.state} (${notes.join(', ')})` : m.state;
}

/** The link column: `local` for a local mirror, else the link's state. */
export function linkText(m: MirrorStatus): string {
  return m.link ? m.link.state : 'local';
}

/** The RPO column: the exposure against the target (`12s/30s ok`, `45s/30s MISSED for 15s`), or '-'. */
export function rpoText(m: MirrorStatus): string {
  const r = m.rpo;
  if (!r || r.targetSeconds === null) return '-';
  const exposure = r.exposureSeconds === null ? 'no image' : `${Math.round(r.exposureSeconds)}s`;
  if (r.met) return `${exposure}/${r.targetSeconds}s ok`;
  return `${exposure}/${r.targetSeconds}s MISSED${r.breachSeconds !== null ? ` for ${Math.round(r.breachSeconds)}s` : ''}`;
}
