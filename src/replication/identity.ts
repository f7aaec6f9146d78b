// A site's identity on the replication link: a random site id, a human name, and an
// EC P-256 key with a self-signed certificate. Peers pin the SHA-256 fingerprint of the
// certificate at pairing, so the certificate is never checked against a CA and never
// needs renewing (it is valid for a century). Everything lives in <data>/repl/ (0700,
// the key 0600), is generated once with the openssl CLI and written atomically
// (temporary file, fsync, rename), so a crash never leaves a half-written identity.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { FerryError } from '../errors.js';
import { validateName } from '../names.js';

export interface SiteIdentity {
  /** 16 lowercase hex digits, random, chosen once. */
  siteId: string;
  /** How peers name this site by default: --site NAME, else site-<first 8 hex of siteId>. */
  siteName: string;
  keyPem: string;
  certPem: string;
  /** SHA-256 of the certificate's DER encoding, lowercase hex, no colons. */
  fingerprint: string;
}

export const REPL_DIR = 'repl';
const SITE_FILE = 'site.json';
const KEY_FILE = 'key.pem';
const CERT_FILE = 'cert.pem';
const siteIdPattern = /^[0-9a-f]{16}$/;

/** SHA-256 of a certificate's DER bytes, lowercase hex. */
export function certFingerprint(der: Buffer): string {
  return crypto.createHash('sha256').update(der).digest('hex');
}

/**
 * Loads the site identity, creating what is missing. A given siteName (from --site) is
 * validated like a disk name and saved, so it survives restarts without the flag.
 */
export function loadOrCreateIdentity(dataDir: string, siteName?: string): SiteIdentity {
  if (siteName !== undefined) validateName('peer', siteName);
  const dir = path.join(dataDir, REPL_DIR);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);

  const siteFile = path.join(dir, SITE_FILE);
  let site = readSite(siteFile);
  if (!site || (siteName !== undefined && site.name !== siteName)) {
    site = { siteId: site?.siteId ?? crypto.randomBytes(8).toString('hex'), name: siteName ?? site?.name };
    writeAtomic(siteFile, JSON.stringify(site) + '\n', 0o600);
  }

  const keyFile = path.join(dir, KEY_FILE);
  const certFile = path.join(dir, CERT_FILE);
  let pair = readPair(keyFile, certFile);
  if (!pair) {
    generate(dir, site.siteId, keyFile, certFile);
    pair = readPair(keyFile, certFile);
    if (!pair) throw new FerryError('INTERNAL', `the replication key generated in ${dir} cannot be read back`);
  }
  return {
    siteId: site.siteId,
    siteName: site.name ?? `site-${site.siteId.slice(0, 8)}`,
    keyPem: pair.keyPem,
    certPem: pair.certPem,
    fingerprint: certFingerprint(new crypto.X509Certificate(pair.certPem).raw),
  };
}

function readSite(file: string): { siteId: string; name?: string } | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  const v = JSON.parse(text) as { siteId?: unknown; name?: unknown };
  if (typeof v.siteId !== 'string' || !siteIdPattern.test(v.siteId)) throw new FerryError('INTERNAL', `${file} holds no valid site id; restore it from a backup or delete the ${REPL_DIR} directory (peers must then pair again)`);
  return { siteId: v.siteId, ...(typeof v.name === 'string' ? { name: validateName('peer', v.name) } : {}) };
}

/** The key and certificate, or null when either is missing (a first start, or a crash mid-generation). */
function readPair(keyFile: string, certFile: string): { keyPem: string; certPem: string } | null {
  let keyPem: string;
  let certPem: string;
  try {
    keyPem = fs.readFileSync(keyFile, 'utf8');
    certPem = fs.readFileSync(certFile, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  const cert = new crypto.X509Certificate(certPem);
  if (!cert.checkPrivateKey(crypto.createPrivateKey(keyPem))) {
    throw new FerryError('INTERNAL', `${certFile} does not belong to ${keyFile}; restore both from a backup or delete them (peers must then pair again)`);
  }
  return { keyPem, certPem };
}

function generate(dir: string, siteId: string, keyFile: string, certFile: string): void {
  const tmpKey = path.join(dir, `${KEY_FILE}.tmp`);
  const tmpCert = path.join(dir, `${CERT_FILE}.tmp`);
  for (const f of [tmpKey, tmpCert]) fs.rmSync(f, { force: true });
  // The key file exists with mode 0600 before openssl writes a byte into it.
  fs.closeSync(fs.openSync(tmpKey, 'wx', 0o600));
  try {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-sha256', '-days', '36500', '-subj', `/CN=ferry-${siteId}`, '-keyout', tmpKey, '-out', tmpCert],
      { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 },
    );
  } catch (err) {
    for (const f of [tmpKey, tmpCert]) fs.rmSync(f, { force: true });
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new FerryError('INTERNAL', `cannot generate the replication key with openssl (is it installed?): ${stderr || (err as Error).message}`, undefined, { cause: err });
  }
  fs.chmodSync(tmpKey, 0o600);
  for (const f of [tmpKey, tmpCert]) fsyncFile(f);
  fs.renameSync(tmpKey, keyFile);
  fs.renameSync(tmpCert, certFile);
  fsyncFile(dir);
}

function writeAtomic(file: string, text: string, mode: number): void {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, text, { mode });
  fsyncFile(tmp);
  fs.renameSync(tmp, file);
  fsyncFile(path.dirname(file));
}

function fsyncFile(p: string): void {
  const fd = fs.openSync(p, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
