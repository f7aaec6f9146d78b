// The console's client of ferryd's REST API (docs/API.md): the same routes and bearer token
// as the CLI. The token lives in sessionStorage (this tab, until logout or the tab closes),
// never in a URL. A refusal is thrown as an ApiFailure with the registry code and message.
export const tokenKey = 'ferry-token';

export class ApiFailure extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function token(): string | null {
  return sessionStorage.getItem(tokenKey);
}

export function login(t: string): void {
  sessionStorage.setItem(tokenKey, t.trim());
}

export function logout(): void {
  sessionStorage.removeItem(tokenKey);
}

/** One API call; the body of a 2xx answer, or an ApiFailure. */
export async function api<T>(method: string, url: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${token() ?? ''}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiFailure(0, 'UNREACHABLE', `cannot reach ferryd (${String(err)})`);
  }
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    // not JSON
  }
  if (!res.ok) {
    const e = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new ApiFailure(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? text);
  }
  return parsed as T;
}

export const enc = encodeURIComponent;
