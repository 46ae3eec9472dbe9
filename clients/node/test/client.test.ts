/** RewardClient against a real demo server (see demo-server.ts). */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code, PoolingTask, RewardServeError, type StreamResult } from "../src/index.js";
import { useDemoClient } from "./demo-server.js";

const demo = useDemoClient();

const user = (content: string) => ({ role: "user", content });
const assistant = (content: string) => ({ role: "assistant", content });

describe("unary calls", () => {
  test("modelInfo describes the demo model", async () => {
    const info = await demo.client.modelInfo();
    assert.equal(info.architecture, "Qwen3ForSequenceClassification");
    assert.deepEqual(info.labels, ["reward"]);
    assert.ok(info.tasks.includes(PoolingTask.TOKEN_EMBED));
  });

  test("encode classifies text and token ids, in input order, echoing the request id", async () => {
    const reply = await demo.client.encode({
      task: PoolingTask.CLASSIFY,
      inputs: [{ input: { case: "text", value: "hello world" } }, { input: { case: "tokenIds", value: { ids: [5, 6, 7] } } }],
      requestId: "node-encode-1",
    });
    assert.equal(reply.requestId, "node-encode-1");
    assert.deepEqual(reply.results.map((r) => r.index), [0, 1]);
    assert.deepEqual(reply.results[1].data?.shape, [1]);
    assert.equal(reply.results[1].numTokens, 3);
    assert.ok(Number.isFinite(reply.results[0].data!.values[0]));
  });

  test("a token_embed reply over gRPC's default 4 MiB arrives (the limit is raised)", async () => {
    // 17 x 1000 tokens x 64 dims x 4 bytes: 4.35 MB of floats.
    const ids = Array.from({ length: 1000 }, (_, i) => (i * 7) % 400);
    const reply = await demo.client.encode({
      task: PoolingTask.TOKEN_EMBED,
      inputs: Array.from({ length: 17 }, () => ({ input: { case: "tokenIds" as const, value: { ids } } })),
    }, { timeoutMs: 120_000 });
    const floats = reply.results.reduce((n, r) => n + r.data!.values.length, 0);
    assert.ok(floats * 4 > 4 * 1024 * 1024, `${floats * 4} bytes of floats`);
    assert.deepEqual(reply.results[0].data?.shape, [1000, 64]);
  });

  test("chatTemplateKwargs is a plain object and reaches the template", async () => {
    const template = "{% if shout %}LOUD LOUD LOUD {% endif %}{% for m in messages %}{{ m.content }}{% endfor %}";
    const request = { conversations: [{ messages: [user("hi"), assistant("there")] }], chatTemplate: template };
    const plain = await demo.client.chatReward(request);
    const shouted = await demo.client.chatReward({ ...request, chatTemplateKwargs: { shout: true } });
    assert.ok(shouted.results[0].numTokens > plain.results[0].numTokens,
      `${shouted.results[0].numTokens} vs ${plain.results[0].numTokens} tokens`);
  });

  test("chatReward scores a groups-only request; results carry group fields", async () => {
    const reply = await demo.client.chatReward({
      groups: [{ prompt: [user("2+2?")], responses: [{ content: { case: "text", value: "4" } },
        { content: { case: "text", value: "5" } }], groupId: "q1" }],
    });
    assert.deepEqual(reply.results.map((r) => [r.index, r.groupIndex, r.responseIndex, r.groupId]),
      [[0, 0, 0, "q1"], [1, 0, 1, "q1"]]);
  });

  test("bad input fails at once with INVALID_ARGUMENT naming the field, not retried", async () => {
    const started = performance.now();
    await assert.rejects(demo.client.encode({
      inputs: [{ input: { case: "text", value: "ok" } }, { input: { case: "tokenIds", value: { ids: [1, 99999] } } }],
      requestId: "node-bad-1",
    }), (error: unknown) => {
      assert.ok(error instanceof RewardServeError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.equal(error.codeName, "INVALID_ARGUMENT");
      assert.equal(error.requestId, "node-bad-1");
      assert.equal(error.fieldViolations[0]?.field, "inputs[1]");
      assert.match(error.details, /^inputs\[1\]/);
      return true;
    });
    assert.ok(performance.now() - started < 5_000);
  });

  test("a call past its deadline fails DEADLINE_EXCEEDED", async () => {
    const ids = Array.from({ length: 500 }, (_, i) => i % 400);
    await assert.rejects(demo.client.encode({
      task: PoolingTask.TOKEN_EMBED,
      inputs: Array.from({ length: 2 }, () => ({ input: { case: "tokenIds" as const, value: { ids } } })),
    }, { timeoutMs: 1 }), (error: unknown) => error instanceof RewardServeError && error.code === Code.DeadlineExceeded);
  });
});

describe("streamReward", () => {
  test("answers every item by id; a failed item is an error in the stream, which goes on", async () => {
    const items = [
      { id: "a", conversation: { messages: [user("hi"), assistant("hello")] }, groupId: "g" },
      { id: "bad", conversation: { messages: [{ role: "robot", content: "x" }] } },
      { id: "b", conversation: { messages: [user("bye"), assistant("ciao")] } },
    ];
    const answers = new Map<string, StreamResult>();
    for await (const answer of demo.client.streamReward(items, { options: { maxInFlight: 2 } })) {
      answers.set(answer.id, answer);
    }
    assert.deepEqual([...answers.keys()].sort(), ["a", "b", "bad"]);
    assert.equal(answers.get("a")?.result?.groupId, "g");
    assert.ok(answers.get("b")?.result);
    const failure = answers.get("bad")?.error;
    assert.equal(failure?.code, Code.InvalidArgument);
    assert.equal(failure?.itemId, "bad");
    assert.match(failure!.details, /robot/);
  });
});
