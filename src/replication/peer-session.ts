// What the replication layer hands to the stream on top of it: an authenticated TLS
// session with a known peer, whichever side dialled. The FrameReader already owns the
// socket's 'data' events; read frames through it and write encodeFrame() buffers to the
// socket.
import type tls from 'node:tls';
import type { FrameReader } from './frame.js';
import type { PeerRow } from './peer-row.js';

export interface PeerSession {
  peer: PeerRow;
  socket: tls.TLSSocket;
  reader: FrameReader;
  /**
   * On the listening side, the client's HELLO meta ({ site, name, purpose, ... });
   * on the dialling side, the server's HELLO_OK meta ({ site, name, ... }).
   */
  hello: Record<string, unknown>;
}
