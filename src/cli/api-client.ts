// The CLI's client of ferryd's REST API: finds the address and token the way the
// README describes (flags, then FERRY_API / FERRY_TOKEN, then the data directory),
// and turns API error bodies back into FerryError-shaped failures.
import fs from 'node:fs';
import http from 'node:http';
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
  /** Where the token came from (an option, the environment, or the file tried), for a refusal. */
  private readonly tokenSource: string;

  constructor(opts: ClientOptions) {
    const api = (opts.api ?? process.env.FERRY_API ?? DEFAULT_API).replace(/\/+$/, '');
    // HOST:PORT is accepted as well as a URL (the form `ferry serve --api` takes).
    this.base = /^[a-z]+:\/\//i.test(api) ? api : `http://${api}`;
    const dataDir = opts.data ?? process.env.FERRY_DATA ?? DEFAULT_DATA;
    this.tokenSource = opts.token !== undefined ? '--token' : process.env.FERRY_TOKEN !== undefined ? '$FERRY_TOKEN' : path.resolve(dataDir, 'api-token');
    this.token = opts.token ?? process.env.FERRY_TOKEN ?? readToken(dataDir);
  }

  async request<T>(method: string, url: string, body?: unknown): Promise<T> {
    let res: { status: number; text: string };
    try {
      res = await send(method, new URL(this.base + url), this.token, body === undefined ? undefined : JSON.stringify(body));
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new ApiError(0, 'UNREACHABLE', `cannot reach ferryd at ${this.base} (${e.code ?? e.message}); is 'ferry serve' running? (set --api or FERRY_API)`);
    }
    const { status, text } = res;
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      parsed = text;
    }
    if (status < 200 || status > 299) {
      const e = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
      if (e?.code === 'UNAUTHORIZED') {
        const tried = this.token === undefined ? `no token: ${this.tokenSource} could not be read` : `the token from ${this.tokenSource} was refused`;
        throw new ApiError(status, e.code, `ferryd at ${this.base} refused the request (${tried}); give the data directory of that ferryd with --data or $FERRY_DATA, or its token with --token or $FERRY_TOKEN`);
      }
      throw new ApiError(status, e?.code ?? `HTTP_${status}`, e?.message ?? text);
    }
    return parsed as T;
  }

  /**
   * A streaming GET (GET /v1/events): the response once its status is 200, its body unread;
   * any other status is thrown as an ApiError like request()'s.
   */
  openStream(url: string, headers: Record<string, string>): Promise<http.IncomingMessage> {
    const u = new URL(this.base + url);
    if (u.protocol !== 'http:') return Promise.reject(new Error(`the API address must be http://HOST:PORT, got ${u.origin}`));
    return new Promise((resolve, reject) => {
      const req = http.get(u, { headers: { ...headers, ...(this.token ? { authorization: `Bearer ${this.token}` } : {}) } }, (res) => {
        if (res.statusCode === 200) return resolve(res);
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let e: { code?: string; message?: string } | undefined;
          try {
            e = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
          } catch {
            e = undefined;
          }
          reject(new ApiError(res.statusCode ?? 0, e?.code ?? `HTTP_${res.statusCode}`, e?.message ?? text));
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) =>
        reject(new ApiError(0, 'UNREACHABLE', `cannot reach ferryd at ${this.base} (${err.code ?? err.message}); is 'ferry serve' running? (set --api or FERRY_API)`)),
      );
    });
  }
}

/**
 * One HTTP request with node:http (fetch would load undici, a third of a short command's
 * run time): the status and the whole body as text.
 */
function send(method: string, url: URL, token: string | undefined, body: string | undefined): Promise<{ status: number; text: string }> {
  if (url.protocol !== 'http:') return Promise.reject(new Error(`the API address must be http://HOST:PORT, got ${url.origin}`));
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const req = http.request(url, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('socket', (socket) => socket.setNoDelay(true));
    req.on('error', reject);
    req.end(body);
  });
}

function readToken(dataDir: string): string | undefined {
  try {
    return fs.readFileSync(path.join(dataDir, 'api-token'), 'utf8').trim();
  } catch {
    return undefined;
  }
}
