// The reference docs cover what the program has, read from the program itself: every command
// of `ferry` (found by walking `--help` of the real CLI, as a user would) has its section in
// docs/CLI.md (`## ferry X` or a `### X Y` heading, several commands may share one), and every
// option of it is named in that section; every route of the API's route table
// (src/api/routes.ts: disks, mirrors, peers, DR, test failover, groups) has its row in the
// route table of docs/API.md, its `**\`METHOD /path\`**` entry and its operationId. A command,
// option or route added without its docs fails here, naming it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { FERRY_BIN, ROOT, run } from '../harness.js';
import { routes } from '../../src/api/routes.js';

/** The lines under `Title:` in commander's help, up to the first blank line. */
function helpSection(text: string, title: string): string[] {
  const lines = text.split('\n');
  const at = lines.findIndex((l) => l === `${title}:`);
  if (at < 0) return [];
  const out: string[] = [];
  for (let i = at + 1; i < lines.length && lines[i]!.trim() !== ''; i++) out.push(lines[i]!);
  return out;
}

async function help(args: string[]): Promise<string> {
  const r = await run(process.execPath, [FERRY_BIN, ...args, '--help'], { timeoutMs: 60_000 });
  assert.equal(r.code, 0, `ferry ${args.join(' ')} --help: ${r.stderr}`);
  return r.stdout;
}

interface Leaf {
  path: string[];
  options: string[];
}

/** Every command that has no subcommand, with its long options (--help aside). */
async function leaves(): Promise<Leaf[]> {
  const out: Leaf[] = [];
  const walk = async (p: string[]): Promise<void> => {
    const text = await help(p);
    const subs = helpSection(text, 'Commands')
      .filter((l) => /^ {2}\S/.test(l))
      .map((l) => l.trim().split(/\s+/)[0]!)
      .filter((c) => c !== 'help');
    if (p.length > 0 && subs.length === 0) {
      const options = helpSection(text, 'Options').flatMap((l) => [...l.matchAll(/(?:^|[\s,])(--[a-z][a-z-]*)/g)].map((m) => m[1]!));
      out.push({ path: p, options: options.filter((o) => o !== '--help') });
    }
    await Promise.all(subs.map((s) => walk([...p, s])));
  };
  await walk([]);
  return out;
}

/** The headings of a markdown text (outside fenced code), with the text of each section. */
function sections(md: string): Array<{ heading: string; level: number; body: string }> {
  const out: Array<{ heading: string; level: number; body: string }> = [];
  let fenced = false;
  for (const line of md.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    const h = fenced ? null : /^(#{1,3}) (.*)$/.exec(line);
    if (h) out.push({ heading: h[2]!, level: h[1]!.length, body: '' });
    else if (out.length > 0) out[out.length - 1]!.body += line + '\n';
  }
  return out;
}

test('every ferry command has its section in docs/CLI.md, naming each of its options', async () => {
  const docs = sections(fs.readFileSync(path.join(ROOT, 'docs', 'CLI.md'), 'utf8'));
  const all = await leaves();
  const names = all.map((l) => l.path.join(' '));
  for (const expected of ['disk create', 'mirror create', 'group create', 'group add', 'peer add', 'serve']) assert.ok(names.includes(expected), `the walk finds '${expected}': ${names.join(', ')}`);
  const problems: string[] = [];
  for (const leaf of all) {
    const name = leaf.path.join(' ');
    const sec = docs.find((s) => (leaf.path.length === 1 ? s.level === 2 && s.heading === `ferry ${name}` : s.level === 3 && s.heading.split(/,\s*/).includes(name)));
    if (!sec) {
      problems.push(`ferry ${name}: no section (## ferry ${name} or ### ${name})`);
      continue;
    }
    const missing = leaf.options.filter((o) => !new RegExp(`${o}(?![a-z-])`).test(sec.body));
    if (missing.length > 0) problems.push(`ferry ${name}: options not in its section: ${missing.join(' ')}`);
  }
  assert.deepEqual(problems, []);
  const mirrorCreate = all.find((l) => l.path.join(' ') === 'mirror create');
  assert.ok(mirrorCreate?.options.includes('--group'), 'mirror create --group is among the options checked');
});

test('every API route has its row, its entry and its operationId in docs/API.md', () => {
  const doc = fs.readFileSync(path.join(ROOT, 'docs', 'API.md'), 'utf8');
  const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const problems: string[] = [];
  for (const r of routes) {
    const p = r.url.replace(/:(\w+)/g, '{$1}');
    if (!new RegExp(`^\\| ${r.method} \\| \`${esc(p)}(\\?[^\`]*)?\` \\|`, 'm').test(doc)) problems.push(`${r.method} ${p}: no row in the route table`);
    if (!new RegExp(`\\*\\*\`${r.method} ${esc(p)}(\\?[^\`]*)?\`\\*\\*`).test(doc)) problems.push(`${r.method} ${p}: no **\`${r.method} ${p}\`** entry`);
    if (!doc.includes(`\`${r.operationId}\``)) problems.push(`${r.method} ${p}: its operationId ${r.operationId} is not named`);
  }
  assert.deepEqual(problems, []);
  assert.ok(routes.some((r) => r.url === '/v1/groups/:name/members/:disk'), 'the group routes are among those checked');
});
