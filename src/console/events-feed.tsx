// The events feed (pushed live from GET /v1/events) and the event list a disk page shows.
import { eventLine } from '../cli/event-text.js';
import type { ConsoleEvent } from './events.js';
import { state } from './store.js';
import { useStore } from './ui.js';

const alarming = new Set(['refusal', 'reset']);

function level(e: ConsoleEvent): string {
  if (alarming.has(e.type)) return 'warn';
  if (e.type === 'mirror.link' && e.to === 'down') return 'bad';
  if (e.type === 'mirror.rpo' && e.met === false) return 'bad';
  if (e.type === 'staging.copy' && e.healthy === false) return 'bad';
  if (e.type === 'staging.failed' && e.failed) return 'bad';
  if (e.type === 'disk.state' && e.to === 'unavailable') return 'bad';
  if (e.type === 'mirror.consistency' && e.consistent === false) return 'bad';
  return 'ok';
}

export function EventList({ events }: { events: ConsoleEvent[] }) {
  if (events.length === 0) return <p>No events yet.</p>;
  return (
    <ol class="events" aria-live="polite">
      {[...events].reverse().map((e) => (
        <li key={e.id} class={level(e)} data-type={e.type}>
          <code>{eventLine(e)}</code>
        </li>
      ))}
    </ol>
  );
}

export function EventsFeed() {
  useStore();
  return (
    <section aria-labelledby="events-title">
      <h2 id="events-title">Events</h2>
      <p>
        {state.eventsConnected ? 'Live (GET /v1/events).' : `Not connected${state.eventsError ? `: ${state.eventsError}` : ''}; retrying every 2 s.`} Newest first, the last{' '}
        {state.events.length} kept.
      </p>
      <EventList events={state.events} />
    </section>
  );
}
