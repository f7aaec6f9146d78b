// The readable log format of `ferry serve --log-format text`, for a person at a terminal:
// `2026-12-06T15:00:00.000Z INFO  staging area attached disk=db path=/srv/db.stg`, one line per
// record. The default stays pino's JSON (one object per line, ISO time), which log shippers
// and the journal read. Lines are written synchronously to the file descriptor.
import fs from 'node:fs';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const SKIP = new Set(['level', 'time', 'msg', 'svc', 'pid', 'hostname']);

function value(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return /[\s"=]/.test(s) ? JSON.stringify(s) : s;
}

/** Formats one pino JSON line; a line that is not JSON is passed through. */
export function formatLogLine(line: string): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : `${line}\n`;
  }
  const fields = Object.entries(rec)
    .filter(([k]) => !SKIP.has(k))
    .map(([k, v]) => `${k}=${value(v)}`);
  const level = (LEVELS[rec.level as number] ?? String(rec.level)).padEnd(5);
  return `${String(rec.time ?? '')} ${level} ${String(rec.msg ?? '')}${fields.length ? ` ${fields.join(' ')}` : ''}\n`;
}

/** A pino destination writing readable lines to `fd`. */
export function textDestination(fd: number): { write(line: string): void; flush(cb?: () => void): void } {
  return {
    write(line: string): void {
      fs.writeSync(fd, formatLogLine(line));
    },
    flush(cb?: () => void): void {
      cb?.();
    },
  };
}
