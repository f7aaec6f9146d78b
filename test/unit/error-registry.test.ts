// The error contract: every code of src/errors.ts is documented in the one table of
// docs/API.md ("### Error codes") with the same HTTP status and NBD errno, and the table
// documents no code the registry lacks. Scripts depend on these codes; this test fails when
// the registry and the docs differ in either direction.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ERRORS, NbdErrno, FerryError, type ErrorCode } from '../../src/errors.js';
import { ROOT } from '../harness.js';

interface DocRow {
  http: number;
  errnoName: string;
  errno: number;
}

function documentedCodes(): Map<string, DocRow> {
  const text = fs.readFileSync(path.join(ROOT, 'docs', 'API.md'), 'utf8');
  const start = text.indexOf('### Error codes');
  assert.ok(start >= 0, 'docs/API.md has a "### Error codes" section');
  const section = text.slice(start, text.indexOf('\n## ', start) >>> 0 || undefined);
  const rows = new Map<string, DocRow>();
  for (const line of section.split('\n')) {
    const m = /^\| `([A-Z_]+)` \| (\d{3}) \| ([A-Z]+) \((\d+)\) \|/.exec(line);
    if (!m) continue;
    assert.ok(!rows.has(m[1]!), `${m[1]} is documented once`);
    rows.set(m[1]!, { http: Number(m[2]), errnoName: m[3]!, errno: Number(m[4]) });
  }
  return rows;
}

test('every registry code is documented with its HTTP status and NBD errno', () => {
  const docs = documentedCodes();
  for (const [code, spec] of Object.entries(ERRORS)) {
    const row = docs.get(code);
    assert.ok(row, `${code} is in src/errors.ts but not in the docs/API.md error table`);
    assert.equal(row.http, spec.http, `${code}: HTTP status in the docs`);
    assert.equal(row.errno, spec.nbd, `${code}: NBD errno in the docs`);
    assert.equal(NbdErrno[row.errnoName as keyof typeof NbdErrno], spec.nbd, `${code}: errno name ${row.errnoName} matches its number`);
  }
});

test('the docs document no code the registry lacks', () => {
  for (const code of documentedCodes().keys()) assert.ok(code in ERRORS, `${code} is documented in docs/API.md but not in src/errors.ts`);
});

test('a FerryError carries its registry status and errno', () => {
  for (const code of Object.keys(ERRORS) as ErrorCode[]) {
    const e = new FerryError(code);
    assert.equal(e.httpStatus, ERRORS[code].http);
    assert.equal(e.nbdErrno, ERRORS[code].nbd);
    assert.deepEqual(e.toJSON(), { code, message: ERRORS[code].summary });
  }
});

test('NBD error replies are chosen through the registry, not by errno literals', () => {
  // The data path refuses with registry codes (transmission.ts refuse()); a raw errno there
  // would be a second, undocumented mapping.
  for (const file of ['transmission.ts', 'request-header.ts']) {
    const text = fs.readFileSync(path.join(ROOT, 'src', 'nbd', file), 'utf8');
    assert.doesNotMatch(text, /NbdErrno\./, `${file} replies with registry codes only`);
  }
});
