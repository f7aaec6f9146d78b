// `ferry events`: follows ferryd's live events (GET /v1/events) and prints one line per
// event (--json: the event object, one JSON document per line). It reconnects with the last
// id it printed when the stream ends (ferryd restarting), so nothing is missed that ferryd
// still holds; a `reset` says some events were lost. --count N exits after N events.
import type { Command } from 'commander';
import type { IncomingMessage } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { ApiError } from './api-client.js';
import { client, jsonOpt } from './command-kit.js';
import { eventLine } from './event-text.js';

/** Reconnection attempts in a row before `ferry events` gives up. */
const reconnectsMax = 30;
const reconnectDelayMs = 2000;

export function registerEventsCommand(program: Command): void {
  program
    .command('events')
    .description('follow live events: mirror states, links, consistency, RPO, staging copies, disks, operations and refusals')
    .option('--since <id>', 'replay the events after this id first (those ferryd still holds)')
    .option('--count <n>', 'exit after this many events')
    .addOption(jsonOpt())
    .action(async (opts: { since?: string; count?: string; json?: boolean }, cmd: Command) => {
      const json = Boolean((cmd.optsWithGlobals() as { json?: boolean }).json);
      if (opts.since !== undefined && !/^\d{1,16}$/.test(opts.since)) throw new Error('--since must be an event id (an integer)');
      const countMax = opts.count === undefined ? Infinity : Number(opts.count);
      if (!(countMax >= 1) || !Number.isInteger(countMax === Infinity ? 1 : countMax)) throw new Error('--count must be a positive integer');
      const api = client(cmd);
      let last = opts.since ?? null;
      let printed = 0;
      let failures = 0;
      for (;;) {
        let res: IncomingMessage;
        try {
          res = await api.openStream('/v1/events', last === null ? {} : { 'last-event-id': last });
        } catch (err) {
          // A refusal (token, too many clients) is final; ferryd away (restarting) is retried.
          if (!(err instanceof ApiError) || err.code !== 'UNREACHABLE' || printed === 0 || ++failures > reconnectsMax) throw err;
          await sleep(reconnectDelayMs);
          continue;
        }
        failures = 0;
        const done = await readEvents(res, (id, data) => {
          last = id ?? last;
          process.stdout.write(json ? `${data}\n` : `${eventLine(JSON.parse(data) as Record<string, unknown>)}\n`);
          return ++printed >= countMax;
        });
        if (done) return;
        await sleep(reconnectDelayMs);
      }
    });
}

/** Reads one stream until it ends (false) or onEvent returns true (true: stop). */
function readEvents(res: IncomingMessage, onEvent: (id: string | null, data: string) => boolean): Promise<boolean> {
  return new Promise((resolve) => {
    let buf = '';
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      buf += chunk;
      let at: number;
      while ((at = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, at);
        buf = buf.slice(at + 2);
        const id = /^id: (.*)$/m.exec(block)?.[1] ?? null;
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (data !== undefined && onEvent(id, data)) {
          res.destroy();
          resolve(true);
          return;
        }
      }
    });
    res.on('end', () => resolve(false));
    res.on('error', () => resolve(false));
  });
}
