/** RewardClient.score against a real demo server (see demo-server.ts), and its own refusals. */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { Code, RewardClient, RewardServeError, ScoreMethod } from "../src/index.js";
import { useDemoClient } from "./demo-server.js";

const demo = useDemoClient();

const QUERY = "What is the answer?";
const DOCS = ["The answer is 42.", "Step one: add the numbers.", "good, bad, better, best"];
const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

describe("score", () => {
  test("a text query against text documents: one result per document, in input order", async () => {
    const reply = await demo.client.score(QUERY, DOCS, { requestId: "node-score-1" });
    assert.equal(reply.requestId, "node-score-1");
    // The demo model has one label and no reranker head: a cross-encoder reading each pair.
    assert.equal(reply.method, ScoreMethod.CROSS_ENCODER);
    assert.deepEqual(reply.results.map((r) => r.index), [0, 1, 2]);
    for (const r of reply.results) {
      assert.ok(r.logit !== undefined, "a head's raw logit is reported");
      assert.ok(Math.abs(r.score - sigmoid(r.logit)) < 1e-5, `${r.score} vs sigmoid(${r.logit})`);
      assert.ok(r.numTokens > 0 && !r.truncated);
    }
    assert.equal(reply.usage?.numSequences, 3);
  });

  test("topN returns the best N, best first, with the scores of the full reply", async () => {
    const all = await demo.client.score(QUERY, DOCS);
    const best = await demo.client.score(QUERY, DOCS, { topN: 2 });
    const expected = [...all.results].sort((a, b) => b.score - a.score).slice(0, 2);
    assert.deepEqual(best.results.map((r) => r.index), expected.map((r) => r.index));
    best.results.forEach((r, i) => assert.ok(Math.abs(r.score - expected[i].score) < 1e-5));
    assert.ok(best.results[0].score >= best.results[1].score);
  });

  test("token ids score like the same text, and a single string is one document", async () => {
    const one = await demo.client.score([11, 12, 13], "The answer is 42.");
    assert.equal(one.results.length, 1);
    const ids = await demo.client.score([11, 12, 13], [[20, 21], new Uint32Array([30, 31, 32])]);
    assert.deepEqual(ids.results.map((r) => r.index), [0, 1]);
    assert.ok(ids.results[1].numTokens > ids.results[0].numTokens, "the longer document reads more tokens");
  });

  test("truncation keeps the query and cuts the document", async () => {
    const long = Array.from({ length: 50 }, (_, i) => 10 + i);
    const reply = await demo.client.score([1, 2, 3], [long], { truncatePromptTokens: 20 });
    assert.equal(reply.results[0].truncated, true);
    assert.ok(reply.results[0].numTokens <= 20, `${reply.results[0].numTokens} tokens`);
  });

  test("the server's refusal names the document: INVALID_ARGUMENT, not retried", async () => {
    await assert.rejects(demo.client.score(QUERY, ["fine", [1, 99999]], { requestId: "node-score-bad" }), (error: unknown) => {
      assert.ok(error instanceof RewardServeError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.equal(error.requestId, "node-score-bad");
      assert.match(error.details, /^documents\[1\]/);
      return true;
    });
  });
});

describe("score refusals before sending", () => {
  // Nothing listens on this client's target: a call that were sent would fail UNAVAILABLE.
  const offline = new RewardClient({ target: "127.0.0.1:9", timeoutMs: 2_000 });
  after(() => offline.close());

  const cases: [string, () => Promise<unknown>, string][] = [
    ["empty documents", () => offline.score("q", []), "documents: must not be empty (score)"],
    ["documents not a list", () => offline.score("q", 5 as never), "documents: expected an array of texts or token id arrays, got number"],
    ["a query object", () => offline.score({ text: "q" } as never, ["d"]), "query: expected a string or an array of token ids, got Object"],
    ["a negative token id", () => offline.score("q", ["d", [1, -2]]), "documents[1].token_ids[1]: token ids are integers in [0, 2**32), got -2"],
    ["a fractional token id", () => offline.score([1.5], ["d"]), "query.token_ids[0]: token ids are integers in [0, 2**32), got 1.5"],
    ["a negative topN", () => offline.score("q", ["d"], { topN: -1 }), "topN: must be a non-negative integer, got -1"],
    ["an instruction not a string", () => offline.score("q", ["d"], { instruction: 3 as never }), "instruction: expected a string, got number"],
    ["an unknown truncation side", () => offline.score("q", ["d"], { truncationSide: "middle" as never }), "truncationSide: unknown value \"middle\""],
    ["a priority not an int32", () => offline.score("q", ["d"], { priority: 2 ** 40 }), "priority: must be an int32"],
  ];
  for (const [name, call, message] of cases) {
    test(`${name}: INVALID_ARGUMENT leading with the parameter`, async () => {
      await assert.rejects(call(), (error: unknown) => {
        assert.ok(error instanceof RewardServeError, String(error));
        assert.equal(error.code, Code.InvalidArgument);
        assert.ok(error.details.startsWith(message), error.details);
        assert.equal(error.fieldViolations[0]?.field, message.split(":")[0]);
        return true;
      });
    });
  }
});
