/**
 * DHT keys (docs/p2p.md): a node serving layer i of the model with Ghost digest D
 * provides the CID v1 (codec raw, 0x55) of the SHA-256 multihash of
 * "ghost-tensor/layer/v1" || D || u32le(i); a node serving any layer of it provides
 * the CID of "ghost-tensor/ghost/v1" || D.
 */
import { CID } from 'multiformats/cid';
import { sha256 } from 'multiformats/hashes/sha2';

import { InvalidArgumentError } from '../shared/errors.js';

const RAW = 0x55;
const enc = new TextEncoder();

function checkDigest(digest: Uint8Array): void {
  if (!(digest instanceof Uint8Array) || digest.length !== 32) throw new InvalidArgumentError('digest must be a 32-byte Ghost digest');
}

async function cidOf(bytes: Uint8Array): Promise<CID> {
  return CID.createV1(RAW, await sha256.digest(bytes));
}

/** The DHT key announcing the model with this Ghost digest. */
export async function ghostKey(digest: Uint8Array): Promise<CID> {
  checkDigest(digest);
  const tag = enc.encode('ghost-tensor/ghost/v1');
  const b = new Uint8Array(tag.length + 32);
  b.set(tag);
  b.set(digest, tag.length);
  return cidOf(b);
}

/** The DHT key announcing layer `layer` of the model with this Ghost digest. */
export async function layerKey(digest: Uint8Array, layer: number): Promise<CID> {
  checkDigest(digest);
  if (!Number.isInteger(layer) || layer < 0 || layer > 2 ** 32 - 1) throw new InvalidArgumentError('layer must be a u32');
  const tag = enc.encode('ghost-tensor/layer/v1');
  const b = new Uint8Array(tag.length + 36);
  b.set(tag);
  b.set(digest, tag.length);
  new DataView(b.buffer).setUint32(tag.length + 32, layer, true);
  return cidOf(b);
}
