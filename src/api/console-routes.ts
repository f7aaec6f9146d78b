// Serves the web console (src/console, bundled by scripts/build.js into dist/src/console) at
// the API address: GET / is its page, GET /console/* its script and style. These static
// files need no token (they hold no data; the page asks for the token and sends it to the
// API routes); they are hidden from the OpenAPI document. Nothing else is served from disk:
// only the files named here, read once at first request (a rebuilt console is served after a
// restart).
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { packageRoot } from '../package-root.js';

const consoleDir = path.join(packageRoot, 'dist', 'src', 'console');

const assets: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/console/console.js': { file: 'console.js', type: 'text/javascript; charset=utf-8' },
  '/console/console.css': { file: 'console.css', type: 'text/css; charset=utf-8' },
  '/console/console.js.map': { file: 'console.js.map', type: 'application/json' },
};

/** The page may load and call only this origin; it is never framed. */
const securityHeaders = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

/** Whether a request path is one of the console's static files (served without a token). */
export function isConsoleAsset(url: string): boolean {
  return Object.hasOwn(assets, url.split('?')[0]!);
}

export function registerConsoleRoutes(app: FastifyInstance): void {
  const cache = new Map<string, Buffer>();
  for (const [url, asset] of Object.entries(assets)) {
    app.get(url, { schema: { hide: true } }, async (_req, reply) => {
      let body = cache.get(asset.file);
      try {
        // Read once, synchronously: an answer waiting on the thread pool was lost when the
        // client half-closed its connection (Connection: close, then FIN) meanwhile.
        if (!body) cache.set(asset.file, (body = fs.readFileSync(path.join(consoleDir, asset.file))));
      } catch {
        void reply.status(503).header('content-type', 'text/plain; charset=utf-8');
        return `the Ferry console is not built (${path.join(consoleDir, asset.file)} is missing): run 'npm run build'\n`;
      }
      void reply.headers({ 'content-type': asset.type, ...securityHeaders });
      return body;
    });
  }
}
