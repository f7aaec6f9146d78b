// The markers of running test failovers (`<data>/drills/DISK.json`, written and removed by
// drill-control.ts): read by the rest of the control layer so that, while a test runs, its
// scratch file is a path in use (path-guard.ts) and its export name is taken (disk names,
// disk-registry.ts). A marker is durable before the test serves anything and removed after
// it ended, so reading the directory is exact at any moment a request is checked.
import fs from 'node:fs';
import path from 'node:path';

export const DRILL_DIR = 'drills';

export interface DrillMarkerRef {
  disk: string;
  export: string;
  scratch: string;
}

/** Every readable marker (an unreadable one is cleaned up by drill-control at start). */
export function drillMarkers(dataDir: string): DrillMarkerRef[] {
  const dir = path.join(dataDir, DRILL_DIR);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: DrillMarkerRef[] = [];
  for (const name of names) {
    if (!name.endsWith('.json')) continue;
    try {
      const m = JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8')) as Partial<DrillMarkerRef>;
      if (typeof m.disk === 'string' && typeof m.export === 'string' && typeof m.scratch === 'string') out.push({ disk: m.disk, export: m.export, scratch: m.scratch });
    } catch {
      // being written (renamed into place when whole) or unreadable: not a running test
    }
  }
  return out;
}
