// Crash points for the kill -9 tests of multi-step operations (test/replication/switchover.test.ts):
// with FERRY_FAILPOINT=NAME in its environment, ferryd kills itself with SIGKILL when it
// reaches the step NAME, exactly as an operator's kill -9 or a power cut would end it there.
// Unset (always, outside tests), a step costs one environment lookup.

/** Ends the process (SIGKILL) if FERRY_FAILPOINT names this step. */
export function failpoint(name: string): void {
  if (process.env.FERRY_FAILPOINT === name) process.kill(process.pid, 'SIGKILL');
}
