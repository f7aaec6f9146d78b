// Prometheus series of consistency groups (control/group-control.ts), read at scrape time
// like the rest of metrics.ts, which registers them: per group its members
// (`ferry_group_members{group}`, 0 while the group is unavailable: its members are not
// listed then), whether it is online, and per member of its mirror whether that member's
// file is copied yet (a member added later is copied alone) and its share of the mirror's lag
// (no sample while that share is unknown). The group's mirror itself is in
// the ferry_mirror_* series and its staging area in the ferry_staging_* series, both under the
// group's name as `disk` (a group's name is in the disks' namespace).
import client from 'prom-client';
import type { ScrapeView } from './scrape-view.js';

export function registerGroupMetrics(registry: client.Registry, view: ScrapeView): void {
  new client.Gauge({
    name: 'ferry_group_members',
    help: 'Disks in a consistency group (they share its staging area, so one write order)',
    labelNames: ['group'],
    registers: [registry],
    collect() {
      this.reset();
      for (const g of view.groups()) this.set({ group: g.name }, g.members.length);
    },
  });
  new client.Gauge({
    name: 'ferry_group_online',
    help: "1 when the consistency group's volume is open (its members are served), 0 when it is unavailable",
    labelNames: ['group'],
    registers: [registry],
    collect() {
      this.reset();
      for (const g of view.groups()) this.set({ group: g.name }, g.state === 'online' ? 1 : 0);
    },
  });
  new client.Gauge({
    name: 'ferry_group_mirror_member_synced',
    help: "1 when a member's file in its group's mirror is copied (part of the mirror's image of the group), 0 while it is still being copied",
    labelNames: ['group', 'disk', 'target'],
    registers: [registry],
    collect() {
      this.reset();
      // A group's mirror status carries its members (mirror-control.ts statusOf); one status per scrape (scrape-view.ts).
      for (const s of view.mirrors()) for (const m of s.members ?? []) this.set({ group: s.disk, disk: m.disk, target: m.target }, m.synced ? 1 : 0);
    },
  });
  for (const [name, help, field] of [
    ['ferry_group_mirror_member_lag_records', "A member's share of its group's mirror lag: records for this member the mirror has not applied yet", 'lagRecords'],
    ['ferry_group_mirror_member_lag_bytes', 'The staging bytes of those records', 'lagBytes'],
  ] as const) {
    new client.Gauge({
      name,
      help,
      labelNames: ['group', 'disk'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of view.mirrors()) for (const m of s.members ?? []) if (m[field] !== null) this.set({ group: s.disk, disk: m.disk }, m[field]);
      },
    });
  }
}
