/**
 * RewardServeError: every failed call of the Node client, with the server's error model decoded:
 * the gRPC code, the message (naming the field and item for bad input), the request id, the
 * google.rpc.BadRequest field violations and the retry delay (google.rpc.RetryInfo, else the
 * `retry-after-ms` trailer).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export const REQUEST_ID_KEY = "x-request-id";
export const RETRY_AFTER_KEY = "retry-after-ms";

/** One google.rpc.BadRequest field violation: `field` is e.g. `inputs[1]`. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call (or, with `itemId`, one failed StreamReward item). The cause is the ConnectError. */
export class RewardServeError extends Error {
  override name = "RewardServeError";

  constructor(
    /** The gRPC status code (Connect's `Code` enum has gRPC's numbers). */
    readonly code: Code,
    /** The server's message, e.g. `inputs[1]: token id 99999 is not below vocab_size 512`. */
    readonly details: string,
    /** The request id: the server's `x-request-id`, else the one this client sent. */
    readonly requestId: string,
    /** Milliseconds the server asked callers to wait before retrying, or undefined. */
    readonly retryDelayMs: number | undefined = undefined,
    /** The google.rpc.BadRequest field violations (INVALID_ARGUMENT). */
    readonly fieldViolations: FieldViolation[] = [],
    /** The StreamReward item this error is about; undefined for a whole call. */
    readonly itemId: string | undefined = undefined,
    options?: { cause?: unknown },
  ) {
    super(`${Code[code] ?? code}: ${details}${requestId ? ` (request id ${requestId})` : ""}`, options);
  }

  /** The status name in gRPC's spelling, e.g. `INVALID_ARGUMENT`. */
  get codeName(): string {
    return grpcCodeName(this.code);
  }
}

/** `Code.InvalidArgument` -> `INVALID_ARGUMENT`. */
export function grpcCodeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** The retry delay a failure carries: RetryInfo first, else the `retry-after-ms` trailer. */
export function retryDelayMs(error: ConnectError): number | undefined {
  const [info] = error.findDetails(RetryInfoSchema);
  if (info?.retryDelay) {
    return Number(info.retryDelay.seconds) * 1000 + info.retryDelay.nanos / 1e6;
  }
  const header = error.metadata.get(RETRY_AFTER_KEY);
  const ms = header === null ? NaN : Number(header);
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}

/**
 * The server's request id from a ConnectError's metadata, which joins headers and trailers with
 * ", ": a failure carries the id in both (a refusal may end the call before its headers arrive),
 * so two equal halves are one id. An id may itself contain ", ": only an exact repeat is folded.
 */
export function oneId(joined: string | null): string | undefined {
  if (joined === null) return undefined;
  const half = (joined.length - 2) / 2;
  if (Number.isInteger(half) && half > 0 && joined.slice(half, half + 2) === ", "
      && joined.slice(0, half) === joined.slice(half + 2)) {
    return joined.slice(0, half);
  }
  return joined;
}

/** Any failure of a call as a RewardServeError (a ConnectError keeps its code and details). */
export function toRewardServeError(reason: unknown, sentRequestId: string): RewardServeError {
  const error = ConnectError.from(reason);
  const violations = error.findDetails(BadRequestSchema).flatMap((bad) =>
    bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
  const requestId = oneId(error.metadata.get(REQUEST_ID_KEY)) ?? sentRequestId;
  return new RewardServeError(error.code, error.rawMessage, requestId, retryDelayMs(error),
    violations, undefined, { cause: error });
}
