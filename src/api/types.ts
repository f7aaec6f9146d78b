// The API's response bodies as TypeScript types, derived from the route schemas (routes.ts,
// peer-routes.ts) that also describe them in OpenAPI: what the CLI (a client of the API)
// reads, so it depends on the API's contract and never on the control layer's internals.
import type { Static } from '@sinclair/typebox';
import type {
  DiskSchema,
  MirrorSchema,
  PoolSchema,
  PromoteSchema,
  RemovedMirrorSchema,
  ServerSchema,
  StagingDiscardSchema,
  StagingSchema,
  SwapSchema,
  VerifySchema,
} from './routes.js';
import type { PeerDetailsSchema, PeerSchema, SiteSchema, TokenSchema } from './peer-routes.js';
import type { TestEndSchema, TestFailoverDetailsSchema } from './drill-routes.js';
import type { DrSchema, ReconnectSchema, SwitchoverSchema } from './dr-routes.js';
import type { GroupSchema } from './group-routes.js';

export type Disk = Static<typeof DiskSchema>;
export type Pool = Static<typeof PoolSchema>;
export type Staging = Static<typeof StagingSchema>;
export type StagingDiscard = Static<typeof StagingDiscardSchema>;
export type Mirror = Static<typeof MirrorSchema>;
export type RemovedMirror = Static<typeof RemovedMirrorSchema>;
export type VerifyResult = Static<typeof VerifySchema>;
export type SwapResult = Static<typeof SwapSchema>;
export type PromoteResult = Static<typeof PromoteSchema>;
export type ServerInfo = Static<typeof ServerSchema>;
export type Site = Static<typeof SiteSchema>;
export type Peer = Static<typeof PeerSchema>;
export type PeerDetails = Static<typeof PeerDetailsSchema>;
export type PairingToken = Static<typeof TokenSchema>;
export type TestFailover = Static<typeof TestFailoverDetailsSchema>;
export type TestEnd = Static<typeof TestEndSchema>;
export type DiskDr = Static<typeof DrSchema>;
export type SwitchoverResult = Static<typeof SwitchoverSchema>;
export type ReconnectResult = Static<typeof ReconnectSchema>;
export type Group = Static<typeof GroupSchema>;
