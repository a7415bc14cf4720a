/** Hostile Ghost files made by editing a decoded one (test helper). */
import { FormatError } from '../../lib/shared/errors.js';
import { decodeGhost, encodeGhost, type GhostManifest } from '../../lib/verify/ghost-file.js';

/**
 * Decodes `bytes`, lets `edit` change the manifest, and encodes it again: 'accepted' when
 * that works, else the FormatError's reason (or the other error's text).
 */
export function editedGhostReason(bytes: Uint8Array, edit: (m: GhostManifest) => void): string {
  const m = decodeGhost(bytes);
  edit(m);
  try {
    encodeGhost(m);
    return 'accepted';
  } catch (err) {
    return err instanceof FormatError ? err.reason : String(err);
  }
}
