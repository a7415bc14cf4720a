import { FormatError, ProofError, RemoteError, StorageError } from '../../lib/index.js';

/**
 * How a verification (or a request) ended: the `reason` of a typed refusal
 * (ProofError, FormatError, StorageError, RemoteError), 'ACCEPTED' when it succeeded;
 * any other error is rethrown.
 */
export async function reason(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof ProofError || err instanceof FormatError || err instanceof StorageError || err instanceof RemoteError) return err.reason;
    throw err;
  }
  return 'ACCEPTED';
}
