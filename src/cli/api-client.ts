// The CLI's client of ferryd's REST API: finds the address and token the way the
// README describes (flags, then FERRY_API / FERRY_TOKEN, then the data directory),
// and turns API error bodies back into FerryError-shaped failures.
import fs from 'node:fs';
import path from 'node:path';

export const DEFAULT_API = 'http://127.0.0.1:7400';
export const DEFAULT_DATA = './var/ferry';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface ClientOptions {
  api?: string;
  token?: string;
  data?: string;
}

export class ApiClient {
  readonly base: string;
  private readonly token: string | undefined;

  constructor(opts: ClientOptions) {
    this.base = (opts.api ?? process.env.FERRY_API ?? DEFAULT_API).replace(/\/+$/, '');
    this.token = opts.token ?? process.env.FERRY_TOKEN ?? readToken(opts.data ?? process.env.FERRY_DATA ?? DEFAULT_DATA);
  }

  async request<T>(method: string, url: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(this.base + url, {
        method,
        headers: {
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
          ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      const c = (err as { cause?: { code?: string; message?: string } }).cause;
      const cause = c?.code ?? c?.message ?? String(err);
      throw new ApiError(0, 'UNREACHABLE', `cannot reach ferryd at ${this.base} (${cause}); is 'ferry serve' running? (set --api or FERRY_API)`);
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = text;
    }
    if (!res.ok) {
      const e = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
      throw new ApiError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? text);
    }
    return parsed as T;
  }
}

function readToken(dataDir: string): string | undefined {
  try {
    return fs.readFileSync(path.join(dataDir, 'api-token'), 'utf8').trim();
  } catch {
    return undefined;
  }
}
