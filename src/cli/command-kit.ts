// What every client command shares: the API client built from the global options, and
// printing (JSON with --json, text otherwise).
import { Option, type Command } from 'commander';
import { ApiClient } from './api-client.js';

export function client(cmd: Command): ApiClient {
  return new ApiClient(cmd.optsWithGlobals() as { api?: string; token?: string; data?: string });
}

export function print(cmd: Command, value: unknown, human: () => string): void {
  process.stdout.write((cmd.optsWithGlobals() as { json?: boolean }).json ? JSON.stringify(value, null, 2) + '\n' : human());
}

export const jsonOpt = (): Option => new Option('--json', 'print JSON');
