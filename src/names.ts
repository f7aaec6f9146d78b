// Names of disks, pools and peers: they become export names and file names,
// so they are restricted to a portable, path-free alphabet.
import { FerryError } from './errors.js';

const namePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function validateName(kind: 'disk' | 'pool' | 'peer', name: unknown): string {
  if (typeof name !== 'string' || !namePattern.test(name) || name.includes('..')) {
    throw new FerryError(
      'INVALID_NAME',
      `invalid ${kind} name ${JSON.stringify(name)}: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'`,
    );
  }
  return name;
}
