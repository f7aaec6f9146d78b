// Consistency groups in the web console, in headless Chromium against a real ferryd: a group
// created through the form shows in the groups list with its members and staging area (a
// refused one shows its code and changes nothing); its page lists the members, each linking
// to its disk page, which names the group (and offers no mirror of its own); the group's
// mirror created from its page, its status read from the mirror route with the group's name,
// each member's file copied; a member written through NBD shows in the group's staging area;
// a member added from the console appears and is copied into the mirror; member removal and
// group deletion stay disabled until the name is typed, a refusal (a mirror) changes nothing,
// and confirmed they happen. A screenshot of the group page is written to docs/console/.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { Cleanup, ROOT, requireTool, run, waitFor, type Ferryd } from '../harness.js';
import { launchChromium } from './browser.js';

const shots = path.join(ROOT, 'docs', 'console');

describe('web console: consistency groups', () => {
  const cleanup = new Cleanup('ferry-console-groups-');
  let d: Ferryd;
  let work: string;
  let page: Page;
  let closeBrowser: () => Promise<void>;

  /** The text of the element matching `selector`, once `pred` holds for it. */
  const waitText = async (what: string, selector: string, pred: (t: string) => boolean, timeoutMs = 30_000): Promise<string> => {
    let text = '';
    try {
      await waitFor(`${what} (${selector})`, async () => pred((text = (await page.locator(selector).first().textContent().catch(() => null)) ?? '')), timeoutMs);
    } catch (err) {
      const alerts = await page.locator('[role=alert]').allTextContents();
      throw new Error(`${(err as Error).message}; it shows "${text.slice(0, 300)}"; alerts: ${alerts.join(' | ')}`);
    }
    return text;
  };
  const group = async (name: string): Promise<{ status: number; body: any }> => d.api('GET', `/v1/groups/${name}`);

  before(async () => {
    requireTool('qemu-io');
    // The console is served from the build (dist/src/console): build it if a source changed.
    const b = await run(process.execPath, [path.join(ROOT, 'scripts', 'build.js'), '--if-stale']);
    assert.equal(b.code, 0, b.stderr);
    d = await cleanup.ferryd();
    work = fs.realpathSync(cleanup.dir());
    fs.mkdirSync(shots, { recursive: true });
    await d.createDisk('ga', '16M');
    await d.createDisk('gb', '32M');
    await d.createDisk('gc', '16M');
    const b2 = await launchChromium();
    closeBrowser = b2.close;
    page = await b2.context.newPage();
    await page.goto(d.apiUrl + '/');
    await page.getByLabel('API token').fill(d.token);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Disks' }).waitFor();
  });
  after(async () => {
    await closeBrowser?.();
    await cleanup.run();
  });

  test('a group created through the form shows in the groups list with its members and staging area', async () => {
    await page.getByRole('link', { name: 'Groups' }).click();
    await page.getByRole('heading', { name: 'Consistency groups' }).waitFor();
    const staging = path.join(work, 'g1.stg');
    await page.getByLabel('Group name').fill('g1');
    await page.getByLabel('Member disks').fill('ga,gb');
    await page.getByLabel('Group staging path').fill(staging);
    await page.getByLabel('Group staging size').fill('64M');
    await page.getByRole('button', { name: 'Create group' }).click();
    await waitText('the creation message', 'form:has(#create-group-title) [role=status]', (t) => t.includes('consistency group g1 created: ga, gb share one staging area'));
    await waitText('the group in the list', 'tr[data-group=g1] [data-testid=group-members]', (t) => t === 'ga, gb');
    const row = (await page.locator('tr[data-group=g1]').textContent()) ?? '';
    assert.ok(row.includes(staging) && row.includes('64MiB') && row.includes('online') && row.includes('no mirror'), row);
    assert.deepEqual((await group('g1')).body.members.map((m: any) => m.disk), ['ga', 'gb']);

    // A refusal shows its code and changes nothing: ga is in g1 already.
    await page.getByLabel('Group name').fill('g2');
    await page.getByLabel('Member disks').fill('gc,ga');
    await page.getByLabel('Group staging path').fill(path.join(work, 'g2.stg'));
    await page.getByRole('button', { name: 'Create group' }).click();
    await waitText('the refusal', 'form:has(#create-group-title) [role=alert]', (t) => t.includes('DISK_IN_GROUP'));
    assert.equal((await group('g2')).status, 404);
    assert.equal((await d.api('GET', '/v1/disks/gc')).body.group, undefined);
    assert.equal(fs.existsSync(path.join(work, 'g2.stg')), false);
  });

  test("the group's page lists its members, each linking to its disk page, which names the group", async () => {
    await page.locator('tr[data-group=g1] a', { hasText: 'g1' }).click();
    await page.getByRole('heading', { name: /Group g1/ }).waitFor();
    await waitText('both members', '[data-testid=group-member-table] tbody', (t) => t.includes('ga') && t.includes('gb'));
    const gb = (await page.locator('tr[data-member=gb]').textContent()) ?? '';
    assert.ok(gb.includes('32MiB') && gb.includes('64MiB'), `gb: its size and its base in the group's address space: ${gb}`);
    await page.locator('tr[data-member=ga] a', { hasText: 'ga' }).click();
    await page.getByRole('heading', { name: /Disk ga/ }).waitFor();
    const member = await waitText('the membership', '[data-testid=group-membership]', (t) => t.includes('Member of consistency group g1'));
    assert.ok(member.includes('The group has no mirror'), member);
    assert.equal(await page.getByRole('button', { name: 'Create mirror' }).count(), 0, "a member's mirror is its group's: no form of its own");
    // The overview says it too.
    await page.getByRole('link', { name: 'Disks' }).click();
    await waitText('the group beside the role', 'tr[data-disk=gb]', (t) => t.includes('in group g1'));
    await page.locator('tr[data-disk=gb] a', { hasText: 'g1' }).click();
    await page.getByRole('heading', { name: /Group g1/ }).waitFor();
  });

  test("the group's mirror created from its page: its status from the mirror route with the group's name, every member's file copied", async () => {
    const mdir = path.join(work, 'mirror');
    fs.mkdirSync(mdir);
    await page.getByLabel('Mirror directory').fill(mdir);
    await page.getByRole('button', { name: 'Create group mirror' }).click();
    await waitText('the mirror in sync', '[data-testid=mirror-summary]', (t) => t.includes('in-sync') && t.includes(`local:${mdir}`) && t.includes('consistent') && !t.includes('not consistent'));
    for (const m of ['ga', 'gb']) await waitText(`${m}'s file copied`, `tr[data-member=${m}]`, (t) => t.includes(path.join(mdir, `${m}.img`)) && t.includes('copied') && !t.includes('being copied'));
    const m = await d.api('GET', '/v1/disks/g1/mirror');
    assert.equal(m.body.state, 'in-sync');
    assert.deepEqual(m.body.members.map((x: any) => [x.disk, x.synced]), [['ga', true], ['gb', true]]);
    // The member's page names the group's mirror and its file in it.
    await page.goto(d.apiUrl + '/#/disk/gb');
    await waitText("the group's mirror on the member's page", '[data-testid=group-membership]', (t) => t.includes("Mirrored by the group's mirror") && t.includes('in-sync') && t.includes(`${path.join(mdir, 'gb.img')}`) && t.includes('copied'));
    await page.getByRole('link', { name: 'Groups' }).click();
    await waitText('the mirror in the groups list', 'tr[data-group=g1]', (t) => t.includes('in-sync') && t.includes(`local:${mdir}`));
  });

  test("a member's writes through NBD go through the group's staging area, and its mirror applies them", async () => {
    await page.goto(d.apiUrl + '/#/group/g1');
    await page.getByRole('heading', { name: /Group g1/ }).waitFor();
    await waitText("the group's staging area", '[aria-label="staging area"]', (t) => t.includes(path.join(work, 'g1.stg')) && t.includes('healthy'));
    await d.api('POST', '/v1/disks/g1/mirror/pause');
    await waitText('paused', '[data-testid=mirror-summary]', (t) => t.includes('paused'));
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 4M', d.uri('gb')], { timeoutMs: 60_000 });
    assert.equal(w.code, 0, w.stderr);
    await waitText("the lag of the group's mirror", '[data-testid=mirror-summary]', (t) => /Lag[1-9]\d* records, 4(\.\d+)?MiB/.test(t));
    // Each member's share of it: all gb's.
    await waitText("gb's share of the lag", 'tr[data-member=gb] [data-lag]', (t) => /^[1-9]\d* rec, 4(\.\d+)?MiB$/.test(t.trim()));
    await waitText("ga's share of the lag", 'tr[data-member=ga] [data-lag]', (t) => t.trim() === '0 rec, 0B');
    await page.getByRole('button', { name: 'Resume' }).click();
    await waitText('the lag drained', '[data-testid=mirror-summary]', (t) => t.includes('in-sync') && t.includes('0 records, 0B'));
  });

  test('a member added from the console appears, and is copied into the mirror', async () => {
    await page.getByLabel('Disk to add').fill('gc');
    await page.getByRole('button', { name: 'Add to group' }).click();
    await waitText('the addition', 'form:has(#add-member-title) [role=status]', (t) => t.includes('gc added to group g1'));
    await waitText('gc among the members, copied', 'tr[data-member=gc]', (t) => t.includes('16MiB') && t.includes('copied') && !t.includes('being copied'), 60_000);
    assert.deepEqual((await group('g1')).body.members.map((m: any) => m.disk), ['ga', 'gb', 'gc']);
    assert.equal((await d.api('GET', '/v1/disks/gc')).body.group, 'g1');
    await page.screenshot({ path: path.join(shots, 'group-page.png'), fullPage: true });
    // A refused addition shows its code: ga is a member already.
    await page.getByLabel('Disk to add').fill('ga');
    await page.getByRole('button', { name: 'Add to group' }).click();
    await waitText('the refusal', 'form:has(#add-member-title) [role=alert]', (t) => t.includes('DISK_IN_GROUP'));
  });

  test('member removal and group deletion: disabled until the name is typed; a refusal changes nothing; confirmed, they happen', async () => {
    await page.getByRole('button', { name: 'Remove gc from the group…' }).click();
    let dialog = page.getByRole('dialog');
    let go = dialog.getByRole('button', { name: /Remove gc from group g1/ });
    assert.ok(await go.isDisabled(), 'no name typed: disabled');
    await dialog.getByLabel('type the disk name to confirm').fill('g');
    assert.ok(await go.isDisabled(), 'a wrong name: still disabled');
    await go.click({ force: true }).catch(() => undefined);
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await d.api('GET', '/v1/disks/gc')).body.group, 'g1', 'cancelled: still a member');

    await page.getByRole('button', { name: 'Remove gc from the group…' }).click();
    dialog = page.getByRole('dialog');
    await dialog.getByLabel('type the disk name to confirm').fill('gc');
    await dialog.getByRole('button', { name: /Remove gc from group g1/ }).click();
    await waitText('the removal', '[aria-label=members] [role=status]', (t) => t.includes('gc removed from group g1'));
    await waitFor('gc gone from the members', async () => (await page.locator('tr[data-member=gc]').count()) === 0);
    assert.equal((await d.api('GET', '/v1/disks/gc')).body.group, undefined);

    // Deleting a group with a mirror is refused (DISK_BUSY): nothing changes.
    await page.getByRole('button', { name: 'Delete group…' }).click();
    dialog = page.getByRole('dialog');
    go = dialog.getByRole('button', { name: 'Delete the group' });
    assert.ok(await go.isDisabled());
    await dialog.getByLabel('type the group name to confirm').fill('g1');
    await go.click();
    await waitText('the refusal', '[aria-label="delete the group"] [role=alert]', (t) => t.includes('DISK_BUSY'));
    assert.equal((await group('g1')).status, 200, 'refused: the group is still there');

    await page.getByRole('button', { name: 'Remove mirror' }).click();
    await waitText('the mirror removed', '[aria-label="mirror operations"] [role=status]', (t) => t.includes('mirror removed'));
    await page.getByLabel('Mirror directory').waitFor();
    await page.getByRole('button', { name: 'Delete group…' }).click();
    dialog = page.getByRole('dialog');
    await dialog.getByLabel('type the group name to confirm').fill('g1');
    await dialog.getByRole('button', { name: 'Delete the group' }).click();
    await page.getByRole('heading', { name: 'Consistency groups' }).waitFor();
    await waitFor('g1 gone from the list', async () => (await page.locator('tr[data-group=g1]').count()) === 0);
    assert.equal((await group('g1')).status, 404);
    assert.equal((await d.api('GET', '/v1/disks/ga')).body.group, undefined, 'its members are disks of their own');
  });
});
