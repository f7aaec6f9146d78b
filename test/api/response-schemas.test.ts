// The API's responses match the schemas the routes declare (the same schemas OpenAPI
// publishes and the CLI's types are derived from, src/api/types.ts): every GET route of the
// route table, on a daemon holding a disk with a staging area and a local mirror, a
// consistency group with its local mirror (its members' Disk, its Mirror with members), a pool and
// a pairing token, and the mirror actions (verify, swap, remove). A field a handler adds or
// drops without its schema fails here.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startFerryd, tmpDir, type Ferryd } from '../harness.js';
import { routes, DiskSchema, MirrorSchema, RemovedMirrorSchema, StagingSchema, SwapSchema, VerifySchema } from '../../src/api/routes.js';
import { TokenSchema } from '../../src/api/peer-routes.js';
import { assertSchema as assertMatches } from './helpers.js';
import type { TSchema } from '@sinclair/typebox';

/** Every field of `value` is declared by `schema` (objects, arrays, allOf), recursively. */
function undeclared(schema: TSchema, value: unknown, at: string): string[] {
  const sch = schema as { type?: string; properties?: Record<string, TSchema>; items?: TSchema; allOf?: TSchema[]; anyOf?: TSchema[] };
  if (value === null || typeof value !== 'object') return [];
  if (Array.isArray(value)) return sch.items ? value.flatMap((v, i) => undeclared(sch.items!, v, `${at}/${i}`)) : [];
  const parts = sch.allOf ?? (sch.anyOf ? sch.anyOf.filter((x) => (x as { type?: string }).type === 'object') : [schema]);
  const props: Record<string, TSchema> = Object.assign({}, ...parts.map((x) => (x as { properties?: Record<string, TSchema> }).properties ?? {}));
  if (Object.keys(props).length === 0) return [];
  return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => (k in props ? undeclared(props[k]!, v, `${at}/${k}`) : [`${at}/${k}`]));
}

/** The value matches the schema and carries no field the schema does not declare. */
function assertSchema(schema: TSchema, value: unknown, what: string): void {
  assertMatches(schema, value, what);
  assert.deepEqual(undeclared(schema, value, ''), [], `${what}: fields the schema does not declare`);
}

describe('API responses match their route schemas', () => {
  let d: Ferryd;
  let work: string;

  before(async () => {
    d = await startFerryd();
    work = tmpDir('ferry-schemas-');
    await d.createDisk('a', '8M');
    const m = await d.cli(['mirror', 'create', 'a', '--to', `local:${path.join(work, 'a.mirror')}`, '--staging', path.join(work, 'a.stg'), '--staging-size', '64M', '--wait']);
    assert.equal(m.code, 0, m.stderr);
    // A consistency group with its mirror: the /v1/groups routes answer for it.
    await d.createDisk('ga', '8M');
    await d.createDisk('gb', '8M');
    const g = await d.cli(['group', 'create', 'grp', '--disks', 'ga,gb', '--staging', path.join(work, 'grp.stg'), '--staging-size', '64M']);
    assert.equal(g.code, 0, g.stderr);
    fs.mkdirSync(path.join(work, 'grp.mirror'));
    const gm = await d.cli(['mirror', 'create', '--group', 'grp', '--to', `local:${path.join(work, 'grp.mirror')}`, '--wait']);
    assert.equal(gm.code, 0, gm.stderr);
  });
  after(() => d.stop());

  test('every GET route', async () => {
    let checked = 0;
    for (const r of routes.filter((x) => x.method === 'GET')) {
      const url = r.url.replace(':name', r.url.startsWith('/v1/pools') ? 'default' : r.url.startsWith('/v1/groups') ? 'grp' : 'a');
      if (r.url.startsWith('/v1/peers/:name')) continue; // no peer here (test/replication/peers.test.ts has them)
      if (r.url.endsWith('/mirror/test')) continue; // a test failover needs a replica (test/replication/drill.test.ts checks its schemas)
      const res = await d.api('GET', url);
      assert.equal(res.status, r.status ?? 200, `${url}: ${JSON.stringify(res.body)}`);
      assertSchema(r.response, res.body, `GET ${url}`);
      checked++;
    }
    assert.ok(checked >= 10, `${checked} GET routes checked`);
    // A group's mirror and staging area, through the disk routes with the group's name; a member (group) and the mirrors list.
    for (const [url, schema] of [['/v1/disks/grp/mirror', MirrorSchema], ['/v1/disks/grp/staging', StagingSchema], ['/v1/disks/ga', DiskSchema]] as const) {
      const res = await d.api('GET', url);
      assert.equal(res.status, 200, `${url}: ${JSON.stringify(res.body)}`);
      assertSchema(schema, res.body, `GET ${url}`);
    }
    assert.equal((await d.api('GET', '/v1/disks/ga')).body.group, 'grp');
    assert.deepEqual((await d.api('GET', '/v1/disks/grp/mirror')).body.members.map((x: { disk: string }) => x.disk), ['ga', 'gb']);
  });

  test('a pairing token, verify, swap and remove', async () => {
    const token = await d.api('POST', '/v1/peers/tokens', {});
    assert.equal(token.status, 201, JSON.stringify(token.body));
    assertSchema(TokenSchema, token.body, 'POST /v1/peers/tokens');
    const verify = await d.api('POST', '/v1/disks/a/mirror/verify');
    assert.equal(verify.status, 200, JSON.stringify(verify.body));
    assertSchema(VerifySchema, verify.body, 'verify');
    const swap = await d.api('POST', '/v1/disks/a/mirror/swap');
    assert.equal(swap.status, 200, JSON.stringify(swap.body));
    assertSchema(SwapSchema, swap.body, 'swap');
    const removed = await d.api('DELETE', '/v1/disks/a/mirror');
    assert.equal(removed.status, 200, JSON.stringify(removed.body));
    assertSchema(RemovedMirrorSchema, removed.body, 'remove');
    assert.equal(removed.body.copy, 'up-to-date');
  });
});
