// The workloads: one fio job each, run against every server. Add a row by appending
// to `rows`; `servers` narrows a row to some servers (by name) when a workload only
// makes sense for some of them (and a server's own `rows` narrows it to some workloads;
// a `ferry@name` baseline goes wherever `ferry` goes).
// The mirror measurements (sync, swap: not one fio job per server) are in mirror-rows.ts.
export interface RowDef {
  id: string;
  title: string;
  /** fio --rw */
  rw: 'randwrite' | 'randread' | 'write' | 'read' | 'randrw';
  /** fio --bs */
  bs: string;
  iodepth: number;
  /** Extra fio arguments (e.g. ['--fsync=32']). */
  extra?: string[];
  /** Only these servers (by name); all when absent. */
  servers?: string[];
}

// The Ferry subjects (ferry, ferry-staged, ferry-mirrored, ferry-remote: servers.ts) run every
// row (issue 11); a Ferry baseline `ferry@name` (BENCH_FERRY_ALT) runs wherever `ferry` does.
const ferrySubjects = ['ferry', 'ferry-staged', 'ferry-mirrored', 'ferry-remote'];

export const rows: RowDef[] = [
  { id: 'randwrite-4k-qd1', title: '4 KiB random write, QD1', rw: 'randwrite', bs: '4k', iodepth: 1 },
  { id: 'randwrite-4k-qd32', title: '4 KiB random write, QD32', rw: 'randwrite', bs: '4k', iodepth: 32 },
  { id: 'randread-4k-qd32', title: '4 KiB random read, QD32', rw: 'randread', bs: '4k', iodepth: 32 },
  { id: 'write-1m-qd8', title: '1 MiB sequential write, QD8', rw: 'write', bs: '1m', iodepth: 8 },
  // Issue 3: every write made durable before the next (fio sends NBD_CMD_FLUSH after each write).
  { id: 'randwrite-4k-qd1-fsync', title: '4 KiB random write, QD1, fsync=1', rw: 'randwrite', bs: '4k', iodepth: 1, extra: ['--fsync=1'], servers: [...ferrySubjects, 'nbdkit', 'node-floor'] },
  // Issue 11, a database-like load: a flush (NBD_CMD_FLUSH) after every 32 writes, 8 in flight.
  { id: 'randwrite-4k-qd8-fsync32', title: '4 KiB random write, QD8, fsync=32', rw: 'randwrite', bs: '4k', iodepth: 8, extra: ['--fsync=32'], servers: ferrySubjects },
];
