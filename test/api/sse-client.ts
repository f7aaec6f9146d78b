// A server-sent events client for the tests of GET /v1/events: a real HTTP connection
// (node:http), the text/event-stream parsed as it arrives (id, event, data; comment lines
// counted), and waits through the harness's waitFor.
import http from 'node:http';
import { waitFor } from '../harness.js';

export interface SseEvent {
  id: string | null;
  event: string;
  data: any;
}

export class SseClient {
  readonly events: SseEvent[] = [];
  comments: string[] = [];
  status = 0;
  body = '';
  ended = false;
  private req!: http.ClientRequest;
  private buf = '';

  /** Connects and resolves once the response headers arrived (any status). */
  static async open(apiUrl: string, token: string | null, headers: Record<string, string> = {}): Promise<SseClient> {
    const c = new SseClient();
    await new Promise<void>((resolve, reject) => {
      const h: Record<string, string> = { accept: 'text/event-stream', ...headers };
      if (token !== null) h.authorization = `Bearer ${token}`;
      c.req = http.get(`${apiUrl}/v1/events`, { headers: h, agent: false }, (res) => {
        c.status = res.statusCode ?? 0;
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => c.feed(chunk));
        res.on('end', () => (c.ended = true));
        res.on('close', () => (c.ended = true));
        res.on('error', () => (c.ended = true)); // closed by the test or by ferryd
        resolve();
      });
      c.req.on('error', (e) => {
        c.ended = true;
        reject(e);
      });
    });
    return c;
  }

  private feed(chunk: string): void {
    this.body += this.status === 200 ? '' : chunk;
    if (this.status !== 200) return;
    this.buf += chunk;
    let at: number;
    while ((at = this.buf.indexOf('\n\n')) >= 0) {
      const block = this.buf.slice(0, at);
      this.buf = this.buf.slice(at + 2);
      let id: string | null = null;
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) this.comments.push(line.slice(1).trim());
        else if (line.startsWith('id: ')) id = line.slice(4);
        else if (line.startsWith('event: ')) event = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      if (data.length) this.events.push({ id, event, data: JSON.parse(data.join('\n')) });
    }
  }

  /** Waits for an event matching `pred` (among all received so far) and returns it. */
  async next(what: string, pred: (e: SseEvent) => boolean, timeoutMs = 30_000): Promise<SseEvent> {
    let found: SseEvent | undefined;
    await waitFor(`event: ${what} (got ${this.events.map((e) => e.event).join(', ')})`, () => (found = this.events.find(pred)) !== undefined, timeoutMs);
    return found!;
  }

  close(): void {
    this.req.destroy();
  }
}
