// The API's routes for this site's identity and its peers (pairing tokens, pairing,
// list, show with a live link check, remove), in the route-table style of routes.ts,
// which includes them so the OpenAPI description lists them too.
import { Type } from '@sinclair/typebox';
import type { RouteDef } from './routes.js';

const PeerName = Type.String({ minLength: 1, maxLength: 63, description: "letters, digits, '.', '_', '-'" });
const PeerNameParam = Type.Object({ name: PeerName });

export const PeerSchema = Type.Object({
  name: Type.String(),
  address: Type.Union([Type.String(), Type.Null()], { description: 'HOST:PORT this site dials; null when the peer paired with this site and is never dialled from here' }),
  fingerprint: Type.String({ description: "SHA-256 of the peer's certificate, pinned at pairing (lowercase hex)" }),
  siteId: Type.String(),
  createdAt: Type.String({ format: 'date-time' }),
});

export const PeerCheckSchema = Type.Object({
  reachable: Type.Boolean({ description: 'a TLS session was established' }),
  authenticated: Type.Boolean({ description: "both sides recognised each other's pinned certificate" }),
  rttMs: Type.Union([Type.Number(), Type.Null()], { description: 'time of the whole check (TCP, TLS, HELLO)' }),
  remoteName: Type.Union([Type.String(), Type.Null()]),
  error: Type.Union([Type.Object({ code: Type.String(), message: Type.String() }), Type.Null()]),
});

export const PeerDetailsSchema = Type.Intersect([PeerSchema, Type.Object({ check: Type.Union([PeerCheckSchema, Type.Null()]) })]);

export const TokenSchema = Type.Object({
  token: Type.String({ description: "<32 hex secret>.<first 16 hex of this site's certificate fingerprint>; single use" }),
  expiresAt: Type.String({ format: 'date-time' }),
  ttlSeconds: Type.Number(),
  site: Type.String(),
  name: Type.String(),
  fingerprint: Type.String(),
});

export const SiteSchema = Type.Object({
  siteId: Type.String(),
  name: Type.String(),
  fingerprint: Type.String(),
  replication: Type.String({ description: 'HOST:PORT of the replication listener' }),
  peers: Type.Integer(),
  outstandingTokens: Type.Integer(),
});

export const peerRoutes: RouteDef[] = [
  {
    method: 'GET',
    url: '/v1/site',
    operationId: 'siteInfo',
    summary: "This site's identity on the replication link: id, name, certificate fingerprint, listen address",
    tag: 'peers',
    response: SiteSchema,
    handler: (d) => ({
      siteId: d.identity.siteId,
      name: d.identity.siteName,
      fingerprint: d.identity.fingerprint,
      replication: d.replAddress.host.includes(':') ? `[${d.replAddress.host}]:${d.replAddress.port}` : `${d.replAddress.host}:${d.replAddress.port}`,
      peers: d.peers.list().length,
      outstandingTokens: d.peers.pairing.outstanding,
    }),
  },
  {
    method: 'POST',
    url: '/v1/peers/tokens',
    operationId: 'createPairingToken',
    summary: 'Issue a one-time pairing token (kept in memory only; default lifetime 10 minutes)',
    tag: 'peers',
    // A query parameter, not a body: like the other POST actions, the route needs no body.
    querystring: Type.Object({ ttl: Type.Optional(Type.String({ minLength: 1, maxLength: 16, description: 'seconds, or e.g. 30s, 10m, 1h (at most 24h)' })) }, { additionalProperties: false }),
    response: TokenSchema,
    status: 201,
    handler: (d, { query }) => d.peers.createToken({ ttl: query.ttl }),
  },
  {
    method: 'GET',
    url: '/v1/peers',
    operationId: 'listPeers',
    summary: 'List peers',
    tag: 'peers',
    response: Type.Array(PeerSchema),
    handler: (d) => d.peers.list(),
  },
  {
    method: 'POST',
    url: '/v1/peers',
    operationId: 'addPeer',
    summary: 'Pair with the site at address using a token it issued; both sites then know each other',
    tag: 'peers',
    body: Type.Object(
      {
        name: PeerName,
        address: Type.String({ minLength: 1, maxLength: 300, description: "HOST:PORT of the other site's replication listener" }),
        token: Type.String({ minLength: 1, maxLength: 100 }),
      },
      { additionalProperties: false },
    ),
    response: PeerSchema,
    status: 201,
    handler: (d, { body }) => d.peers.add({ name: body.name, address: body.address, token: body.token }),
  },
  {
    method: 'GET',
    url: '/v1/peers/:name',
    operationId: 'getPeer',
    summary: 'Show one peer, with a live check of the link (for a peer with an address)',
    tag: 'peers',
    params: PeerNameParam,
    response: PeerDetailsSchema,
    handler: (d, { params }) => d.peers.show(params.name!),
  },
  {
    method: 'PATCH',
    url: '/v1/peers/:name',
    operationId: 'setPeerAddress',
    summary: "Set the address this site dials the peer at (a peer that paired with us has none: give it one to mirror back to it); the pinned identity is unchanged",
    tag: 'peers',
    params: PeerNameParam,
    body: Type.Object({ address: Type.String({ minLength: 1, maxLength: 300, description: "HOST:PORT of the peer's replication listener" }) }, { additionalProperties: false }),
    response: PeerSchema,
    handler: (d, { params, body }) => d.peers.setAddress(params.name!, body.address),
  },
  {
    method: 'DELETE',
    url: '/v1/peers/:name',
    operationId: 'removePeer',
    summary: 'Forget a peer (refused while mirrors use it); its connections are refused from then on',
    tag: 'peers',
    params: PeerNameParam,
    response: PeerSchema,
    handler: (d, { params }) => d.peers.remove(params.name!),
  },
];
