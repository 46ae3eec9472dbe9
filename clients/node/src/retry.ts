/**
 * The client's own retry loop. gRPC's built-in retries read neither google.rpc.RetryInfo nor
 * retry once response headers have arrived (the server sends `x-request-id` early), so they
 * would never retry rewardserve's RESOURCE_EXHAUSTED. Only UNAVAILABLE (not up, not warm,
 * draining) and RESOURCE_EXHAUSTED (admission limit) are retried: both mean the work was not
 * started, so a retry never computes anything twice.
 */
import { Code } from "@connectrpc/connect";
import type { RewardServeError } from "./errors.js";

export const RETRYABLE: ReadonlySet<Code> = new Set([Code.Unavailable, Code.ResourceExhausted]);

/** Exponential backoff with jitter; the server's retry delay is a floor. */
export interface RetryPolicy {
  /** Retries after the first attempt. Default 3. */
  maxRetries: number;
  /** Backoff before the first retry, ms. Default 100. */
  initialBackoffMs: number;
  /** Longest backoff, ms. Default 5000. */
  maxBackoffMs: number;
  /** Growth of the backoff per retry. Default 2. */
  backoffMultiplier: number;
  /** Fraction of randomness: the backoff is scaled by a factor in [1 - jitter, 1]. Default 0.2. */
  jitter: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxRetries: 3, initialBackoffMs: 100, maxBackoffMs: 5000, backoffMultiplier: 2, jitter: 0.2,
};

/** The clock, sleep and random source of the loop: replaceable in tests. */
export interface RetryEnvironment {
  now(): number;
  sleep(ms: number): Promise<void>;
  random(): number;
}

export const REAL_ENVIRONMENT: RetryEnvironment = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  random: Math.random,
};

/** Milliseconds to wait before retry number `retry` (0-based), or undefined: give up now. */
export function waitBeforeRetry(policy: RetryPolicy, retry: number, error: RewardServeError,
                                timeLeftMs: number | undefined, random: () => number): number | undefined {
  if (!RETRYABLE.has(error.code) || retry >= policy.maxRetries) return undefined;
  const base = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.backoffMultiplier ** retry);
  let wait = base * (1 - policy.jitter * random());
  if (error.retryDelayMs !== undefined) {
    // The server knows when it will have room: jitter only ever adds to its delay.
    wait = Math.max(wait, error.retryDelayMs * (1 + policy.jitter * random()));
  }
  // A retry that could not finish in time would hide the real cause behind DEADLINE_EXCEEDED.
  if (timeLeftMs !== undefined && wait >= timeLeftMs) return undefined;
  return wait;
}

/**
 * Run `attempt(timeLeftMs)` until it succeeds or must fail. `timeoutMs` bounds all attempts
 * and waits together (undefined: no deadline). `toError` turns a failure into a RewardServeError.
 */
export async function withRetries<T>(attempt: (timeLeftMs: number | undefined) => Promise<T>,
                                     policy: RetryPolicy, timeoutMs: number | undefined,
                                     toError: (reason: unknown) => RewardServeError,
                                     env: RetryEnvironment = REAL_ENVIRONMENT): Promise<T> {
  const deadline = timeoutMs === undefined ? undefined : env.now() + timeoutMs;
  const timeLeft = () => (deadline === undefined ? undefined : Math.max(0, deadline - env.now()));
  for (let retry = 0; ; retry++) {
    try {
      return await attempt(timeLeft());
    } catch (reason) {
      const error = toError(reason);
      const wait = waitBeforeRetry(policy, retry, error, timeLeft(), env.random);
      if (wait === undefined) throw error;
      await env.sleep(wait);
    }
  }
}
