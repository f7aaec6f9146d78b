// Follows GET /v1/events with fetch (EventSource cannot send the bearer token): parses the
// text/event-stream, reconnects after 2 s with Last-Event-ID, and reports a `reset` (events
// were missed: the caller reloads). At most `keep` events are kept for the feed.
import { token } from './api.js';

export interface ConsoleEvent {
  id: number;
  type: string;
  at: string;
  disk?: string;
  peer?: string;
  [k: string]: unknown;
}

export function followEvents(onEvent: (e: ConsoleEvent) => void, onState: (connected: boolean, error: string | null) => void): () => void {
  let stopped = false;
  let lastId: string | null = null;
  let controller: AbortController | null = null;
  const run = async (): Promise<void> => {
    while (!stopped) {
      controller = new AbortController();
      try {
        const res = await fetch('/v1/events', {
          headers: { authorization: `Bearer ${token() ?? ''}`, ...(lastId ? { 'last-event-id': lastId } : {}) },
          signal: controller.signal,
        });
        if (!res.ok || !res.body) {
          const body = (await res.json().catch(() => null)) as { error?: { code: string; message: string } } | null;
          onState(false, body?.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${res.status}`);
        } else {
          onState(true, null);
          const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
          let buf = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value;
            let at: number;
            while ((at = buf.indexOf('\n\n')) >= 0) {
              const block = buf.slice(0, at);
              buf = buf.slice(at + 2);
              const id = /^id: (.*)$/m.exec(block)?.[1];
              const data = /^data: (.*)$/m.exec(block)?.[1];
              if (id) lastId = id;
              if (data) onEvent(JSON.parse(data) as ConsoleEvent);
            }
          }
          onState(false, 'the event stream ended');
        }
      } catch (err) {
        if (stopped) return;
        onState(false, String(err));
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  void run();
  return () => {
    stopped = true;
    controller?.abort();
  };
}
