// The console with two real sites: pair them through the console (a token issued on site
// B's console, entered on site A's), create a remote mirror through the form, then cut the
// link in the WAN proxy between them and see, in site A's console, the link state change in
// the overview (the disk first, its problem in words) and the mirror.link event; restore it
// and see the link connected again.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import type { Page } from 'playwright-core';
import { Cleanup, ROOT, run, waitFor, type Ferryd } from '../harness.js';
import { WanProxy } from '../../src/testing/wan-proxy.js';
import { freePort } from '../replication/helpers.js';
import { launchChromium } from './browser.js';

describe('web console, two sites', () => {
  const cleanup = new Cleanup('ferry-console2-');
  let a: Ferryd;
  let b: Ferryd;
  let proxy: WanProxy;
  let pageA: Page;
  let pageB: Page;
  let work: string;
  let closeBrowser: () => Promise<void>;

  const text = async (page: Page, selector: string): Promise<string> => (await page.locator(selector).first().textContent().catch(() => null)) ?? '';
  const waitText = async (page: Page, what: string, selector: string, pred: (t: string) => boolean, timeoutMs = 30_000): Promise<string> => {
    let t = '';
    try {
      await waitFor(`${what} (${selector})`, async () => pred((t = await text(page, selector))), timeoutMs);
    } catch (err) {
      throw new Error(`${(err as Error).message}; it shows: ${t.slice(0, 500)}`);
    }
    return t;
  };
  const logIn = async (page: Page, d: Ferryd): Promise<void> => {
    await page.goto(d.apiUrl + '/');
    await page.getByLabel('API token').fill(d.token);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Disks' }).waitFor();
  };

  before(async () => {
    const built = await run(process.execPath, [path.join(ROOT, 'scripts', 'build.js'), '--if-stale']);
    assert.equal(built.code, 0, built.stderr);
    const bPort = await freePort();
    [a, b] = await Promise.all([
      cleanup.ferryd({ dataDir: cleanup.dir('ferry-site-a-'), args: ['--site', 'site-a'] }),
      cleanup.ferryd({ dataDir: cleanup.dir('ferry-site-b-'), args: ['--site', 'site-b', '--repl', `127.0.0.1:${bPort}`] }),
    ]);
    proxy = await WanProxy.start({ targetPort: bPort, delayMs: 0, bytesPerSec: 0 });
    cleanup.defer(() => proxy.close());
    work = cleanup.dir();
    const browser = await launchChromium();
    closeBrowser = browser.close;
    pageA = await browser.context.newPage();
    pageB = await browser.context.newPage();
    await logIn(pageA, a);
    await logIn(pageB, b);
  });
  after(async () => {
    await closeBrowser?.();
    await cleanup.run();
  });

  test('pair through the consoles: a token issued on B, entered on A', async () => {
    await pageB.goto(b.apiUrl + '/#/peers');
    await pageB.getByRole('button', { name: 'Issue token' }).click();
    const token = await waitText(pageB, 'the token', '[data-testid=pairing-token]', (t) => t.includes('.'));
    await pageA.goto(a.apiUrl + '/#/peers');
    await pageA.getByLabel('Peer name').fill('site-b');
    await pageA.getByLabel(/Its replication address/).fill(`127.0.0.1:${proxy.port}`);
    await pageA.getByLabel('Token it issued').fill(token);
    await pageA.getByRole('button', { name: 'Pair' }).click();
    await waitText(pageA, 'paired', '[role=status]', (t) => t.includes('paired with peer site-b'));
    await waitText(pageA, 'the peer row with a live check', 'tr[data-peer=site-b]', (t) => t.includes('reachable'));
    // Site B knows site A too (pairing is mutual).
    await pageB.reload();
    await waitText(pageB, "site A in B's peers", 'tr[data-peer]', (t) => t.includes('site-a'));
  });

  test("a remote mirror created through the form; a cut link shows in A's overview and events, and recovers", async () => {
    await pageA.goto(a.apiUrl + '/#/');
    await pageA.getByLabel('Name').fill('far');
    await pageA.getByLabel('Size').fill('32M');
    await pageA.getByRole('button', { name: 'Create disk' }).click();
    await waitText(pageA, 'created', '[role=status]', (t) => t.includes('created virtual disk far'));
    await pageA.goto(a.apiUrl + '/#/disk/far');
    await pageA.getByLabel("a peer's disk").check();
    await pageA.getByLabel('Peer', { exact: true }).fill('site-b');
    await pageA.getByLabel('Disk on the peer').fill('far-dr');
    await pageA.getByLabel('Staging path').fill(path.join(work, 'far.stg'));
    await pageA.getByLabel('Staging size').fill('64M');
    await pageA.getByRole('button', { name: 'Create mirror' }).click();
    await waitText(pageA, 'in sync over the link', '[data-testid=mirror-summary]', (t) => t.includes('in-sync') && t.includes('connected to site-b'), 60_000);
    // B's console shows the replica.
    await pageB.goto(b.apiUrl + '/#/');
    await waitText(pageB, 'the replica at B', 'tr[data-disk=far-dr]', (t) => t.includes('replica'));

    // Cut the cable and reset the connections: no byte passes until restore().
    proxy.cut();
    proxy.resetAll();
    await pageA.goto(a.apiUrl + '/#/events');
    await waitText(pageA, 'the link event', 'ol.events', (t) => /mirror\.link\s+far\s+link to site-b: connected → (down|connecting)/.test(t), 60_000);
    await pageA.goto(a.apiUrl + '/#/');
    const row = await waitText(pageA, 'the overview shows the link', 'table.disks tbody tr', (t) => /link (down|connecting)/.test(t), 60_000);
    assert.match(row, /^far/, 'the disk with the cut link comes first');
    proxy.restore();
    await waitText(pageA, 'the link back', 'tr[data-disk=far]', (t) => t.includes('connected (site-b)') && !/link (down|connecting)/.test(t), 120_000);
    await pageA.goto(a.apiUrl + '/#/events');
    await waitText(pageA, 'the link-up event', 'ol.events', (t) => /link to site-b: (down|connecting) → connected/.test(t), 60_000);
  });
});
