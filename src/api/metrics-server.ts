// The metrics listener of `ferry serve --metrics HOST:PORT`: GET /metrics (the same series as
// the API's /metrics) without the admin token, so Prometheus can scrape a site without holding
// a credential that can remove disks. It serves nothing else (404 in Ferry's error format),
// reads no request body, and bounds its connections and how long a request may take.
import http from 'node:http';
import type { Daemon } from '../control/daemon.js';
import { FerryError } from '../errors.js';
import { Metrics } from './metrics.js';

/** Scrapers are few: a flood of connections is refused by the kernel backlog, not queued here. */
const connectionsMax = 32;
const requestTimeoutMs = 10_000;

export class MetricsServer {
  private readonly server: http.Server;

  constructor(daemon: Daemon) {
    const metrics = new Metrics(daemon);
    this.server = http.createServer({ requestTimeout: requestTimeoutMs, headersTimeout: requestTimeoutMs, noDelay: true }, (req, res) => {
      const url = (req.url ?? '').split('?')[0];
      if (req.method === 'GET' && url === '/metrics') {
        metrics.render().then(
          (text) => {
            res.writeHead(200, { 'content-type': metrics.contentType, 'content-length': Buffer.byteLength(text) });
            res.end(text);
          },
          (err: Error) => send(res, new FerryError('INTERNAL', `metrics failed: ${err.message}`)),
        );
        return;
      }
      send(res, new FerryError('NOT_FOUND', `no route ${req.method} ${url} here: this address serves GET /metrics only`));
    });
    this.server.maxConnections = connectionsMax;
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const a = this.server.address();
        if (a === null || typeof a === 'string') return reject(new Error('metrics server has no TCP address'));
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function send(res: http.ServerResponse, e: FerryError): void {
  const body = JSON.stringify({ error: e.toJSON() });
  res.writeHead(e.httpStatus, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}
