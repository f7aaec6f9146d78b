// The configuration file of `ferry serve --config FILE`: a JSON object holding any `serve`
// flag by its long name in camelCase (`{"data": "/var/lib/ferry", "nbd": "0.0.0.0:10809",
// "logLevel": "info"}`). A flag given on the command line wins over the file. Unknown keys and
// values that are not strings or numbers are refused with the file and key named, before
// anything starts. On SIGHUP ferryd reads the file again and applies what can change while it
// runs (RELOADABLE); the rest takes effect at the next start, and the log says so.
import fs from 'node:fs';

export const CONFIG_KEYS = [
  'data',
  'nbd',
  'api',
  'repl',
  'site',
  'tls',
  'tlsCert',
  'tlsKey',
  'tlsCa',
  'pollUs',
  'metrics',
  'logLevel',
  'logFormat',
  'nbdConnections',
  'nbdConnectionsPerAddress',
  'apiConnections',
  'apiConnectionsPerAddress',
  'replConnections',
  'replConnectionsPerAddress',
] as const;
export type ConfigKey = (typeof CONFIG_KEYS)[number];
export type ServeConfig = Partial<Record<ConfigKey, string>>;

/** What a SIGHUP applies without a restart. */
export const RELOADABLE: readonly ConfigKey[] = ['logLevel'];

/** Largest configuration file read: it holds a dozen short strings. */
const configBytesMax = 64 * 1024;

const dashed = (key: string): string => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;

export function readConfigFile(file: string): ServeConfig {
  let text: string;
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) throw new Error('not a regular file');
    if (st.size > configBytesMax) throw new Error(`larger than ${configBytesMax} bytes`);
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`--config ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new Error(`--config ${file}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error(`--config ${file}: must be a JSON object of serve flags, e.g. {"data": "/var/lib/ferry"}`);
  const out: ServeConfig = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(key)) throw new Error(`--config ${file}: unknown key '${key}' (known: ${CONFIG_KEYS.join(', ')})`);
    if (typeof value !== 'string' && typeof value !== 'number') throw new Error(`--config ${file}: '${key}' must be a string or a number, as the flag ${dashed(key)} takes`);
    out[key as ConfigKey] = String(value);
  }
  return out;
}

/** The serve options: the file's values under those given on the command line (`fromCli`). */
export function mergeConfig<T extends ServeConfig>(opts: T, fromCli: (key: ConfigKey) => boolean, config: ServeConfig): T {
  const merged: ServeConfig = { ...opts };
  for (const key of CONFIG_KEYS) if (config[key] !== undefined && !fromCli(key)) merged[key] = config[key];
  return merged as T;
}

/** The keys whose value differs between two configurations. */
export function changedKeys(before: ServeConfig, after: ServeConfig): ConfigKey[] {
  return CONFIG_KEYS.filter((k) => before[k] !== after[k]);
}
