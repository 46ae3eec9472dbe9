/** The request id read from a ConnectError's metadata (headers and trailers joined with ", "). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { oneId } from "../src/errors.js";

test("an id in both headers and trailers is one id; other values pass unchanged", () => {
  assert.equal(oneId("node-bad-1, node-bad-1"), "node-bad-1");
  assert.equal(oneId("a, b, a, b"), "a, b");  // an id that itself holds ", ", sent twice
  assert.equal(oneId("a, b"), "a, b");        // one id holding ", "
  assert.equal(oneId("only-once"), "only-once");
  assert.equal(oneId(", "), ", ");
  assert.equal(oneId(null), undefined);
});
