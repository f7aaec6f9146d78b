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
  // The console runs in a browser: bundled below, not compiled file by file for Node.
  entryPoints: state.files.filter((f) => f.endsWith('.ts') && !f.startsWith('src/console/')).map((f) => path.join(ROOT, f)),
  outdir: tmp,
  outbase: path.join(ROOT, 'src'),
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: 'linked',
  logLevel: 'warning',
});
buildConsole(tmp);
fs.rmSync(path.join(ROOT, 'dist', 'stamp.json'), { force: true });
const old = path.join(ROOT, 'dist', `src.old-${process.pid}`);
if (fs.existsSync(out)) fs.renameSync(out, old);
fs.renameSync(tmp, out);
fs.rmSync(old, { recursive: true, force: true });
// package.json "type": "module" covers dist/ too: the .js files are ES modules.
fs.writeFileSync(path.join(ROOT, 'dist', 'stamp.json'), JSON.stringify(state));
console.error(`ferry: compiled ${state.files.length} sources into dist/src`);

/**
 * The web console (src/console, Preact + uPlot): one minified bundle, its CSS with uPlot's,
 * and index.html, into dist/src/console/ (served by ferryd at / and /console/*). No CDN: the
 * page loads nothing from elsewhere.
 */
function buildConsole(outRoot) {
  const dir = path.join(outRoot, 'console');
  fs.mkdirSync(dir, { recursive: true });
  buildSync({
    entryPoints: [path.join(ROOT, 'src', 'console', 'main.tsx')],
    bundle: true,
    outfile: path.join(dir, 'console.js'),
    format: 'iife',
    platform: 'browser',
    target: ['chrome110', 'firefox110', 'safari16'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    minify: true,
    sourcemap: 'linked',
    legalComments: 'linked',
    logLevel: 'warning',
  });
  const uplotCss = fs.readFileSync(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
  fs.writeFileSync(path.join(dir, 'console.css'), `${uplotCss}\n${fs.readFileSync(path.join(ROOT, 'src', 'console', 'style.css'), 'utf8')}`);
  fs.copyFileSync(path.join(ROOT, 'src', 'console', 'index.html'), path.join(dir, 'index.html'));
}
