// Peers: every site this one trusts, reachable or not (a live check of each, every 10 s),
// since when it is paired; and pairing: issue a token here, or enter the other site's.
import { useEffect, useState } from 'preact/hooks';
import type { PairingToken, Peer, PeerDetails, Site } from '../api/types.js';
import { api, enc } from './api.js';
import { time } from './format.js';
import { Badge, ErrorLine, useAction } from './ui.js';

export function Peers() {
  const [site, setSite] = useState<Site | null>(null);
  const [peers, setPeers] = useState<PeerDetails[]>([]);
  const [error, setError] = useState<unknown>(null);
  const load = async (): Promise<void> => {
    try {
      setSite(await api<Site>('GET', '/v1/site'));
      const list = await api<Peer[]>('GET', '/v1/peers');
      setPeers(await Promise.all(list.map((p) => api<PeerDetails>('GET', `/v1/peers/${enc(p.name)}`))));
      setError(null);
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => {
    void load();
    const t = setInterval(() => void load(), 10_000);
    return () => clearInterval(t);
  }, []);
  return (
    <section aria-labelledby="peers-title">
      <h2 id="peers-title">Peers</h2>
      {site && (
        <p>
          This site: <strong>{site.name}</strong> (id {site.siteId}), replication {site.replication}.
        </p>
      )}
      <ErrorLine error={error} />
      <div class="table-wrap">
        <table>
          <thead>
            <tr>
              <th scope="col">peer</th>
              <th scope="col">address</th>
              <th scope="col">link check</th>
              <th scope="col">paired since</th>
            </tr>
          </thead>
          <tbody>
            {peers.map((p) => (
              <tr data-peer={p.name}>
                <td>{p.name}</td>
                <td>{p.address ?? '- (dials us)'}</td>
                <td>
                  {!p.check ? (
                    'not checked (it dials us)'
                  ) : p.check.authenticated ? (
                    <Badge level="ok">{`reachable, ${p.check.rttMs} ms`}</Badge>
                  ) : (
                    <Badge level="bad">{`${p.check.reachable ? 'not authenticated' : 'unreachable'}: ${p.check.error?.code ?? ''}`}</Badge>
                  )}
                </td>
                <td>{time(p.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <IssueToken />
      <Pair onPaired={() => void load()} />
    </section>
  );
}

function IssueToken() {
  const [t, setT] = useState<PairingToken | null>(null);
  const [site, setSite] = useState<Site | null>(null);
  const a = useAction();
  return (
    <div class="card">
      <h3>Issue a pairing token</h3>
      <p>Enter it on the other site (with this site's replication address) within its lifetime.</p>
      <button
        type="button"
        disabled={a.busy}
        onClick={() =>
          void a.run('token', async () => {
            setT(await api<PairingToken>('POST', '/v1/peers/tokens'));
            setSite(await api<Site>('GET', '/v1/site'));
          })
        }
      >
        Issue token
      </button>
      {t && (
        <p role="status">
          Token <code data-testid="pairing-token">{t.token}</code> for site {t.name}, address <code data-testid="pairing-address">{site?.replication}</code>, valid until {time(t.expiresAt)}.
        </p>
      )}
      <ErrorLine error={a.error} />
    </div>
  );
}

function Pair({ onPaired }: { onPaired: () => void }) {
  const [f, setF] = useState({ name: '', address: '', token: '' });
  const a = useAction();
  const input = (k: keyof typeof f, label: string) => (
    <label>
      {label} <input name={`pair-${k}`} value={f[k]} onInput={(e) => setF((x) => ({ ...x, [k]: (e.target as HTMLInputElement).value }))} />
    </label>
  );
  return (
    <form
      class="card"
      onSubmit={(e) => {
        e.preventDefault();
        void a.run('pair', async () => {
          const p = await api<Peer>('POST', '/v1/peers', f);
          onPaired();
          return `paired with peer ${p.name} at ${p.address}`;
        });
      }}
    >
      <h3>Pair with a site</h3>
      {input('name', 'Peer name')}
      {input('address', 'Its replication address (HOST:PORT)')}
      {input('token', 'Token it issued')}
      <button type="submit" disabled={a.busy}>
        Pair
      </button>
      {a.result && <p role="status">{a.result}</p>}
      <ErrorLine error={a.error} />
    </form>
  );
}
