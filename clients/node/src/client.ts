/**
 * RewardClient: the Node client of rewardserve.v1 (gRPC over HTTP/2 through Connect's Node
 * transport, messages from protobuf-es).
 *
 * What it guarantees: every call has a deadline (default 30 s, retries included); UNAVAILABLE
 * and RESOURCE_EXHAUSTED are retried with backoff, never sooner than the server's RetryInfo /
 * `retry-after-ms`; nothing else is retried, and streams are never retried; every call sends an
 * `x-request-id` (and the request's `request_id`), the same on each retry; replies up to 256 MiB
 * are accepted (token-level replies pass gRPC's usual 4 MiB); failures are RewardServeError.
 * `chatTemplateKwargs` is a plain object (protobuf-es maps google.protobuf.Struct to JSON).
 */
import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { type Client, type Transport, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  type ChatRewardResponse, type ChatRewardResult, ChatRewardRequestSchema, type EncodeResponse, EncodeRequestSchema,
  type GetModelInfoResponse, RewardService, type ScoreResponse, type StreamItemSchema, type StreamRewardOptionsSchema,
  type StreamRewardRequest, StreamRewardRequestSchema, type StreamRewardResponse,
} from "./gen/rewardserve/v1/reward_service_pb.js";
import { REQUEST_ID_KEY, RewardServeError, toRewardServeError } from "./errors.js";
import { type ScoreFields, type ScoreItem, scoreRequest } from "./score.js";
import { DEFAULT_RETRY_POLICY, REAL_ENVIRONMENT, type RetryEnvironment, type RetryPolicy,
  withRetries } from "./retry.js";

export const DEFAULT_TIMEOUT_MS = 30_000;
/** The server sends replies up to 256 MiB (`--max-send-message-mb`). */
export const DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024;

/** TLS settings: PEM strings or Buffers, as node:tls takes them. */
export interface TlsOptions {
  /** CA certificates to trust (default: the system's). */
  ca?: string | Buffer;
  /** Client certificate chain and key, for mutual TLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name to verify the server's certificate against (default: the target's host). */
  servername?: string;
}

export interface RewardClientOptions {
  /** `host:port` (or an `http://` / `https://` URL) of the server. Default `127.0.0.1:50051`. */
  target?: string;
  /** TLS: true for the system's roots, or TlsOptions. Default: plaintext (h2c). */
  tls?: boolean | TlsOptions;
  /** Default deadline of each call in ms, retries included; null: none. Default 30000. */
  timeoutMs?: number | null;
  /** Retry policy overrides. */
  retry?: Partial<RetryPolicy>;
  /** Metadata sent with every call (e.g. `{authorization: "Bearer ..."}`). */
  metadata?: Record<string, string>;
  /** Largest message read or written, in bytes. Default 256 MiB. */
  maxMessageBytes?: number;
  /** A ready Connect transport (replaces target, tls and maxMessageBytes). */
  transport?: Transport;
  /** Clock, sleep and random source of the retry loop (tests). */
  environment?: RetryEnvironment;
}

/** Per-call options. */
export interface CallOptions {
  /** This call's deadline in ms (default: the client's); null: none. */
  timeoutMs?: number | null;
  /** Metadata for this call, added to the client's. */
  metadata?: Record<string, string>;
  /** Cancels the call. */
  signal?: AbortSignal;
}

export type EncodeRequestInit = MessageInitShape<typeof EncodeRequestSchema>;
export type ChatRewardRequestInit = MessageInitShape<typeof ChatRewardRequestSchema>;
export type StreamItemInit = MessageInitShape<typeof StreamItemSchema>;
export type StreamRewardOptionsInit = MessageInitShape<typeof StreamRewardOptionsSchema>;

/** Options of one Score call: the request's fields and the call's own. */
export interface ScoreOptions extends CallOptions, ScoreFields {}

/** Options of one StreamReward call. */
export interface StreamOptions extends CallOptions {
  /** The stream's options (template, truncation, pooling, priority, max_in_flight). */
  options?: StreamRewardOptionsInit;
  /** The stream's request id (default: a new one). */
  requestId?: string;
}

/** One StreamReward answer: `result` on success, else `error` (the stream goes on). */
export interface StreamResult {
  id: string;
  result?: ChatRewardResult;
  error?: RewardServeError;
  /** This item's queue, compute and total seconds on the server. */
  timing: StreamRewardResponse["timing"];
}

function baseUrl(target: string, tls: boolean): string {
  if (/^https?:\/\//.test(target)) return target;
  return `${tls ? "https" : "http"}://${target}`;
}

/** Blocking-free client of one rewardserve server; `close()` ends its HTTP/2 session. */
export class RewardClient {
  private readonly client: Client<typeof RewardService>;
  private readonly policy: RetryPolicy;
  private readonly timeoutMs: number | undefined;
  private readonly metadata: Record<string, string>;
  private readonly environment: RetryEnvironment;
  private readonly abort = new AbortController();
  private readonly session: Http2SessionManager | undefined;

  constructor(options: RewardClientOptions = {}) {
    const tls = options.tls ?? false;
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    const url = baseUrl(options.target ?? "127.0.0.1:50051", tls !== false);
    // Our own session manager, so close() can end the HTTP/2 connection (else it idles on).
    this.session = options.transport ? undefined
      : new Http2SessionManager(url, {}, typeof tls === "object" ? { ...tls } : {});
    const transport = options.transport ?? createGrpcTransport({
      baseUrl: url, sessionManager: this.session, readMaxBytes: maxBytes, writeMaxBytes: maxBytes,
    });
    this.client = createClient(RewardService, transport);
    this.policy = { ...DEFAULT_RETRY_POLICY, ...options.retry };
    this.timeoutMs = options.timeoutMs === null ? undefined : (options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.metadata = { ...options.metadata };
    this.environment = options.environment ?? REAL_ENVIRONMENT;
  }

  /**
   * Run a pooling task (classify, token_classify, embed, token_embed) on texts or token ids.
   * An empty `requestId` is filled in (on a message given as such) and sent as `x-request-id`.
   */
  async encode(request: EncodeRequestInit, options: CallOptions = {}): Promise<EncodeResponse> {
    const message = create(EncodeRequestSchema, request);
    message.requestId ||= randomUUID();
    return this.unary((opts) => this.client.encode(message, opts), message.requestId, options);
  }

  /** Score conversations and/or groups rendered with the model's chat template. */
  async chatReward(request: ChatRewardRequestInit, options: CallOptions = {}): Promise<ChatRewardResponse> {
    const message = create(ChatRewardRequestSchema, request);
    message.requestId ||= randomUUID();
    return this.unary((opts) => this.client.chatReward(message, opts), message.requestId, options);
  }

  /**
   * Score `query` against each document (Score RPC): cross-encoders and rerankers read each
   * pair, embedding models give cosine similarities. Query and documents are texts or token ids
   * (without special tokens). Results come in document order, or the best `topN` best first.
   * Bad arguments are refused before sending (RewardServeError, INVALID_ARGUMENT, the message
   * leading with the parameter, e.g. `documents: must not be empty (score)`).
   */
  async score(query: ScoreItem, documents: readonly ScoreItem[] | string,
              options: ScoreOptions = {}): Promise<ScoreResponse> {
    const message = scoreRequest(query, documents, options, options.requestId || randomUUID());
    return this.unary((opts) => this.client.score(message, opts), message.requestId, options);
  }

  /** Describe the served model (pin it: tokenizer and chat template hashes, labels, limits). */
  async modelInfo(options: CallOptions = {}): Promise<GetModelInfoResponse> {
    return this.unary((opts) => this.client.getModelInfo({}, opts), randomUUID(), options);
  }

  /**
   * Score items over one StreamReward call as they come (each item its own message, the
   * options in the first) and yield their answers in completion order. A failed item yields a
   * StreamResult with `error`; a failed stream throws RewardServeError. Not retried.
   */
  async *streamReward(items: Iterable<StreamItemInit> | AsyncIterable<StreamItemInit>,
                      options: StreamOptions = {}): AsyncGenerator<StreamResult> {
    const requestId = options.requestId || randomUUID();
    const opts = this.callOptions(requestId, options, this.deadline(options));
    try {
      for await (const answer of this.client.streamReward(requests(items, options.options), opts)) {
        yield toStreamResult(answer, requestId);
      }
    } catch (reason) {
      throw toRewardServeError(reason, requestId);
    }
  }

  /** Cancel calls in flight on this client and close its connection. */
  close(): void {
    this.abort.abort();
    this.session?.abort();
  }

  private deadline(options: CallOptions): number | undefined {
    return options.timeoutMs === null ? undefined : (options.timeoutMs ?? this.timeoutMs);
  }

  private callOptions(requestId: string, options: CallOptions, timeLeftMs: number | undefined) {
    const signals = [this.abort.signal, ...(options.signal ? [options.signal] : [])];
    return {
      // Connect treats timeoutMs <= 0 as "no deadline": an exhausted budget must still expire.
      timeoutMs: timeLeftMs === undefined ? undefined : Math.max(1, Math.ceil(timeLeftMs)),
      headers: { ...this.metadata, ...options.metadata, [REQUEST_ID_KEY]: requestId },
      signal: AbortSignal.any(signals),
    };
  }

  private unary<T>(call: (opts: ReturnType<RewardClient["callOptions"]>) => Promise<T>, requestId: string,
                   options: CallOptions): Promise<T> {
    return withRetries((timeLeft) => call(this.callOptions(requestId, options, timeLeft)), this.policy,
      this.deadline(options), (reason) => toRewardServeError(reason, requestId), this.environment);
  }
}

async function* requests(items: Iterable<StreamItemInit> | AsyncIterable<StreamItemInit>,
                         options: StreamRewardOptionsInit | undefined): AsyncGenerator<StreamRewardRequest> {
  let first = true;
  for await (const item of items) {
    const message = create(StreamRewardRequestSchema, { items: [item] });
    if (first && options) message.options = create(StreamRewardRequestSchema, { options }).options;
    first = false;
    yield message;
  }
  if (first && options) yield create(StreamRewardRequestSchema, { options });
}

function toStreamResult(answer: StreamRewardResponse, requestId: string): StreamResult {
  const { outcome } = answer;
  if (outcome.case === "result") return { id: answer.id, result: outcome.value, timing: answer.timing };
  const failure = outcome.case === "error" ? outcome.value : undefined;
  const retryMs = failure && failure.retryAfterSeconds > 0 ? failure.retryAfterSeconds * 1000 : undefined;
  // An answer without an outcome breaks the contract: report it as UNKNOWN (2) for that item.
  const error = new RewardServeError(failure?.code ?? 2, failure?.message ?? "the answer has no outcome",
    requestId, retryMs, [], answer.id);
  return { id: answer.id, error, timing: answer.timing };
}
