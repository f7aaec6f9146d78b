// A paired site as the metadata store keeps it (table `peers`): what the replication layer
// needs to dial a peer, pin its certificate and recognise it when it dials us.
export interface PeerRow {
  name: string;
  /** HOST:PORT of its replication listener, or null when it paired with us and we never dial it. */
  address: string | null;
  /** SHA-256 of its certificate (DER), lowercase hex without colons. */
  fingerprint: string;
  site_id: string;
  created_at: number;
}
