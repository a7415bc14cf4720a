/** The prover service (docs/serving.md): an HTTP server over a Model and its verifying client. */
export { ProverServer } from './server.js';
export type { ProverServerOptions, RequestLogEntry, ServerLogOption, ServerStats } from './server.js';
export { ProverClient } from './client.js';
export type { CallOptions, ProverClientOptions, ServedForward, ServedStep, ServedTrainStep, StepExamples } from './client.js';
export { WIRE_LIMITS, decodeForwardRequest, decodeProofList, decodeStepRequest, decodeTrainRequest, encodeForwardRequest, encodeProofList, encodeStepRequest, encodeTrainRequest } from './wire.js';
export type { ForwardInput, StepRequest, WireGrad } from './wire.js';
