// systemd's service readiness protocol (sd_notify): when ferryd runs under a unit of
// Type=notify, systemd sets $NOTIFY_SOCKET and waits for READY=1 before it counts the service
// as started (every listener bound and every disk recovered); STOPPING=1 says a stop began.
// Without $NOTIFY_SOCKET this does nothing. The datagram is sent by the native addon (Node
// cannot send one to a unix socket).
import { notifySocket } from '../disk/native-io.js';

/** Sends `state` (e.g. "READY=1") to systemd if it asked; returns why it failed, or null. */
export function notifyService(state: string): string | null {
  const socket = process.env.NOTIFY_SOCKET;
  if (!socket) return null;
  try {
    notifySocket(socket, state);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}
