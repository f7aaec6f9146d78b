// Prometheus metrics, read from the daemon's state at scrape time (no background work).
import client from 'prom-client';
import type { Daemon } from '../control/daemon.js';

export class Metrics {
  private readonly registry = new client.Registry();

  constructor(daemon: Daemon) {
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
          for (const d of daemon.disks.list()) if (d.stats) this.inc({ disk: d.name }, pick(d.stats));
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
        for (const d of daemon.disks.list()) this.set({ disk: d.name }, d.clients);
      },
    });
    new client.Gauge({
      name: 'ferry_disk_online',
      help: '1 when the disk is served, 0 when it is unavailable',
      labelNames: ['disk'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const d of daemon.disks.list()) this.set({ disk: d.name }, d.state === 'online' ? 1 : 0);
      },
    });
    this.mirrorGauges(daemon);
  }

  private mirrorGauges(daemon: Daemon): void {
    type St = ReturnType<Daemon['mirrors']['status']>[number];
    const gauge = (name: string, help: string, pick: (s: St) => number | null): void => {
      new client.Gauge({
        name,
        help,
        labelNames: ['disk', 'role', 'target'],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const s of daemon.mirrors.status()) {
            const v = pick(s);
            if (v !== null) this.set({ disk: s.disk, role: s.role, target: s.target }, v);
          }
        },
      });
    };
    gauge('ferry_mirror_lag_records', 'Records written to the disk that the mirror does not hold yet', (s) => s.lagRecords);
    gauge('ferry_mirror_lag_bytes', 'Staged bytes the mirror does not hold yet', (s) => s.lagBytes);
    gauge('ferry_mirror_lag_seconds', 'Age of the oldest write the mirror does not hold yet', (s) => s.lagSeconds);
    gauge('ferry_mirror_consistent', '1 when the mirror holds an image the disk really had', (s) => (s.consistent ? 1 : 0));
    gauge('ferry_mirror_sync_progress', 'Fraction of the disk synchronized (0 to 1)', (s) => s.syncProgress);
    gauge('ferry_mirror_link_up', '1 when the replication link of a remote mirror is connected', (s) => (s.link ? (s.link.state === 'connected' ? 1 : 0) : null));
    gauge('ferry_mirror_link_bytes_per_second', 'Replication link throughput (records shipped)', (s) => s.link?.bytesPerSec ?? null);
    gauge('ferry_mirror_link_bytes', 'Bytes shipped (primary) or received (replica) on the replication link', (s) => s.link?.shippedBytes ?? null);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
