// A consistency group mirrored to a paired site from the console, in headless Chromium against
// two real ferryd sites (a WAN proxy between them, as in two-sites.test.ts): the group's mirror
// created through the form's peer target (PEER and a name prefix) reaches in-sync, each
// member's copy is its replica disk at the peer; a member's NBD writes reach the peer; site B's
// console lists the replica group with its members and shows its mirror as the replica (promote,
// no pause); a membership change of a remotely mirrored group is refused with its code
// (NOT_SUPPORTED) and changes nothing.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { Cleanup, ROOT, requireTool, run, waitFor, type Ferryd } from '../harness.js';
import { startSites, type Sites } from '../replication/helpers.js';
import { launchChromium } from './browser.js';

describe('web console: a consistency group mirrored to another site', () => {
  const cleanup = new Cleanup('ferry-console-gsites-');
  let s: Sites;
  let pageA: Page;
  let pageB: Page;
  let closeBrowser: () => Promise<void>;

  const waitText = async (page: Page, what: string, selector: string, pred: (t: string) => boolean, timeoutMs = 60_000): Promise<string> => {
    let text = '';
    try {
      await waitFor(`${what} (${selector})`, async () => pred((text = (await page.locator(selector).first().textContent().catch(() => null)) ?? '')), timeoutMs);
    } catch (err) {
      const alerts = await page.locator('[role=alert]').allTextContents();
      throw new Error(`${(err as Error).message}; it shows "${text.slice(0, 300)}"; alerts: ${alerts.join(' | ')}`);
    }
    return text;
  };
  const login = async (page: Page, d: Ferryd): Promise<void> => {
    await page.goto(d.apiUrl + '/');
    await page.getByLabel('API token').fill(d.token);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Disks' }).waitFor();
  };

  before(async () => {
    requireTool('qemu-io');
    const b = await run(process.execPath, [path.join(ROOT, 'scripts', 'build.js'), '--if-stale']);
    assert.equal(b.code, 0, b.stderr);
    s = await startSites(cleanup);
    for (const [disk, size] of [['ra', '16M'], ['rb', '32M'], ['rc', '16M']] as const) await s.a.createDisk(disk, size);
    const work = cleanup.dir();
    const g = await s.a.api('POST', '/v1/groups', { name: 'rg', disks: ['ra', 'rb'], staging: path.join(work, 'rg.stg'), stagingSize: '128M' });
    assert.equal(g.status, 201, JSON.stringify(g.body));
    const browser = await launchChromium();
    closeBrowser = browser.close;
    pageA = await browser.context.newPage();
    pageB = await browser.context.newPage();
    await login(pageA, s.a);
    await login(pageB, s.b);
  });
  after(async () => {
    await closeBrowser?.();
    await cleanup.run();
  });

  test("the group's mirror created at a peer through the form: in sync, each member's copy its replica disk there", async () => {
    await pageA.goto(s.a.apiUrl + '/#/group/rg');
    await pageA.getByRole('heading', { name: /Group rg/ }).waitFor();
    await pageA.getByLabel('a peer site').check();
    await pageA.getByLabel('Peer', { exact: true }).fill(s.peer);
    await pageA.getByLabel('Name prefix at the peer').fill('b-');
    await pageA.getByRole('button', { name: 'Create group mirror' }).click();
    await waitText(pageA, 'the mirror in sync at the peer', '[data-testid=mirror-summary]', (t) => t.includes('in-sync') && t.includes(`${s.peer}:b-rg`) && !t.includes('not consistent'), 120_000);
    for (const m of ['ra', 'rb']) await waitText(pageA, `${m}'s replica`, `tr[data-member=${m}]`, (t) => t.includes(`${s.peer}:b-${m}`) && t.includes('copied') && !t.includes('being copied'));
    // A member's writes through NBD reach the peer: the lag drains to 0.
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 2M', s.a.uri('rb')], { timeoutMs: 60_000 });
    assert.equal(w.code, 0, w.stderr);
    await waitFor('the write applied at the peer', async () => {
      const m = await s.a.api('GET', '/v1/disks/rg/mirror');
      return m.body.appliedSeq > 0 && m.body.lagRecords === 0;
    }, 60_000);
    await waitText(pageA, 'no lag', '[data-testid=mirror-summary]', (t) => t.includes('0 records, 0B'));
  });

  test("site B's console: the replica group, its members, its mirror as the replica", async () => {
    await pageB.getByRole('link', { name: 'Groups' }).click();
    await waitText(pageB, 'the replica group in the list', 'tr[data-group=b-rg]', (t) => t.includes('b-ra, b-rb'));
    await pageB.locator('tr[data-group=b-rg] a', { hasText: 'b-rg' }).click();
    await pageB.getByRole('heading', { name: /Group b-rg/ }).waitFor();
    await waitText(pageB, 'its members', '[data-testid=group-member-table] tbody', (t) => t.includes('b-ra') && t.includes('b-rb'));
    await waitText(pageB, 'the mirror of the group, seen from the replica', '[data-testid=mirror-summary]', (t) => t.includes('in-sync'));
    await pageB.getByRole('button', { name: 'Promote', exact: true }).waitFor();
    assert.equal(await pageB.getByRole('button', { name: 'Pause', exact: true }).count(), 0, 'the replica is managed at the primary site');
    await pageB.locator('tr[data-member=b-ra] a', { hasText: 'b-ra' }).click();
    await waitText(pageB, "the member's group", '[data-testid=group-membership]', (t) => t.includes('Member of consistency group b-rg'));
  });

  test('a membership change of a group mirrored to a peer is refused with its code and changes nothing', async () => {
    await pageA.getByLabel('Disk to add').fill('rc');
    await pageA.getByRole('button', { name: 'Add to group' }).click();
    await waitText(pageA, 'the refusal', 'form:has(#add-member-title) [role=alert]', (t) => t.includes('NOT_SUPPORTED'));
    assert.deepEqual((await s.a.api('GET', '/v1/groups/rg')).body.members.map((m: any) => m.disk), ['ra', 'rb']);
    assert.equal((await s.a.api('GET', '/v1/disks/rc')).body.group, undefined);
  });
});
