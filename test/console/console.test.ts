// The web console in headless Chromium against a real ferryd: log in; create a disk and a
// local mirror through the forms and see the mirror reach in-sync; pause it, write through
// NBD (qemu-io) and see the write and lag charts move, then resume; a refused request shows
// its registry code; a destructive action without the typed confirmation does nothing; swap
// and see the primary and mirror exchange; 200 disks render (time measured); the page at a
// narrow width; logout. Screenshots of the overview and of a disk page under load are written
// to docs/console/ (docs/console.md shows them).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { Cleanup, ROOT, requireTool, run, waitFor, type Ferryd } from '../harness.js';
import { launchChromium } from './browser.js';

const shots = path.join(ROOT, 'docs', 'console');

describe('web console', () => {
  const cleanup = new Cleanup('ferry-console-');
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

  before(async () => {
    requireTool('qemu-io');
    // The console is served from the build (dist/src/console): build it if a source changed.
    const b = await run(process.execPath, [path.join(ROOT, 'scripts', 'build.js'), '--if-stale']);
    assert.equal(b.code, 0, b.stderr);
    d = await cleanup.ferryd();
    work = cleanup.dir();
    fs.mkdirSync(shots, { recursive: true });
    const b2 = await launchChromium();
    closeBrowser = b2.close;
    page = await b2.context.newPage();
  });
  after(async () => {
    await closeBrowser?.();
    await cleanup.run();
  });

  test('log in with the token (kept in sessionStorage, never in the URL)', async () => {
    // The page and its files need no token and may load nothing from elsewhere.
    for (const url of ['/', '/console/console.js', '/console/console.css']) {
      const r = await fetch(d.apiUrl + url);
      assert.equal(r.status, 200, url);
      assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'self'/, url);
      await r.arrayBuffer();
    }
    await page.goto(d.apiUrl + '/');
    await page.getByLabel('API token').fill('wrong-token');
    await page.getByRole('button', { name: 'Log in' }).click();
    await waitText('a wrong token is refused with its code', '[role=alert]', (t) => t.includes('UNAUTHORIZED'));
    await page.getByLabel('API token').fill(d.token);
    // Keyboard: Enter in the field submits the form.
    await page.getByLabel('API token').press('Enter');
    await page.getByRole('heading', { name: 'Disks' }).waitFor();
    assert.ok(!page.url().includes(d.token));
    assert.equal(await page.evaluate(() => sessionStorage.getItem('ferry-token')), d.token);
  });

  test('create a disk and a local mirror through the forms; the mirror reaches in-sync', async () => {
    await page.getByLabel('Name').fill('web');
    await page.getByLabel('Size').fill('64M');
    await page.getByRole('button', { name: 'Create disk' }).click();
    await waitText('the creation message', '[role=status]', (t) => t.includes('created virtual disk web (64MiB)'));
    await page.locator('tr[data-disk=web] a').click();
    await page.getByRole('heading', { name: /Disk web/ }).waitFor();
    await page.getByLabel('Target path').fill(path.join(work, 'web.mirror'));
    await page.getByLabel('Staging path').fill(path.join(work, 'web.stg'));
    await page.getByLabel('Staging size').fill('64M');
    await page.getByLabel('RPO target').fill('30s');
    await page.getByRole('button', { name: 'Create mirror' }).click();
    await waitText('the mirror in sync', '[data-testid=mirror-summary]', (t) => t.includes('in-sync') && t.includes('consistent') && !t.includes('not consistent'));
    const m = await d.api('GET', '/v1/disks/web/mirror');
    assert.equal(m.body.state, 'in-sync');
    assert.equal(m.body.policy.rpoMs, 30_000);
    // The event feed of the disk shows the creation, pushed from GET /v1/events.
    await waitText('the creation event', 'ol.events', (t) => t.includes('createMirror done'));
  });

  test('a paused mirror: writes through NBD move the write and lag charts; resume drains the lag', async () => {
    await page.getByRole('button', { name: 'Pause', exact: true }).click();
    await waitText('paused', '[data-testid=mirror-summary]', (t) => t.includes('paused'));
    const lastOf = async (id: string): Promise<Array<number | null>> => JSON.parse((await page.locator(`[data-testid=${id}]`).getAttribute('data-last')) ?? '[]') as Array<number | null>;
    // A client writes 16 MiB, 1 MiB at a time, while the charts are watched.
    for (let i = 0; i < 16; i++) {
      const w = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x${(i + 1).toString(16)} ${i}M 1M`, d.uri('web')], { timeoutMs: 60_000 });
      assert.equal(w.code, 0, w.stderr);
    }
    await waitFor('the lag chart shows the bytes written', async () => ((await lastOf('chart-lag'))[0] ?? 0) >= 16 << 20);
    // The write chart's series holds the throughput of the seconds the client wrote in.
    const writeMax = await page.evaluate(() => Number(document.querySelector('[data-testid=chart-write]')?.getAttribute('data-max') ?? 0));
    assert.ok(writeMax > 0, 'the write chart shows the writes');
    await page.screenshot({ path: path.join(shots, 'disk-page.png'), fullPage: true });
    const lagText = await page.locator('[data-testid=chart-lag]').getAttribute('aria-label');
    assert.match(lagText ?? '', /lag bytes 16(\.\d)?MiB/);
    await page.getByRole('button', { name: 'Resume' }).click();
    await waitFor('the lag drained', async () => (await lastOf('chart-lag'))[0] === 0);
    await waitText('in sync again', '[data-testid=mirror-summary]', (t) => t.includes('in-sync'));
  });

  test('a refused request shows its registry code and message', async () => {
    await page.goto(d.apiUrl + '/#/');
    await page.getByLabel('Name').fill('web');
    await page.getByLabel('Size').fill('1M');
    await page.getByRole('button', { name: 'Create disk' }).click();
    const t = await waitText('the refusal', '[role=alert]', (x) => x.includes('DISK_EXISTS'));
    assert.match(t, /DISK_EXISTS: a disk named 'web' already exists/);
  });

  test('a destructive action without the typed confirmation does nothing', async () => {
    await page.goto(d.apiUrl + '/#/disk/web');
    await page.getByRole('button', { name: 'Remove --force…' }).click();
    const confirm = page.getByRole('dialog');
    const go = confirm.getByRole('button', { name: /Remove the mirror/ });
    assert.ok(await go.isDisabled(), 'no name typed: the action is disabled');
    await confirm.getByLabel('type the disk name to confirm').fill('we');
    assert.ok(await go.isDisabled(), 'a wrong name: still disabled');
    await go.click({ force: true }).catch(() => undefined);
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    await page.getByRole('button', { name: 'Remove and purge…' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await d.api('GET', '/v1/disks/web/mirror')).status, 200, 'the mirror is still there');
    assert.equal((await d.api('GET', '/v1/disks/web')).status, 200, 'the disk is still there');
  });

  test('swap: the primary and the mirror exchange', async () => {
    const before = (await d.api('GET', '/v1/disks/web')).body.path as string;
    await page.getByRole('button', { name: 'Swap' }).click();
    await waitText('the swap report', '[role=status]', (t) => t.includes('swapped: primary'));
    await waitText('the mirror target is the old primary', '[data-testid=mirror-summary]', (t) => t.includes(before));
    const after = (await d.api('GET', '/v1/disks/web')).body.path as string;
    assert.equal(after, path.join(work, 'web.mirror'));
  });

  test('mirror set through the form: the RPO target changes at once', async () => {
    const form = page.locator('form', { has: page.getByRole('heading', { name: /Change policies/ }) });
    await form.getByLabel('RPO target').fill('2m');
    await form.getByLabel('Max lag').fill('64M');
    await form.getByRole('button', { name: 'Apply' }).click();
    await waitText('applied', 'form:has(#set-mirror-title) [role=status]', (t) => t.includes('policies changed'));
    const m = await d.api('GET', '/v1/disks/web/mirror');
    assert.equal(m.body.policy.rpoMs, 120_000);
    assert.equal(m.body.policy.maxLagBytes, 64 << 20);
    await form.getByLabel('Max lag').fill('lots');
    await form.getByLabel('RPO target').fill('');
    await form.getByRole('button', { name: 'Apply' }).click();
    await waitText('the refusal', 'form:has(#set-mirror-title) [role=alert]', (t) => /^[A-Z_]+: /.test(t));
    assert.equal((await d.api('GET', '/v1/disks/web/mirror')).body.policy.maxLagBytes, 64 << 20, 'a refused change changes nothing');
    await form.getByLabel('Max lag').fill('none');
    await form.getByRole('button', { name: 'Apply' }).click();
    await waitFor('max lag cleared', async () => (await d.api('GET', '/v1/disks/web/mirror')).body.policy.maxLagBytes === null);
  });

  test('200 disks: the overview renders them, worst first, and its render time is measured', async () => {
    for (let i = 0; i < 200; i += 20) {
      await Promise.all(Array.from({ length: 20 }, (_, j) => d.createDisk(`bulk${String(i + j).padStart(3, '0')}`, '1M')));
    }
    // One disk with a problem: its mirror paused. It comes first.
    assert.equal((await d.api('POST', '/v1/disks/web/mirror/pause')).status, 200);
    await page.goto(d.apiUrl + '/#/');
    await waitFor('201 rows', async () => (await page.locator('table.disks tbody tr').count()) === 201);
    // A poll begun before the pause may render once more without it: the next one puts it first.
    await waitFor('the paused mirror first', async () => (await page.locator('table.disks tbody tr').first().getAttribute('data-disk')) === 'web');
    // Ten more polls (one a second) re-render the 201 rows; the slowest render is kept.
    const polls = async (): Promise<number> => Number(await page.evaluate(() => document.body.dataset.polls));
    const from = await polls();
    await waitFor('ten more polls', async () => (await polls()) >= from + 10);
    const renderMs = Number(await page.evaluate(() => document.body.dataset.renderMs));
    const renderMsMax = Number(await page.evaluate(() => document.body.dataset.renderMsMax));
    console.log(`overview render with 201 disks: last ${renderMs} ms, slowest ${renderMsMax} ms (first render included)`);
    fs.writeFileSync(path.join(shots, 'render-200.txt'), `overview with 201 disks, headless Chromium: last render ${renderMs.toFixed(1)} ms, slowest ${renderMsMax.toFixed(1)} ms\n`);
    await page.screenshot({ path: path.join(shots, 'overview.png') });
    assert.equal((await d.api('POST', '/v1/disks/web/mirror/resume')).status, 200);
  });

  test('narrow window: no page-wide horizontal scrolling (the table scrolls in its box)', async () => {
    await page.setViewportSize({ width: 420, height: 800 });
    await page.goto(d.apiUrl + '/#/disk/web');
    await page.getByRole('heading', { name: /Disk web/ }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than the window`);
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  test('logout forgets the token', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByLabel('API token').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('ferry-token')), null);
  });
});
