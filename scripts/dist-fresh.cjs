// Whether dist/ (scripts/build.js) was compiled from exactly the sources in src/ now: the same
// files with the same modification times. CommonJS and synchronous, because bin/ferry.cjs asks
// before anything else runs; it costs one readdir per source folder and one stat per file
// (a millisecond or two for ~100 files).
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');

/** Every src/**\/*.ts file, and the console's sources (src/console: .tsx, .css, .html), sorted, relative to the root, with its mtime in ms. */
function sourceState() {
  const files = [];
  const mtimes = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if ((e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) || (rel.startsWith('src/console/') && /\.(tsx|css|html)$/.test(e.name))) {
        files.push(rel);
        mtimes.push(fs.statSync(path.join(ROOT, rel)).mtimeMs);
      }
    }
  };
  walk('src');
  return { files, mtimes };
}

function distFresh() {
  let stamp;
  try {
    stamp = JSON.parse(fs.readFileSync(path.join(ROOT, 'dist', 'stamp.json'), 'utf8'));
  } catch {
    return false;
  }
  const now = sourceState();
  return JSON.stringify(now) === JSON.stringify(stamp);
}

module.exports = { ROOT, sourceState, distFresh };
