// How the CLI prints: aligned tables and key/value blocks for people, JSON with --json.
import { formatSize } from '../disk/size.js';

export function table(rows: Array<Record<string, string>>, columns: string[]): string {
  if (rows.length === 0) return '(none)\n';
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => (r[c] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...rows.map((r) => line(columns.map((c) => r[c] ?? '')))].join('\n') + '\n';
}

export function keyValues(pairs: Array<[string, string]>): string {
  const w = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${(k + ':').padEnd(w + 1)} ${v}`).join('\n') + '\n';
}

export function bytes(n: number | null | undefined): string {
  return n === null || n === undefined ? '-' : formatSize(n);
}
