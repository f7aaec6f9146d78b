// One event of GET /v1/events in words, for `ferry events` and the console's event feed
// (no Node import: the console's bundle uses it too).
/** One event as a line: time, type, subject, what happened. */
export function eventLine(e: Record<string, unknown>): string {
  const subject = String(e.disk ?? e.peer ?? e.pool ?? '-');
  const arrow = (from: unknown, to: unknown): string => `${from ?? '(none)'} → ${to ?? '(none)'}`;
  let what: string;
  switch (e.type) {
    case 'mirror.state':
    case 'disk.state':
      what = arrow(e.from, e.to) + (e.error ? ` (${String(e.error)})` : '');
      break;
    case 'mirror.link':
      what = `link to ${String(e.peer)}: ${arrow(e.from, e.to)}${e.error ? ` (${String(e.error)})` : ''}`;
      break;
    case 'mirror.consistency':
      what = e.consistent ? 'consistent' : 'NOT consistent';
      break;
    case 'mirror.rpo':
      what = `RPO ${e.met ? 'met' : 'MISSED'} (target ${String(e.targetSeconds)} s, exposure ${e.exposureSeconds === null ? '-' : `${Math.round(Number(e.exposureSeconds))} s`})`;
      break;
    case 'staging.copy':
      what = `copy ${String(e.path)} ${e.healthy ? 'healthy again' : `FAILED${e.problem ? `: ${String(e.problem)}` : ''}`}`;
      break;
    case 'staging.failed':
      what = e.failed ? 'staging area FAILED: no copy left' : 'staging area has a copy again';
      break;
    case 'operation':
      what = `${String(e.operationId)} done`;
      break;
    case 'refusal':
      what = `${String(e.operationId)} refused: ${String(e.code)}: ${String(e.message)}`;
      break;
    case 'reset':
      what = `events were missed (${String(e.reason)}): reload the state`;
      break;
    default:
      what = JSON.stringify(e);
  }
  return `${String(e.at)}  ${String(e.type).padEnd(18)} ${subject.padEnd(12)} ${what}`;
}
