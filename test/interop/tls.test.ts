// NBD over TLS (STARTTLS) with libnbd and QEMU clients: a test CA made with openssl,
// a server certificate for localhost/127.0.0.1 and a client certificate. Modes: `on`
// (TLS offered), `require` (plaintext refused), and `--tls-ca` (client certificates
// required and verified).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Ferryd } from '../harness.js';
import { Cleanup, fails, ok, qemuIoArgs, qemuIoOk, T } from './clients.js';

interface Pki {
  /** Server files. */
  serverCert: string;
  serverKey: string;
  caCert: string;
  /** libnbd / QEMU credential directories: ca-cert.pem [+ client-cert.pem, client-key.pem]. */
  withClientCert: string;
  caOnly: string;
  /** A CA that did not sign the server's certificate. */
  otherCa: string;
}

async function makeCa(dir: string, name: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await ok('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', path.join(dir, 'ca-key.pem'), '-out', path.join(dir, 'ca-cert.pem'), '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

async function issue(caDir: string, out: string, cn: string, ext: string[]): Promise<void> {
  const csr = `${out}.csr`;
  const extFile = `${out}.ext`;
  await ok('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${out}-key.pem`, '-out', csr, '-subj', `/CN=${cn}`]);
  fs.writeFileSync(extFile, ['basicConstraints=CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment', ...ext].join('\n') + '\n');
  await ok('openssl', [
    'x509', '-req', '-in', csr, '-CA', path.join(caDir, 'ca-cert.pem'), '-CAkey', path.join(caDir, 'ca-key.pem'),
    '-set_serial', String(Date.now()), '-out', `${out}-cert.pem`, '-days', '2', '-extfile', extFile,
  ]);
}

async function makePki(root: string): Promise<Pki> {
  const ca = path.join(root, 'ca');
  await makeCa(ca, 'Ferry Test CA');
  await issue(ca, path.join(root, 'server'), 'localhost', ['extendedKeyUsage=serverAuth', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
  await issue(ca, path.join(root, 'client'), 'ferry-test-client', ['extendedKeyUsage=clientAuth']);
  const withClientCert = path.join(root, 'client-creds');
  fs.mkdirSync(withClientCert);
  fs.copyFileSync(path.join(ca, 'ca-cert.pem'), path.join(withClientCert, 'ca-cert.pem'));
  fs.copyFileSync(path.join(root, 'client-cert.pem'), path.join(withClientCert, 'client-cert.pem'));
  fs.copyFileSync(path.join(root, 'client-key.pem'), path.join(withClientCert, 'client-key.pem'));
  const caOnly = path.join(root, 'ca-only');
  fs.mkdirSync(caOnly);
  fs.copyFileSync(path.join(ca, 'ca-cert.pem'), path.join(caOnly, 'ca-cert.pem'));
  const otherCa = path.join(root, 'other-ca');
  await makeCa(otherCa, 'Some Other CA');
  return {
    serverCert: path.join(root, 'server-cert.pem'),
    serverKey: path.join(root, 'server-key.pem'),
    caCert: path.join(ca, 'ca-cert.pem'),
    withClientCert,
    caOnly,
    otherCa,
  };
}

describe('NBD over TLS', () => {
  const cleanup = new Cleanup();
  let pki: Pki;

  before(async () => {
    pki = await makePki(cleanup.dir('ferry-pki-'));
  }, T);
  after(() => cleanup.run(), T);

  const tlsArgs = (mode: string, extra: string[] = []): string[] => ['--tls', mode, '--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, ...extra];
  const nbds = (d: Ferryd, disk: string, creds: string): string => `nbds://${d.nbdAddress}/${disk}?tls-certificates=${creds}`;
  /** qemu-io arguments for a TLS connection with the credentials in `creds`. */
  const qemuTls = (d: Ferryd, disk: string, creds: string): { uri: string; extra: string[] } => ({
    uri: `driver=nbd,server.type=inet,server.host=${d.nbdHost},server.port=${d.nbdPort},export=${disk},tls-creds=tls0`,
    extra: ['--object', `tls-creds-x509,id=tls0,dir=${creds},endpoint=client`, '--image-opts'],
  });

  describe('--tls on', () => {
    let d: Ferryd;
    before(async () => {
      d = await cleanup.ferryd({ args: tlsArgs('on') });
      await d.createDisk('secret', '16M');
    }, T);

    it('nbdinfo connects over TLS (nbds://) and sees the disk', T, async () => {
      const j = JSON.parse((await ok('nbdinfo', ['--json', nbds(d, 'secret', pki.withClientCert)])).stdout);
      assert.equal(j.TLS, true);
      assert.equal(j.exports[0]['export-name'], 'secret');
      assert.equal(j.exports[0]['export-size'], 16 * 1024 * 1024);
      assert.match(d.stdout, /NBD listening on .* \(TLS on\)/);
    });

    it('plaintext clients are still served when TLS is only offered', T, async () => {
      const j = JSON.parse((await ok('nbdinfo', ['--json', d.uri('secret')])).stdout);
      assert.equal(j.TLS, false);
    });

    it('qemu-io writes and reads back data through TLS', T, async () => {
      const { uri, extra } = qemuTls(d, 'secret', pki.withClientCert);
      await qemuIoOk(uri, ['write -P 0x42 0 1M', 'write -P 0x43 1048577 333', 'read -P 0x42 0 1M'], extra);
      // A second TLS session, and a plaintext one, see the same bytes.
      await qemuIoOk(uri, ['read -P 0x43 1048577 333', 'read -P 0 1048910 4096'], extra);
      await qemuIoOk(d.uri('secret'), ['read -P 0x42 0 1M', 'read -P 0x43 1048577 333']);
    });

    it('nbdcopy moves data over TLS', T, async () => {
      const out = path.join(cleanup.dir(), 'copy.img');
      await ok('nbdcopy', [nbds(d, 'secret', pki.withClientCert), out]);
      const b = fs.readFileSync(out);
      assert.equal(b.length, 16 * 1024 * 1024);
      assert.ok(b.subarray(0, 1024 * 1024).every((x) => x === 0x42));
      assert.equal(b[1048577], 0x43);
    });

    it('a client that does not trust the server certificate refuses it', T, async () => {
      const r = await fails('nbdinfo', ['--json', nbds(d, 'secret', pki.otherCa)]);
      assert.match(r.stderr, /certificate|verif|TLS|handshake/i);
    });
  });

  describe('--tls require', () => {
    let d: Ferryd;
    before(async () => {
      d = await cleanup.ferryd({ args: tlsArgs('require') });
      await d.createDisk('vault', '8M');
    }, T);

    it('a plaintext client is refused (NBD_REP_ERR_TLS_REQD)', T, async () => {
      const r = await fails('nbdinfo', ['--json', d.uri('vault')]);
      assert.match(r.stderr, /opt_go|TLS|not supported/i);
      await fails('qemu-io', qemuIoArgs(d.uri('vault'), ['read 0 512']));
    });

    it('a plaintext client cannot even list the disks', T, async () => {
      const r = await fails('nbdinfo', ['--list', '--json', `nbd://${d.nbdAddress}`]);
      assert.doesNotMatch(r.stdout, /vault/);
    });

    it('nbds:// works, listing included', T, async () => {
      const j = JSON.parse((await ok('nbdinfo', ['--json', nbds(d, 'vault', pki.caOnly)])).stdout);
      assert.equal(j.TLS, true);
      assert.equal(j.exports[0]['export-size'], 8 * 1024 * 1024);
      const list = await ok('nbdinfo', ['--list', '--json', `nbds://${d.nbdAddress}?tls-certificates=${pki.caOnly}`]);
      assert.deepEqual(JSON.parse(list.stdout).exports.map((e: any) => e['export-name']), ['vault']);
    });

    it('qemu-io over TLS reads back what it wrote', T, async () => {
      const { uri, extra } = qemuTls(d, 'vault', pki.caOnly);
      await qemuIoOk(uri, ['write -P 0x77 4096 8192', 'flush'], extra);
      await qemuIoOk(uri, ['read -P 0x77 4096 8192', 'read -P 0 0 4096'], extra);
    });
  });

  describe('--tls require --tls-ca (client certificates)', () => {
    let d: Ferryd;
    before(async () => {
      d = await cleanup.ferryd({ args: tlsArgs('require', ['--tls-ca', pki.caCert]) });
      await d.createDisk('locked', '8M');
    }, T);

    it('a client presenting a certificate the CA signed is served', T, async () => {
      const j = JSON.parse((await ok('nbdinfo', ['--json', nbds(d, 'locked', pki.withClientCert)])).stdout);
      assert.equal(j.TLS, true);
      const { uri, extra } = qemuTls(d, 'locked', pki.withClientCert);
      await qemuIoOk(uri, ['write -P 0x5c 0 64k', 'read -P 0x5c 0 64k'], extra);
    });

    it('a client without a certificate is refused', T, async () => {
      const r = await fails('nbdinfo', ['--json', nbds(d, 'locked', pki.caOnly)]);
      assert.match(r.stderr, /TLS|alert|handshake|certificate/i);
      const { uri, extra } = qemuTls(d, 'locked', pki.caOnly);
      await fails('qemu-io', qemuIoArgs(uri, ['read 0 512'], extra));
    });

    it('a plaintext client is refused', T, async () => {
      await fails('nbdinfo', ['--json', d.uri('locked')]);
    });

    it('the server keeps serving good clients after refusing bad ones', T, async () => {
      const { uri, extra } = qemuTls(d, 'locked', pki.withClientCert);
      await qemuIoOk(uri, ['read -P 0x5c 0 64k'], extra);
    });
  });
});
