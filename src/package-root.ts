// Where Ferry is installed: the folder holding package.json and build/ (the native addon),
// found from this module's own location, which is src/ when run from the sources and
// dist/src/ when compiled (scripts/build.js).
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

export const packageRoot = path.resolve(here, path.basename(path.dirname(here)) === 'dist' ? '../..' : '..');
