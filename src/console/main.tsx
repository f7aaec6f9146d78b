// The Ferry console: a single page served by ferryd at its API address, talking only to the
// documented REST API with the bearer token the user logs in with (kept in sessionStorage).
// Routes are URL fragments: #/ (overview), #/disk/NAME, #/groups, #/group/NAME, #/peers, #/events.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, ApiFailure, login, logout, token } from './api.js';
import { DiskPage } from './disk-page.js';
import { EventsFeed } from './events-feed.js';
import { GroupPage, GroupsView } from './groups.js';
import { followEvents } from './events.js';
import { Overview, renderStats } from './overview.js';
import { Peers } from './peers.js';
import { addEvent, changed, poll, state } from './store.js';
import { ErrorLine, useStore } from './ui.js';

function useHash(): string {
  const [hash, setHash] = useState(location.hash || '#/');
  useEffect(() => {
    const on = (): void => setHash(location.hash || '#/');
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function Login({ onLogin }: { onLogin: () => void }) {
  const [t, setT] = useState('');
  const [error, setError] = useState<unknown>(null);
  return (
    <main class="login">
      <h1>Ferry console</h1>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          login(t);
          api('GET', '/v1/server').then(onLogin, (err: unknown) => {
            logout();
            setError(err);
          });
        }}
      >
        <label>
          API token <input type="password" name="token" autoComplete="off" value={t} onInput={(e) => setT((e.target as HTMLInputElement).value)} />
        </label>
        <small>In the data directory, file api-token. Kept in this tab's session only.</small>
        <button type="submit">Log in</button>
        <ErrorLine error={error} />
      </form>
    </main>
  );
}

function Shell({ onLogout }: { onLogout: () => void }) {
  useStore();
  const hash = useHash();
  const disk = /^#\/disk\/(.+)$/.exec(hash)?.[1];
  const diskName = disk ? decodeURIComponent(disk) : null;
  const group = /^#\/group\/(.+)$/.exec(hash)?.[1];
  const groupName = group ? decodeURIComponent(group) : null;
  useEffect(() => window.scrollTo(0, 0), [hash]);
  useEffect(() => {
    let stop = false;
    const loop = async (): Promise<void> => {
      while (!stop) {
        const started = Date.now();
        await poll(diskName ?? groupName); // the staging area of the disk or group shown
        if (state.pollError?.code === 'UNAUTHORIZED') return onLogout();
        await new Promise((r) => setTimeout(r, Math.max(0, 1000 - (Date.now() - started))));
      }
    };
    void loop();
    return () => {
      stop = true;
    };
  }, [diskName, groupName]);
  useEffect(
    () =>
      followEvents(addEvent, (connected, error) => {
        state.eventsConnected = connected;
        state.eventsError = error;
        changed();
      }),
    [],
  );
  const nav = [
    ['#/', 'Disks'],
    ['#/groups', 'Groups'],
    ['#/peers', 'Peers'],
    ['#/events', 'Events'],
  ];
  return (
    <>
      <header>
        <h1>Ferry</h1>
        <nav aria-label="main">
          {nav.map(([href, label]) => (
            <a href={href} aria-current={hash === href ? 'page' : undefined}>
              {label}
            </a>
          ))}
        </nav>
        <span class="live">{state.eventsConnected ? 'events: live' : 'events: reconnecting'}</span>
        <button type="button" onClick={onLogout}>
          Log out
        </button>
      </header>
      <main>
        {state.pollError && <ErrorLine error={state.pollError} />}
        {diskName ? <DiskPage name={diskName} /> : groupName ? <GroupPage name={groupName} /> : hash === '#/groups' ? <GroupsView /> : hash === '#/peers' ? <Peers /> : hash === '#/events' ? <EventsFeed /> : <Overview />}
      </main>
      <footer>
        Overview rendered {renderStats.rows} disk(s) in {renderStats.ms.toFixed(1)} ms (slowest {renderStats.msMax.toFixed(1)} ms). Polls GET /v1/disks and /v1/mirrors each second.
      </footer>
    </>
  );
}

function App() {
  const [loggedIn, setLoggedIn] = useState(token() !== null);
  if (!loggedIn) return <Login onLogin={() => setLoggedIn(true)} />;
  return (
    <Shell
      onLogout={() => {
        logout();
        setLoggedIn(false);
      }}
    />
  );
}

// A stale token from an earlier session is checked once; refused, the login form shows.
if (token()) void api('GET', '/v1/server').catch((err: unknown) => err instanceof ApiFailure && err.code === 'UNAUTHORIZED' && logout());
render(<App />, document.getElementById('app')!);
