// Numbers as the CLI prints them (src/cli/output.ts: binary units, 1.5MiB, 12.5s), and the
// few the console adds (rates, percentages, ages).
import { bytes, duration } from '../cli/output.js';

export { bytes, duration };

export function rate(bps: number | null | undefined): string {
  return bps === null || bps === undefined ? '-' : `${bytes(Math.round(bps))}/s`;
}

export function percent(f: number): string {
  return `${(f * 100).toFixed(1)}%`;
}

export function time(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}
