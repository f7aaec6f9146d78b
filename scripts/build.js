#!/usr/bin/env node
// Compiles src/**/*.ts to dist/src/**/*.js (esbuild: type stripping only, one output file per
// source, ES modules, so a command loads only the modules it imports), then writes
// dist/stamp.json naming every source and its modification time. bin/ferry.cjs runs the
// compiled files only while that stamp matches the sources exactly (scripts/dist-fresh.cjs);
// otherwise it runs the sources through tsx, so an edited tree never runs stale code.
// Type checking is `npm run typecheck` (tsc), not this.
//
// Run by `npm install` (after the native addon), by `npm start` and `npm test` when the stamp
// is stale, and by `npm run build`. `--if-stale` builds only when needed.
import { buildSync } from 'esbuild';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { sourceState, distFresh, ROOT } = require('./dist-fresh.cjs');

if (process.argv.includes('--if-stale') && distFresh()) process.exit(0);

const state = sourceState();
const out = path.join(ROOT, 'dist', 'src');
// Built beside and renamed into place: a ferry process starting meanwhile sees either the
// whole old tree (with its stamp gone, so it runs the sources) or the whole new one.
const tmp = path.join(ROOT, 'dist', `src.tmp-${process.pid}`);
fs.rmSync(tmp, { recursive: true, force: true });
buildSync({
  entryPoints: state.files.map((f) => path.join(ROOT, f)),
  outdir: tmp,
  outbase: path.join(ROOT, 'src'),
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: 'linked',
  logLevel: 'warning',
});
fs.rmSync(path.join(ROOT, 'dist', 'stamp.json'), { force: true });
const old = path.join(ROOT, 'dist', `src.old-${process.pid}`);
if (fs.existsSync(out)) fs.renameSync(out, old);
fs.renameSync(tmp, out);
fs.rmSync(old, { recursive: true, force: true });
// package.json "type": "module" covers dist/ too: the .js files are ES modules.
fs.writeFileSync(path.join(ROOT, 'dist', 'stamp.json'), JSON.stringify(state));
console.error(`ferry: compiled ${state.files.length} sources into dist/src`);
