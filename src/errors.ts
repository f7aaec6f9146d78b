// The one error registry of Ferry. Every failure that crosses a layer boundary is a
// FerryError with a stable code (never renamed: scripts and the CLI's --json output
// depend on it), an NBD errno for the wire and an HTTP status for the API. Adding a
// code means adding a row to ERRORS; nothing else in the tree invents error codes.

/** NBD wire error values (doc/proto.md, "Error values"). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrnoValue = (typeof NbdErrno)[keyof typeof NbdErrno];

interface ErrorSpec {
  readonly http: number;
  readonly nbd: NbdErrnoValue;
  readonly summary: string;
}

export const ERRORS = {
  // Requests that are malformed or out of range: nothing was changed.
  BAD_REQUEST: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the request is malformed' },
  INVALID_NAME: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the name is not a valid disk or pool name' },
  INVALID_SIZE: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the size is not valid' },
  INVALID_PATH: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the path is not allowed' },
  OUT_OF_RANGE: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the range lies outside the disk' },
  WRITE_PAST_END: { http: 400, nbd: NbdErrno.ENOSPC, summary: 'a write or zeroing past the end of the disk' },
  URL_TOO_LONG: { http: 414, nbd: NbdErrno.EINVAL, summary: 'a path segment of the URL is too long' },
  HEADERS_TOO_LARGE: { http: 431, nbd: NbdErrno.EINVAL, summary: 'the request line and headers are too large' },
  REQUEST_TIMEOUT: { http: 408, nbd: NbdErrno.EINVAL, summary: 'the request was not received in time' },
  // Authentication.
  UNAUTHORIZED: { http: 401, nbd: NbdErrno.EPERM, summary: 'missing or wrong API token' },
  // Lookups.
  NOT_FOUND: { http: 404, nbd: NbdErrno.EINVAL, summary: 'no such API route' },
  DISK_NOT_FOUND: { http: 404, nbd: NbdErrno.EINVAL, summary: 'no disk has that name' },
  POOL_NOT_FOUND: { http: 404, nbd: NbdErrno.EINVAL, summary: 'no pool has that name' },
  PATH_NOT_FOUND: { http: 404, nbd: NbdErrno.EINVAL, summary: 'the path does not exist' },
  // Conflicts with existing state: nothing was changed.
  DISK_EXISTS: { http: 409, nbd: NbdErrno.EINVAL, summary: 'a disk with that name exists' },
  POOL_EXISTS: { http: 409, nbd: NbdErrno.EINVAL, summary: 'a pool with that name exists' },
  PATH_IN_USE: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the path is already used by Ferry' },
  PATH_LOCKED: { http: 409, nbd: NbdErrno.EINVAL, summary: 'another process (another ferryd) holds the path' },
  DISK_BUSY: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the disk is in use' },
  POOL_NOT_EMPTY: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the pool still holds disks' },
  DISK_UNAVAILABLE: { http: 409, nbd: NbdErrno.EIO, summary: 'the disk cannot be opened' },
  GROUP_NOT_FOUND: { http: 404, nbd: NbdErrno.EINVAL, summary: 'no consistency group has that name' },
  DISK_IN_GROUP: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the disk is a member of a consistency group: the operation is the group\'s' },
  READ_ONLY: { http: 409, nbd: NbdErrno.EPERM, summary: 'the disk is read-only' },
  // Staging areas.
  STAGING_TOO_SMALL: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the staging area is smaller than the minimum' },
  STAGING_EXISTS: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the disk already has a staging area' },
  NO_STAGING: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the disk has no staging area' },
  STAGING_CORRUPT: { http: 500, nbd: NbdErrno.EIO, summary: 'the staging area cannot be trusted' },
  STAGING_FAILED: { http: 500, nbd: NbdErrno.EIO, summary: 'every copy of the staging area failed' },
  UNDO_LOG_CORRUPT: { http: 500, nbd: NbdErrno.EIO, summary: "the replica's undo log cannot be trusted" },
  // Mirrors.
  MIRROR_EXISTS: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the disk already has a mirror' },
  NO_MIRROR: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the disk has no mirror' },
  MIRROR_BUSY: { http: 409, nbd: NbdErrno.EINVAL, summary: 'another operation on the mirror of the disk is running' },
  MIRROR_NOT_IN_SYNC: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the mirror is not in sync' },
  TARGET_HOLDS_DATA: { http: 409, nbd: NbdErrno.EINVAL, summary: 'the mirror target holds data a full sync would overwrite' },
  TARGET_TOO_SMALL: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the mirror target is smaller than the disk' },
  INVALID_TARGET: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the mirror target is not valid' },
  // Test failovers (DR drills) at the mirror site.
  TEST_RUNNING: { http: 409, nbd: NbdErrno.EINVAL, summary: 'a test failover of the replica is already running' },
  NO_TEST: { http: 409, nbd: NbdErrno.EINVAL, summary: 'no test failover of the replica is running' },
  EXPORT_EXISTS: { http: 409, nbd: NbdErrno.EINVAL, summary: 'an NBD export with that name exists' },
  SCRATCH_TOO_SMALL: { http: 400, nbd: NbdErrno.EINVAL, summary: 'the scratch area is too small' },
  SCRATCH_FULL: { http: 507, nbd: NbdErrno.ENOSPC, summary: 'the scratch area of the test failover is full' },
  TEST_IMAGE_LOST: { http: 409, nbd: NbdErrno.EIO, summary: 'the test image is lost' },
  FENCED: { http: 409, nbd: NbdErrno.EPERM, summary: 'the disk is fenced: its peer site was promoted past it, so it takes no writes' },
  SPLIT_BRAIN: { http: 409, nbd: NbdErrno.EINVAL, summary: 'both sites took writes since they diverged; the administrator chooses the side to discard' },
  // Peers and the replication link.
  PEER_NOT_FOUND: { http: 404, nbd: NbdErrno.EINVAL, summary: 'no peer has that name' },
  PEER_EXISTS: { http: 409, nbd: NbdErrno.EINVAL, summary: 'a peer with that name or identity exists' },
  PEER_AUTH_FAILED: { http: 403, nbd: NbdErrno.EPERM, summary: 'the peer could not be authenticated' },
  PEER_UNREACHABLE: { http: 502, nbd: NbdErrno.EIO, summary: 'the peer cannot be reached' },
  PEER_IN_USE: { http: 409, nbd: NbdErrno.EINVAL, summary: 'mirrors still use the peer' },
  REPL_PROTOCOL: { http: 502, nbd: NbdErrno.EIO, summary: 'the peer broke the replication protocol' },
  REMOTE_ERROR: { http: 502, nbd: NbdErrno.EIO, summary: 'the peer refused or failed the request' },
  // Capabilities.
  NOT_SUPPORTED: { http: 422, nbd: NbdErrno.ENOTSUP, summary: 'the operation is not supported here' },
  // Faults.
  IO_ERROR: { http: 500, nbd: NbdErrno.EIO, summary: 'an I/O error occurred' },
  NO_SPACE: { http: 507, nbd: NbdErrno.ENOSPC, summary: 'no space left on the backing storage' },
  SHUTTING_DOWN: { http: 503, nbd: NbdErrno.ESHUTDOWN, summary: 'ferryd is shutting down' },
  STARTING: { http: 503, nbd: NbdErrno.ESHUTDOWN, summary: 'ferryd is starting: its disks are being recovered' },
  // The API's own capacity.
  EVENT_CLIENTS_FULL: { http: 503, nbd: NbdErrno.EINVAL, summary: 'too many event stream clients are connected' },
  INTERNAL: { http: 500, nbd: NbdErrno.EIO, summary: 'internal error' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message?: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message ?? ERRORS[code].summary, options);
    this.name = 'FerryError';
    this.code = code;
    this.details = details;
  }

  get httpStatus(): number {
    return ERRORS[this.code].http;
  }

  get nbdErrno(): NbdErrnoValue {
    return ERRORS[this.code].nbd;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details ? { code: this.code, message: this.message, details: this.details } : { code: this.code, message: this.message };
  }
}

/** Maps an errno-style failure of the operating system onto the registry. */
export function fromSystemError(err: unknown, context: string): FerryError {
  if (err instanceof FerryError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = `${context}: ${(err as Error | undefined)?.message ?? String(err)}`;
  switch (code) {
    case 'ENOENT':
      return new FerryError('PATH_NOT_FOUND', message, undefined, { cause: err });
    case 'ENOSPC':
    case 'EDQUOT':
      return new FerryError('NO_SPACE', message, undefined, { cause: err });
    case 'EROFS':
    case 'EACCES':
    case 'EPERM':
      return new FerryError('READ_ONLY', message, undefined, { cause: err });
    case 'EOPNOTSUPP':
    case 'ENOTSUP':
    case 'ENOSYS':
      return new FerryError('NOT_SUPPORTED', message, undefined, { cause: err });
    default:
      return new FerryError('IO_ERROR', message, undefined, { cause: err });
  }
}

/** NBD errno for any thrown value: unknown failures are reported as EIO, never as success. */
export function nbdErrnoOf(err: unknown): NbdErrnoValue {
  return err instanceof FerryError ? err.nbdErrno : NbdErrno.EIO;
}
