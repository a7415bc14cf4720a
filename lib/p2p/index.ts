/**
 * Peers over libp2p (docs/p2p.md): layer nodes serving spans of a model with proofs,
 * announced on a Kademlia DHT, and a client that runs a verified forward pass across
 * them. libp2p is loaded on first use (after a Node 20 polyfill).
 */
export { DHT_PROTOCOL, installP2PPolyfills } from './host.js';
export type { GhostLibp2p, HostOptions } from './host.js';
export { FORWARD_PROTOCOL, FRAME_LIMITS, FRAME_VERSION, STATUS, decodeRequest, decodeResponse, encodeRequest, encodeResponse, sameInput } from './frames.js';
export type { ErrorStatus, ForwardRequest, ForwardResponse, ResponseStatus } from './frames.js';
export { ghostKey, layerKey } from './keys.js';
export { LayerNode, modelProver } from './node.js';
export type { LayerNodeOptions, LayerNodeStats, LayerProver } from './node.js';
export { GhostClient, P2PForwardError } from './client.js';
export type { DropReason, DroppedPeer, Hop, P2PForwardOptions, P2PForwardResult } from './client.js';
