/**
 * The retry loop against a real gRPC server (Connect's Node adapter on a free port) whose
 * RewardService fails on purpose, so each attempt, delay and header can be observed.
 */
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { RetryInfoSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { GetModelInfoResponseSchema, RewardClient, RewardServeError, RewardService, waitBeforeRetry,
  DEFAULT_RETRY_POLICY } from "../src/index.js";

interface Attempt { at: number; requestId: string | null; token: string | null }
let failures: ConnectError[] = [];
const attempts: Attempt[] = [];
let server: http2.Http2Server;
let target: string;

function routes(router: ConnectRouter) {
  router.service(RewardService, {
    async getModelInfo(_request, context) {
      attempts.push({ at: performance.now(), requestId: context.requestHeader.get("x-request-id"),
        token: context.requestHeader.get("authorization") });
      const failure = failures.shift();
      if (failure) throw failure;
      return create(GetModelInfoResponseSchema, { model: "fake" });
    },
  });
}

before(async () => {
  server = http2.createServer(connectNodeAdapter({ routes, grpc: true, connect: false, grpcWeb: false }));
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  target = `127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => new Promise<void>((ok) => server.close(() => ok())));

function reset(...next: ConnectError[]) {
  failures = next;
  attempts.length = 0;
}

const overloaded = (ms: number) => new ConnectError("queue full", Code.ResourceExhausted, undefined,
  [{ desc: RetryInfoSchema, value: { retryDelay: { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1e6 } } }]);

test("RESOURCE_EXHAUSTED is retried no sooner than RetryInfo, with the same request id", async () => {
  reset(overloaded(300), overloaded(300));
  const client = new RewardClient({ target, metadata: { authorization: "Bearer t0ken" } });
  const info = await client.modelInfo();
  client.close();
  assert.equal(info.model, "fake");
  assert.equal(attempts.length, 3);
  for (let i = 1; i < attempts.length; i++) {
    assert.ok(attempts[i].at - attempts[i - 1].at >= 295, `gap ${attempts[i].at - attempts[i - 1].at} ms`);
  }
  assert.equal(new Set(attempts.map((a) => a.requestId)).size, 1);
  assert.ok(attempts[0].requestId);
  assert.deepEqual(attempts.map((a) => a.token), Array(3).fill("Bearer t0ken"));
});

test("retry-after-ms is honoured when the status carries no RetryInfo", async () => {
  reset(new ConnectError("busy", Code.ResourceExhausted, { "retry-after-ms": "250" }));
  const client = new RewardClient({ target });
  await client.modelInfo();
  client.close();
  assert.equal(attempts.length, 2);
  assert.ok(attempts[1].at - attempts[0].at >= 245);
});

test("UNAVAILABLE is retried up to maxRetries, then raised", async () => {
  reset(...Array.from({ length: 5 }, () => new ConnectError("warming up", Code.Unavailable)));
  const client = new RewardClient({ target, retry: { maxRetries: 2, initialBackoffMs: 10 } });
  await assert.rejects(client.modelInfo(), (e: unknown) => e instanceof RewardServeError && e.code === Code.Unavailable);
  client.close();
  assert.equal(attempts.length, 3);
});

test("other codes are never retried", async () => {
  for (const code of [Code.InvalidArgument, Code.Internal, Code.DeadlineExceeded, Code.AlreadyExists]) {
    reset(new ConnectError("no", code));
    const client = new RewardClient({ target, retry: { initialBackoffMs: 10 } });
    await assert.rejects(client.modelInfo(), (e: unknown) => e instanceof RewardServeError && e.code === code);
    client.close();
    assert.equal(attempts.length, 1, Code[code]);
  }
});

test("a retry delay past the deadline raises the real cause at once", async () => {
  reset(overloaded(5_000));
  const client = new RewardClient({ target, timeoutMs: 1_000 });
  const started = performance.now();
  await assert.rejects(client.modelInfo(), (e: unknown) => e instanceof RewardServeError
    && e.code === Code.ResourceExhausted && e.retryDelayMs === 5_000);
  client.close();
  assert.ok(performance.now() - started < 900);
  assert.equal(attempts.length, 1);
});

test("waitBeforeRetry: backoff grows, jitter only lowers it, the server's delay is a floor", () => {
  const error = (code: Code, retryDelayMs?: number) => new RewardServeError(code, "x", "", retryDelayMs);
  const policy = { ...DEFAULT_RETRY_POLICY, jitter: 0 };
  assert.equal(waitBeforeRetry(policy, 0, error(Code.Unavailable), undefined, Math.random), 100);
  assert.equal(waitBeforeRetry(policy, 2, error(Code.Unavailable), undefined, Math.random), 400);
  assert.equal(waitBeforeRetry(policy, 0, error(Code.ResourceExhausted, 700), undefined, Math.random), 700);
  assert.equal(waitBeforeRetry(policy, 3, error(Code.Unavailable), undefined, Math.random), undefined);
  assert.equal(waitBeforeRetry(DEFAULT_RETRY_POLICY, 0, error(Code.Unavailable), undefined, () => 1), 80);
});
