// The console with two real sites: pair them through the console (a token issued on site
// B's console, entered on site A's), create a remote mirror through the form, then cut the
// link in the WAN proxy between them and see, in site A's console, the link state change in
// the overview (the disk first, its problem in words) and the mirror.link event; restore it
// and see the link connected again. Then the DR operations through the consoles: a test
// failover started at site B (its figures on both sites' disk pages) and ended; a planned
// switchover from site A's console (the roles reversed on both disk pages); a second disk's
// replica promoted in B's console while A is down, A restarted: fenced, first in its overview,
// and reconnected from A's console as B's replica (behind the typed confirmation).
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

  test("a test failover started in B's console: its figures on both sites' disk pages; ended", async () => {
    await pageA.goto(a.apiUrl + '/#/disk/far');
    await waitText(pageA, 'in sync again', '[data-testid=mirror-summary]', (t) => t.includes('in-sync') && t.includes('connected to site-b'), 120_000);
    await pageB.goto(b.apiUrl + '/#/disk/far-dr');
    await waitText(pageB, 'the replica page', '#disk-title', (t) => t.includes('(replica)'));
    await waitText(pageB, 'the replica in sync', '[data-testid=mirror-summary]', (t) => t.includes('in-sync'), 60_000);
    await pageB.getByLabel('Export name').fill('far-drill');
    await pageB.getByLabel('Scratch path').fill(path.join(work, 'far.scratch'));
    await pageB.getByLabel('Scratch size').fill('16M');
    await pageB.getByRole('button', { name: 'Start test failover' }).click();
    await waitText(pageB, 'started', '[role=status]', (t) => t.includes('test failover started: export far-drill'));
    const figures = (t: string): boolean => t.includes('far-drill') && t.includes('running') && /at record \d+/.test(t) && t.includes('used of 16MiB');
    await waitText(pageB, "the test's figures at B", '[data-testid=test-failover]', figures);
    await waitText(pageA, "the test's figures at A", '[data-testid=test-failover]', figures, 60_000);
    await pageB.screenshot({ path: path.join(ROOT, 'docs', 'console', 'test-failover.png'), fullPage: true });
    // Only the mirror site runs it: A's page shows the figures, no button to start or end one.
    assert.equal(await pageA.getByRole('button', { name: 'End test failover' }).count(), 0);
    assert.equal(await pageA.getByRole('button', { name: 'Start test failover' }).count(), 0);

    await pageB.getByRole('button', { name: 'End test failover' }).click();
    await waitText(pageB, 'ended', '[role=status]', (t) => t.includes('test failover far-drill ended (test-end)'));
    await waitFor('the figures gone at B', async () => (await pageB.locator('[data-testid=test-failover]').count()) === 0, 30_000);
    await waitFor('the figures gone at A', async () => (await pageA.locator('[data-testid=test-failover]').count()) === 0, 60_000);
    await pageB.getByRole('button', { name: 'Start test failover' }).waitFor();
  });

  test("a planned switchover from A's console: force needs the typed name; the roles reverse on both pages", async () => {
    await pageA.goto(a.apiUrl + '/#/disk/far');
    await waitText(pageA, 'the primary page', '#disk-title', (t) => t.includes('(primary)'));
    await waitText(pageA, 'DR normal', '[data-testid=dr-state]', (t) => t.includes('DR normal'));
    // Force disconnects NBD clients: its confirmation stays disabled until the name is typed; Cancel does nothing.
    await pageA.getByRole('button', { name: 'Switch over --force…' }).click();
    const forceButton = pageA.getByRole('button', { name: 'Switch over, disconnecting NBD clients' });
    assert.equal(await forceButton.isDisabled(), true);
    await pageA.getByLabel('type the disk name to confirm').fill('fa');
    assert.equal(await forceButton.isDisabled(), true);
    await pageA.getByRole('button', { name: 'Cancel' }).click();
    assert.equal(await forceButton.count(), 0);

    await pageA.getByRole('button', { name: 'Switch over…' }).click();
    await pageA.getByRole('button', { name: 'Switch over', exact: true }).click();
    // The outcome stays in its card while the page's polls see the roles change.
    await waitText(pageA, 'switched over', '[aria-label=switchover]', (t) => t.includes('switched over: the primary is now site-b:far-dr'), 120_000);
    await waitText(pageA, 'the roles reversed at A', '#disk-title', (t) => t.includes('Disk far (replica)'), 120_000);
    const dr = await waitText(pageA, "A's DR state", '[data-testid=dr-state]', (t) => t.includes('DR normal') && /generation [0-9a-f]{16}/.test(t));
    const generation = /generation ([0-9a-f]{16})/.exec(dr)![1]!;
    await pageB.goto(b.apiUrl + '/#/disk/far-dr');
    await waitText(pageB, 'the roles reversed at B', '#disk-title', (t) => t.includes('Disk far-dr (primary)'), 60_000);
    await waitText(pageB, "B's DR state, the same generation", '[data-testid=dr-state]', (t) => t.includes('DR normal') && t.includes(generation));
    await pageB.goto(b.apiUrl + '/#/');
    await waitText(pageB, 'the primary at B in the overview', 'tr[data-disk=far-dr]', (t) => t.includes('primary'));
  });

  test("a fenced disk stands out: B promoted (in B's console) while A was down; A's overview lists it first, fenced", async () => {
    // A second mirrored disk (set up through the API: the console's part is what follows).
    await a.createDisk('fx', '8M');
    const created = await a.api('POST', '/v1/disks/fx/mirror', { to: 'site-b:fx-dr', staging: path.join(work, 'fx.stg'), stagingSize: '64M' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    await waitFor('fx in sync at both sites', async () => {
      const [ma, mb] = await Promise.all([a.api('GET', '/v1/disks/fx/mirror'), b.api('GET', '/v1/disks/fx-dr/mirror')]);
      return ma.body?.state === 'in-sync' && mb.body?.state === 'in-sync' && ma.body?.dr?.generation === mb.body?.dr?.generation;
    }, 60_000);

    assert.equal((await a.kill9()).signal, 'SIGKILL');
    await pageB.goto(b.apiUrl + '/#/disk/fx-dr');
    await waitText(pageB, 'the replica page', '#disk-title', (t) => t.includes('(replica)'));
    await pageB.getByRole('button', { name: 'Promote', exact: true }).click();
    await waitText(pageB, 'promoted', '[role=status]', (t) => t.includes('promoted: image'), 60_000);
    await waitText(pageB, 'the former primary named', '[data-testid=dr-state]', (t) => t.includes('promoted here from site-a:fx'));

    await a.restart();
    await logIn(pageA, a); // a new API port: a new origin
    const first = await waitText(pageA, 'the fenced disk first in the overview', 'table.disks tbody tr', (t) => t.startsWith('fx') && t.includes('fenced'), 60_000);
    assert.match(first, /DR fenced: site-b was promoted past this site/, `the problem in words: ${first}`);
    assert.equal(await pageA.locator('tr[data-disk=fx]').getAttribute('class'), 'problem');
    await pageA.goto(a.apiUrl + '/#/disk/fx');
    await waitText(pageA, 'the disk page says fenced', '[data-testid=dr-state]', (t) => t.includes('fenced') && t.includes('writes refused (FENCED)'));
    await pageA.goto(a.apiUrl + '/#/');
    await pageA.locator('tr[data-disk=fx]').waitFor();
    await pageA.screenshot({ path: path.join(ROOT, 'docs', 'console', 'fenced-overview.png') });

    // Reconnect from A's console: A becomes B's replica, only the changed regions resynced.
    // (A restarted on a new replication port: B is told it, as `ferry peer set` does.)
    const site = await a.api('GET', '/v1/site');
    assert.equal((await b.api('PATCH', '/v1/peers/site-a', { address: site.body.replication })).status, 200);
    await pageA.goto(a.apiUrl + '/#/disk/fx');
    await pageA.getByRole('button', { name: 'Reconnect…' }).click();
    const confirmButton = pageA.getByRole('button', { name: "Reconnect, discarding this site's writes" });
    assert.equal(await confirmButton.isDisabled(), true, 'behind the typed confirmation');
    await pageA.getByLabel('type the disk name to confirm').fill('fx');
    await confirmButton.click();
    // The card, not its status line alone: a failure shows its error there, and the card stays
    // while the page's polls see the roles change before the request answers.
    await waitText(pageA, 'reconnected', '[aria-label=reconnect]', (t) => t.includes('reconnected: the replica of site-b:fx-dr'), 120_000);
    await waitText(pageA, 'A holds the replica', '#disk-title', (t) => t.includes('Disk fx (replica)'), 60_000);
    await waitText(pageA, "A's DR state is normal again", '[data-testid=dr-state]', (t) => t.includes('DR normal'), 60_000);
    await waitFor('B in sync with A again', async () => (await b.api('GET', '/v1/disks/fx-dr/mirror')).body?.state === 'in-sync', 60_000);
  });
});
