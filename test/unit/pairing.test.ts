// Pairing tokens at the site that issued them (src/replication/pairing.ts), with the real
// metadata store: a token pairs one site once; the same site asking again with the same
// proof (its answer was lost on the way) is answered again without a second peer; anyone
// else with a used token, a wrong proof, or a retry after the peer was removed is refused.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { MetadataStore } from '../../src/control/store.js';
import { Pairing, pairingProof, parseToken } from '../../src/replication/pairing.js';
import type { SiteIdentity } from '../../src/replication/identity.js';
import { FerryError } from '../../src/errors.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-pairing-'));
const store = new MetadataStore(path.join(dir, 'ferry.db'));
after(() => {
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const fp = (): string => crypto.randomBytes(32).toString('hex');
const siteB: SiteIdentity = { siteId: 'b'.repeat(16), siteName: 'bravo', keyPem: '', certPem: '', fingerprint: fp() };
const pairing = new Pairing(siteB, store, pino({ level: 'silent' }));

function request(token: string, client: { fingerprint: string; site: string; name: string }, proofFor = client.fingerprint) {
  const t = parseToken(token);
  const proof = pairingProof(t.secret, proofFor, siteB.fingerprint);
  return { meta: { site: client.site, name: client.name, token: t.id, proof }, fingerprint: client.fingerprint, remote: '127.0.0.1:1' };
}

function refused(fn: () => unknown, code: string, message: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof FerryError && err.code === code && message.test(err.message));
}

test('a retry by the site that used the token is answered again; one peer is recorded', () => {
  const alpha = { fingerprint: fp(), site: 'a'.repeat(16), name: 'alpha' };
  const { token } = pairing.create();
  assert.deepEqual(pairing.accept(request(token, alpha)), { site: siteB.siteId, name: 'bravo' });
  assert.deepEqual(pairing.accept(request(token, alpha)), { site: siteB.siteId, name: 'bravo' });
  assert.equal(store.peerByFingerprint(alpha.fingerprint)?.name, 'alpha');
  assert.equal(store.peers().filter((p) => p.fingerprint === alpha.fingerprint).length, 1);
});

test('a used token is refused to another site, to a wrong proof and to another name', () => {
  const charlie = { fingerprint: fp(), site: 'c'.repeat(16), name: 'charlie' };
  const { token } = pairing.create();
  pairing.accept(request(token, charlie));
  const peersBefore = store.peers().length;
  const other = { fingerprint: fp(), site: 'd'.repeat(16), name: 'delta' };
  refused(() => pairing.accept(request(token, other)), 'PEER_AUTH_FAILED', /already used/);
  refused(() => pairing.accept(request(token, charlie, fp())), 'PEER_AUTH_FAILED', /already used/);
  refused(() => pairing.accept(request(token, { ...charlie, name: 'charlie2' })), 'PEER_AUTH_FAILED', /already used/);
  refused(() => pairing.accept(request(token, { ...charlie, site: 'e'.repeat(16) })), 'PEER_AUTH_FAILED', /already used/);
  assert.equal(store.peers().length, peersBefore, 'nothing recorded');
});

test('a retry after the peer was removed here is refused', () => {
  const echo = { fingerprint: fp(), site: 'e'.repeat(16), name: 'echo' };
  const { token } = pairing.create();
  pairing.accept(request(token, echo));
  store.deletePeer('echo');
  refused(() => pairing.accept(request(token, echo)), 'PEER_AUTH_FAILED', /already used/);
  assert.equal(store.peerByFingerprint(echo.fingerprint), undefined);
});

test('a first use with a wrong proof is refused and leaves the token usable', () => {
  const fox = { fingerprint: fp(), site: 'f'.repeat(16), name: 'foxtrot' };
  const { token } = pairing.create();
  refused(() => pairing.accept(request(token, fox, fp())), 'PEER_AUTH_FAILED', /proof does not match/);
  assert.equal(store.peerByFingerprint(fox.fingerprint), undefined);
  assert.deepEqual(pairing.accept(request(token, fox)), { site: siteB.siteId, name: 'bravo' });
});
