// Errors raised before a route runs: by fastify (a path parameter over its length bound, a
// bad percent-encoding) or by Node's HTTP parser (a request line over 16 KiB, bytes that
// are not HTTP). Sent as raw bytes over a socket (an HTTP client would normalize or refuse
// such URLs itself), each is answered in Ferry's format {"error":{"code","message"}} with a
// registry code and its status, changes nothing, and the API keeps answering afterwards.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startFerryd, type Ferryd } from '../harness.js';
import { assertError, assertUnchanged, cleanup, rawApi, snapshot } from './helpers.js';

interface RawReply {
  status: number;
  headers: string;
  body: any;
}

/** Sends `request` as is and reads until the server closes (or the reply's Content-Length is complete). */
function rawHttp(d: Ferryd, request: string): Promise<RawReply> {
  const { hostname, port } = new URL(d.apiUrl);
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port), hostname);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => sock.destroy(new Error(`no complete reply to ${JSON.stringify(request.slice(0, 80))}`)), 15_000);
    const finish = (): boolean => {
      const text = buf.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return false;
      const head = text.slice(0, end);
      const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      const body = buf.subarray(end + 4);
      if (!length || body.length < Number(length[1])) return false;
      clearTimeout(timer);
      sock.destroy();
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1]);
      let parsed: unknown = body.toString('utf8');
      try {
        parsed = JSON.parse(parsed as string);
      } catch {
        // not JSON: the assertion shows it
      }
      resolve({ status, headers: head, body: parsed });
      return true;
    };
    sock.on('data', (b: Buffer) => {
      buf = Buffer.concat([buf, b]);
      finish();
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      if (!finish()) reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      if (!finish()) reject(new Error(`connection closed without a complete reply: ${JSON.stringify(buf.toString('latin1'))}`));
    });
    sock.write(request);
  });
}

describe('framework errors answer in Ferry’s error format', () => {
  let d: Ferryd;

  before(async () => {
    d = await startFerryd();
    await d.createDisk('d1', '1M');
  });
  after(async () => {
    await cleanup(d);
  });

  function get(url: string, auth = true): string {
    return `GET ${url} HTTP/1.1\r\nHost: localhost\r\n${auth ? `Authorization: Bearer ${d.token}\r\n` : ''}Connection: close\r\n\r\n`;
  }

  async function refused(request: string, status: number, code: string, what: string): Promise<void> {
    const before = await snapshot(d);
    const r = await rawHttp(d, request);
    assertError(r, status, code, what);
    assert.match(r.headers, /\r\ncontent-type: application\/json/i, `${what}: ${r.headers}`);
    await assertUnchanged(d, before, what);
    // The API still answers.
    assert.equal((await rawApi(d, 'GET', '/v1/disks/d1')).status, 200, `${what}: the API stopped answering`);
  }

  test('a path parameter longer than any name is 414 URL_TOO_LONG, with or without a token', async () => {
    const long = 'a'.repeat(101);
    await refused(get(`/v1/disks/${long}`), 414, 'URL_TOO_LONG', 'GET a 101-character disk name');
    await refused(get(`/v1/disks/${long}`, false), 414, 'URL_TOO_LONG', 'the same without a token');
    await refused(`DELETE /v1/disks/${'b'.repeat(5000)}?purge=true HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${d.token}\r\nConnection: close\r\n\r\n`, 414, 'URL_TOO_LONG', 'DELETE a 5000-character disk name');
    // 100 characters are still a (bad) name: the route answers.
    assertError(await rawHttp(d, get(`/v1/disks/${'c'.repeat(100)}`)), 400, 'INVALID_NAME', '100 characters');
  });

  test('a bad percent-encoding in the URL path is 400 BAD_REQUEST', async () => {
    for (const url of ['/v1/disks/%zz', '/v1/disks/%E0%A4%A', '/v1/disks/d1%', '/v1/disks/%C0%80/mirror', '/v1/pools/%FF']) {
      await refused(get(url), 400, 'BAD_REQUEST', `GET ${url}`);
    }
    await refused(get('/v1/disks/%zz', false), 400, 'BAD_REQUEST', 'without a token');
  });

  test('a request line over 16 KiB is 431 HEADERS_TOO_LARGE', async () => {
    await refused(get(`/v1/disks?x=${'y'.repeat(20_000)}`), 431, 'HEADERS_TOO_LARGE', 'a 20 KB query string');
    await refused(`GET /v1/disks HTTP/1.1\r\nHost: localhost\r\nX-Pad: ${'z'.repeat(20_000)}\r\n\r\n`, 431, 'HEADERS_TOO_LARGE', 'a 20 KB header');
  });

  test('bytes that are not HTTP are 400 BAD_REQUEST', async () => {
    await refused('HELLO FERRY\r\n\r\n', 400, 'BAD_REQUEST', 'not an HTTP request line');
    await refused('GET /v1/disks HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n', 400, 'BAD_REQUEST', 'a negative Content-Length');
    await refused('GET /v1/disks HTTP/1.1\r\nBad Header\r\n\r\n', 400, 'BAD_REQUEST', 'a header without a colon');
  });
});
