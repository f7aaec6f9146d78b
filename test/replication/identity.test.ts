// The site identity and the pairing token book, in process: the identity is created
// once and reloaded unchanged (a half-generated key is regenerated, --site is remembered),
// and tokens are single use, expire, are bounded in number, and bind the proof to both
// certificates.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { tmpDir } from '../harness.js';
import { loadOrCreateIdentity } from '../../src/replication/identity.js';
import { MAX_OUTSTANDING, Pairing, pairingProof, parseToken, parseTtl } from '../../src/replication/pairing.js';
import type { PeerRow } from '../../src/control/store.js';

const log = pino({ level: 'silent' });

describe('site identity', () => {
  test('created once, reloaded unchanged; --site is validated and remembered', () => {
    const dir = tmpDir('ferry-id-');
    const first = loadOrCreateIdentity(dir);
    assert.match(first.siteId, /^[0-9a-f]{16}$/);
    assert.equal(first.siteName, `site-${first.siteId.slice(0, 8)}`);
    assert.match(first.fingerprint, /^[0-9a-f]{64}$/);
    assert.deepEqual(loadOrCreateIdentity(dir), first);
    const named = loadOrCreateIdentity(dir, 'paris');
    assert.equal(named.siteName, 'paris');
    assert.equal(named.fingerprint, first.fingerprint, 'renaming keeps the key');
    assert.equal(loadOrCreateIdentity(dir).siteName, 'paris', 'the name is remembered');
    assert.throws(() => loadOrCreateIdentity(dir, '../x'), { code: 'INVALID_NAME' });
    assert.deepEqual(fs.readdirSync(path.join(dir, 'repl')).sort(), ['cert.pem', 'key.pem', 'site.json']);
  });

  test('a crash between writing the key and the certificate regenerates both, keeping the site id', () => {
    const dir = tmpDir('ferry-id-');
    const first = loadOrCreateIdentity(dir);
    fs.rmSync(path.join(dir, 'repl', 'cert.pem'));
    const again = loadOrCreateIdentity(dir);
    assert.equal(again.siteId, first.siteId);
    assert.notEqual(again.fingerprint, first.fingerprint);
    assert.equal(fs.statSync(path.join(dir, 'repl', 'key.pem')).mode & 0o777, 0o600);
  });

  test('a certificate that does not belong to the key is refused, not silently replaced', () => {
    const a = tmpDir('ferry-id-');
    const b = tmpDir('ferry-id-');
    loadOrCreateIdentity(a);
    loadOrCreateIdentity(b);
    fs.copyFileSync(path.join(b, 'repl', 'cert.pem'), path.join(a, 'repl', 'cert.pem'));
    assert.throws(() => loadOrCreateIdentity(a), /does not belong/);
  });
});

describe('pairing tokens', () => {
  const server = loadOrCreateIdentity(tmpDir('ferry-id-'));
  const client = loadOrCreateIdentity(tmpDir('ferry-id-'), 'alpha');

  function book(now: { t: number }): { pairing: Pairing; rows: PeerRow[] } {
    const rows: PeerRow[] = [];
    const dirs = {
      peer: (n: string) => rows.find((r) => r.name === n),
      peerByFingerprint: (f: string) => rows.find((r) => r.fingerprint === f),
      insertPeer: (r: PeerRow) => void rows.push(r),
    };
    return { pairing: new Pairing(server, dirs, log, () => now.t), rows };
  }
  const request = (token: string, fp = client.fingerprint): { meta: Record<string, unknown>; fingerprint: string; remote: string } => {
    const p = parseToken(token);
    return { meta: { site: client.siteId, name: client.siteName, token: p.id, proof: pairingProof(p.secret, fp, server.fingerprint) }, fingerprint: client.fingerprint, remote: 'test' };
  };

  test('single use, bound to both certificates, expiring', () => {
    const now = { t: 1_000_000 };
    const { pairing, rows } = book(now);
    const t = pairing.create(60_000).token;
    assert.ok(t.endsWith(`.${server.fingerprint.slice(0, 16)}`));
    assert.throws(() => pairing.accept(request(t, 'f'.repeat(64))), /proof does not match/);
    assert.equal(rows.length, 0);
    assert.deepEqual(pairing.accept(request(t)), { site: server.siteId, name: server.siteName });
    assert.deepEqual(rows.map((r) => [r.name, r.address, r.fingerprint]), [['alpha', null, client.fingerprint]]);
    rows.length = 0;
    assert.throws(() => pairing.accept(request(t)), /already used/);
    const e = pairing.create(1000).token;
    now.t += 1000;
    assert.throws(() => pairing.accept(request(e)), /expired/);
    assert.equal(rows.length, 0);
  });

  test('at most 16 outstanding: the oldest is revoked', () => {
    const now = { t: 1_000_000 };
    const { pairing } = book(now);
    const tokens = Array.from({ length: MAX_OUTSTANDING + 1 }, (_, i) => pairing.create(60_000 + i).token);
    assert.equal(pairing.outstanding, MAX_OUTSTANDING);
    assert.throws(() => pairing.accept(request(tokens[0]!)), /not known/);
    pairing.accept(request(tokens[MAX_OUTSTANDING]!));
  });

  test('token and lifetime syntax', () => {
    assert.throws(() => parseToken('abc'), { code: 'BAD_REQUEST' });
    assert.equal(parseToken(`${'A'.repeat(32)}.${'b'.repeat(16)}`).secret, 'a'.repeat(32));
    assert.equal(parseTtl('10m'), 600_000);
    assert.equal(parseTtl('90'), 90_000);
    assert.equal(parseTtl(5), 5000);
    assert.throws(() => parseTtl('1.5h'), { code: 'BAD_REQUEST' });
  });
});
