/**
 * Training together (docs/swarm.md): untrusted peers train one model over libp2p with
 * step proofs; a sequencer orders them into a log that every peer verifies. libp2p is
 * loaded on first use (after the Node 20 polyfill of lib/p2p/host.ts).
 */
export { SwarmPeer } from './peer.js';
export type { CatchUpOptions, ProposeResult, SignedLogMessage, SwarmEquivocation, SwarmOptions, SwarmRejection, SwarmStats } from './peer.js';
export {
  CHECKPOINT_FILE_NAME, CHECKPOINT_LIMITS, SWARM_CHECKPOINT_PROTOCOL, decodeCheckpointRequest, decodeCheckpointResponse, encodeCheckpointRequest, encodeCheckpointResponse,
  LOG_STATUS, SWARM_LIMITS, SWARM_LOG_PROTOCOL, SWARM_VERSION, decodeLogAnnouncement, decodeLogEntry, decodeLogRequest, decodeLogResponse,
  decodeStepMessage, encodeLogAnnouncement, encodeLogEntry, encodeLogRequest, encodeLogResponse, encodeStepMessage, isLogAnnouncement, swarmTopics,
} from './frames.js';
export type { CheckpointFile, CheckpointRequest, CheckpointResponse, LogAnnouncement, LogEntry, LogHeader, LogRequest, LogResponse, LogStatus } from './frames.js';
