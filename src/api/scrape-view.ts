// What one scrape of /metrics reads from the daemon: its disks, groups, staging areas and
// mirrors' status, each built once per scrape however many series read it (metrics.ts,
// group-metrics.ts). A mirror's status is not free (a group's walks its journal's region
// ledger for the members' shares of the lag), and about twenty series read it.
//
// A list is kept until the event loop's next turn (setImmediate): prom-client calls every
// series' collect in one synchronous pass, so they all see the same lists; a collect called
// later builds them again, never reads an old one.
import type { Daemon } from '../control/daemon.js';

type MirrorStatuses = ReturnType<Daemon['mirrors']['status']>;
type DiskInfos = ReturnType<Daemon['disks']['list']>;
type GroupInfos = ReturnType<Daemon['groups']['list']>;
export type StagingInfo = ReturnType<Daemon['staging']['show']>;

export class ScrapeView {
  private readonly lists = new Map<string, unknown>();

  constructor(private readonly daemon: Daemon) {}

  mirrors(): MirrorStatuses {
    return this.once('mirrors', () => this.daemon.mirrors.status());
  }

  disks(): DiskInfos {
    return this.once('disks', () => this.daemon.disks.list());
  }

  groups(): GroupInfos {
    return this.once('groups', () => this.daemon.groups.list());
  }

  /** Every online disk's staging area, and every group's under its name (those without one, or unavailable, are left out). */
  stagings(): StagingInfo[] {
    return this.once('stagings', () =>
      [...this.disks().filter((d) => d.state === 'online').map((d) => d.name), ...this.groups().map((g) => g.name)].flatMap((name) => {
        try {
          return [this.daemon.staging.show(name)];
        } catch {
          return []; // NO_STAGING
        }
      }),
    );
  }

  private once<T>(key: string, build: () => T): T {
    if (!this.lists.has(key)) {
      if (this.lists.size === 0) setImmediate(() => this.lists.clear());
      this.lists.set(key, build());
    }
    return this.lists.get(key) as T;
  }
}
