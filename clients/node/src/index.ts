/** @rewardserve/client: the Node client of rewardserve.v1. The generated messages are re-exported. */
export { RewardClient, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT_MS } from "./client.js";
export type {
  CallOptions, ChatRewardRequestInit, EncodeRequestInit, RewardClientOptions, ScoreOptions, StreamItemInit,
  StreamOptions, StreamResult, StreamRewardOptionsInit, TlsOptions,
} from "./client.js";
export type { ScoreFields, ScoreItem } from "./score.js";
export { RewardServeError, grpcCodeName, REQUEST_ID_KEY, RETRY_AFTER_KEY } from "./errors.js";
export type { FieldViolation } from "./errors.js";
export { DEFAULT_RETRY_POLICY, RETRYABLE, waitBeforeRetry } from "./retry.js";
export type { RetryEnvironment, RetryPolicy } from "./retry.js";
export * from "./gen/rewardserve/v1/reward_service_pb.js";
export { Code } from "@connectrpc/connect";
