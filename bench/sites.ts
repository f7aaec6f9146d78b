// Two ferryd sites and a remote mirror between them, through the API only: what the
// remote mirror measurements (bench/replication-rows.ts) and the `ferry-remote` subject of
// the fio rows (bench/servers.ts) share. Pairing is what `ferry peer token` (on B) and
// `ferry peer add site-b --address HOST:PORT --token T` (on A) do; a mirror of a disk at A
// is a new replica in B's pool (`mirror create DISK --to site-b:replica-N`), removed and
// purged at B afterwards. Nothing here starts a process (no runtime import of servers.ts).
import type { FerryApi } from './servers.js';
import { sleep } from './proc.js';

/** Site B's replication listener (HOST:PORT, ephemeral), as `GET /v1/site` reports it. */
export async function replicationAddress(apiB: FerryApi): Promise<string> {
  return (await apiB('GET', '/v1/site')).replication as string;
}

/** Pairs A with B at `address` (B's listener, or a proxy in front of it) as peer `site-b`, removing any earlier pairing on both sides first. */
export async function pairSites(apiA: FerryApi, apiB: FerryApi, address: string): Promise<void> {
  for (const api of [apiA, apiB]) for (const p of (await api('GET', '/v1/peers')) as Array<{ name: string }>) await api('DELETE', `/v1/peers/${p.name}`);
  const t = await apiB('POST', '/v1/peers/tokens?ttl=10m');
  await apiA('POST', '/v1/peers', { name: 'site-b', address, token: t.token });
}

/** Remote mirrors of A's disks onto new replicas at B (`replica-0`, `replica-1`…), one per disk at a time. */
export class RemoteMirrors {
  private replicas = 0;
  /** Disk at A → its replica at B. */
  private readonly mirrors = new Map<string, string>();

  constructor(
    private readonly apiA: FerryApi,
    private readonly apiB: FerryApi,
  ) {}

  has(disk: string): boolean {
    return this.mirrors.has(disk);
  }

  get disks(): string[] {
    return [...this.mirrors.keys()];
  }

  /** `mirror create DISK --to site-b:replica-N` (extra body fields: compress…); attachS is how long the call took (B creates the replica and its staging area). */
  async create(disk: string, body: Record<string, unknown> = {}): Promise<{ attachS: number; replica: string }> {
    const replica = `replica-${this.replicas++}`;
    const t = process.hrtime.bigint();
    await this.apiA('POST', `/v1/disks/${disk}/mirror`, { to: `site-b:${replica}`, ...body });
    this.mirrors.set(disk, replica);
    return { attachS: Number(process.hrtime.bigint() - t) / 1e9, replica };
  }

  /** Removes the mirror of `disk` (A drains and releases the replica) and deletes the replica at B. */
  async remove(disk: string): Promise<void> {
    const replica = this.mirrors.get(disk);
    if (!replica) return;
    this.mirrors.delete(disk);
    await this.apiA('DELETE', `/v1/disks/${disk}/mirror`);
    for (let i = 0; ; i++) {
      try {
        await this.apiB('DELETE', `/v1/disks/${replica}?purge=true`);
        return;
      } catch (err) {
        if (i >= 50) throw err;
        await sleep(200);
      }
    }
  }

  async removeAll(): Promise<void> {
    for (const d of this.disks) await this.remove(d);
  }
}

/** Waits until A's remote mirror of `disk` is in sync with nothing left to ship and the link up; returns the last status. */
export async function caughtUp(apiA: FerryApi, disk: string, timeoutMs = 120_000, pollMs = 50): Promise<any> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = await apiA('GET', `/v1/disks/${disk}/mirror`);
    if (st.state === 'in-sync' && st.consistent && st.lagRecords === 0 && st.link?.state === 'connected') return st;
    // Waited through, as the stream redials: a remote link's error (after a switchover the new
    // primary's first attach can meet the old one between its roles, switchover.ts step 5), and
    // the bitmap mode's (a run overflowed the staging area: onFull bitmap, a legitimate outcome
    // of a heavy row) while the regions resync. A local mirror's committer error stays.
    const resyncing = st.state === 'bitmap' || st.state === 'resyncing';
    if (st.syncError || (st.committerError && !resyncing && !st.link)) throw new Error(`mirror of ${disk}: ${st.syncError ?? st.committerError}`);
    if (Date.now() > deadline) throw new Error(`mirror of ${disk} not caught up after ${timeoutMs} ms: ${JSON.stringify(st)}`);
    await sleep(pollMs);
  }
}
