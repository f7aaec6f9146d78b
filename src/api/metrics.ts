// Prometheus metrics, read from the daemon's state at scrape time (no background work):
// disks (I/O counters, clients, online), staging areas (fill, free bytes, copy health,
// records not yet applied), mirrors (state as an enum gauge, lag, sync progress, dirty bytes,
// link, RPO target and whether it is met); consistency groups (group-metrics.ts; a group's staging
// area and mirror are in the staging and mirror series under its name). Each list is built
// once per scrape (scrape-view.ts). Served at /metrics on the API (with the token) and, with `serve --metrics`, on an
// address of its own without one (metrics-server.ts) for Prometheus to scrape.
import client from 'prom-client';
import type { Daemon } from '../control/daemon.js';
import type { MirrorState } from '../mirror/mirror.js';
import { registerGroupMetrics } from './group-metrics.js';
import { ScrapeView, type StagingInfo } from './scrape-view.js';

/** Every state a mirror can be in (mirror/mirror.ts; the compiler checks none is missing), one series each in ferry_mirror_state. */
const MIRROR_STATES = Object.keys({ syncing: 1, 'in-sync': 1, paused: 1, bitmap: 1, resyncing: 1 } satisfies Record<MirrorState, 1>) as MirrorState[];

export class Metrics {
  private readonly registry = new client.Registry();

  constructor(daemon: Daemon) {
    const view = new ScrapeView(daemon);
    client.collectDefaultMetrics({ register: this.registry, prefix: 'ferry_process_' });
    type Stats = NonNullable<ReturnType<Daemon['disks']['list']>[number]['stats']>;
    const perDiskCounter = (name: string, help: string, pick: (s: Stats) => number): void => {
      new client.Counter({
        name,
        help,
        labelNames: ['disk'],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const d of view.disks()) if (d.stats) this.inc({ disk: d.name }, pick(d.stats));
        },
      });
    };
    perDiskCounter('ferry_disk_read_bytes_total', 'Bytes read by NBD clients', (s) => s.readBytes);
    perDiskCounter('ferry_disk_write_bytes_total', 'Bytes written by NBD clients', (s) => s.writeBytes);
    perDiskCounter('ferry_disk_read_ops_total', 'NBD read requests served', (s) => s.readOps);
    perDiskCounter('ferry_disk_write_ops_total', 'NBD write requests served', (s) => s.writeOps);
    perDiskCounter('ferry_disk_flush_ops_total', 'NBD flush requests served', (s) => s.flushOps);
    new client.Gauge({
      name: 'ferry_disk_clients',
      help: 'NBD clients attached to a disk',
      labelNames: ['disk'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const d of view.disks()) this.set({ disk: d.name }, d.clients);
      },
    });
    new client.Gauge({
      name: 'ferry_disk_online',
      help: '1 when the disk is served, 0 when it is unavailable',
      labelNames: ['disk'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const d of view.disks()) this.set({ disk: d.name }, d.state === 'online' ? 1 : 0);
      },
    });
    this.stagingGauges(view);
    this.mirrorGauges(view);
    registerGroupMetrics(this.registry, view);
  }

  private stagingGauges(view: ScrapeView): void {
    const gauge = (name: string, help: string, pick: (s: StagingInfo) => number): void => {
      new client.Gauge({
        name,
        help,
        labelNames: ['disk'],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const s of view.stagings()) this.set({ disk: s.disk }, pick(s));
        },
      });
    };
    gauge('ferry_staging_size_bytes', 'Size of the staging area ring (bytes records can take)', (s) => s.ringBytes);
    gauge('ferry_staging_used_bytes', 'Bytes of the staging area ring held by records some consumer still needs', (s) => s.usedBytes);
    gauge('ferry_staging_free_bytes', 'Bytes of the staging area ring free for new writes', (s) => Math.max(0, s.ringBytes - s.usedBytes));
    gauge('ferry_staging_fill_ratio', 'Fraction of the staging area ring in use (0 to 1); writes wait or a mirror falls back near 1', (s) => (s.ringBytes > 0 ? s.usedBytes / s.ringBytes : 0));
    gauge('ferry_staging_unapplied_records', 'Acknowledged writes not yet applied to the disk', (s) => s.unappliedRecords);
    gauge('ferry_staging_failed', '1 when no copy of the staging area is left (writes fail)', (s) => (s.failed ? 1 : 0));
    new client.Gauge({
      name: 'ferry_staging_copy_healthy',
      help: '1 when this copy of the staging area takes writes, 0 when it failed (run ferry staging repair)',
      labelNames: ['disk', 'copy'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of view.stagings()) for (const c of s.copies) this.set({ disk: s.disk, copy: c.path }, c.healthy ? 1 : 0);
      },
    });
  }

  private mirrorGauges(view: ScrapeView): void {
    type St = ReturnType<ScrapeView['mirrors']>[number];
    const gauge = (name: string, help: string, pick: (s: St) => number | null): void => {
      new client.Gauge({
        name,
        help,
        labelNames: ['disk', 'role', 'target'],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const s of view.mirrors()) {
            const v = pick(s);
            if (v !== null) this.set({ disk: s.disk, role: s.role, target: s.target }, v);
          }
        },
      });
    };
    new client.Gauge({
      name: 'ferry_mirror_state',
      help: 'The state of each mirror as an enum: 1 for its current state, 0 for the others',
      labelNames: ['disk', 'role', 'target', 'state'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of view.mirrors()) for (const state of MIRROR_STATES) this.set({ disk: s.disk, role: s.role, target: s.target, state }, s.state === state ? 1 : 0);
      },
    });
    gauge('ferry_mirror_dirty_bytes', 'Bytes marked dirty while the mirror fell back to its bitmap, still to resync', (s) => s.dirtyBytes);
    gauge('ferry_mirror_sync_bytes_per_second', 'Initial synchronization or resync rate', (s) => s.syncBytesPerSec);
    gauge('ferry_mirror_lag_records', 'Records written to the disk that the mirror does not hold yet', (s) => s.lagRecords);
    gauge('ferry_mirror_lag_bytes', 'Staged bytes the mirror does not hold yet', (s) => s.lagBytes);
    gauge('ferry_mirror_lag_seconds', 'Age of the oldest write the mirror does not hold yet', (s) => s.lagSeconds);
    gauge('ferry_mirror_consistent', '1 when the mirror holds an image the disk really had', (s) => (s.consistent ? 1 : 0));
    gauge('ferry_mirror_sync_progress', 'Fraction of the disk synchronized (0 to 1)', (s) => s.syncProgress);
    gauge('ferry_mirror_link_up', '1 when the replication link of a remote mirror is connected', (s) => (s.link ? (s.link.state === 'connected' ? 1 : 0) : null));
    gauge('ferry_mirror_link_bytes_per_second', 'Replication link throughput (records shipped)', (s) => s.link?.bytesPerSec ?? null);
    gauge('ferry_mirror_link_bytes', 'Bytes shipped (primary) or received (replica) on the replication link', (s) => s.link?.shippedBytes ?? null);
    gauge('ferry_mirror_rpo_target_seconds', 'The recovery point objective set on the mirror (--rpo)', (s) => s.rpo?.targetSeconds ?? null);
    gauge('ferry_mirror_rpo_met', '1 while the mirror holds an image within its RPO target, 0 while it does not', (s) => (s.rpo && s.rpo.met !== null ? (s.rpo.met ? 1 : 0) : null));
    gauge('ferry_mirror_rpo_exposure_seconds', 'Now minus the newest image the mirror holds: what a loss of the primary site now would lose', (s) => s.rpo?.exposureSeconds ?? null);
    new client.Counter({
      name: 'ferry_mirror_rpo_breaches_total',
      help: 'Times the RPO target stopped being met since ferryd started (counted at the primary site)',
      labelNames: ['disk', 'role', 'target'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of view.mirrors()) if (s.role === 'primary' && s.rpo && s.rpo.targetSeconds !== null) this.inc({ disk: s.disk, role: s.role, target: s.target }, s.rpo.breaches);
      },
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
