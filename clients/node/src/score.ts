/**
 * The Score call's request builder: a query against documents, each text or token ids.
 *
 * Bad arguments are refused here, before anything is sent, with the same error family as the
 * server's refusals (RewardServeError, INVALID_ARGUMENT) and the Python client's wording: the
 * message leads with the parameter and item, e.g. `documents: must not be empty (score)`.
 */
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  type ScoreInput, ScoreInputSchema, type ScoreRequest, ScoreRequestSchema, TruncationSide,
} from "./gen/rewardserve/v1/reward_service_pb.js";
import { RewardServeError } from "./errors.js";

/** A query or one document: text, or token ids of the served model's tokenizer without special tokens. */
export type ScoreItem = string | readonly number[] | Uint32Array;

/** The Score call's options (besides the call's own deadline, metadata and signal). */
export interface ScoreFields {
  /** Keep the best N results, best first; 0 (default): every result, in document order. */
  topN?: number;
  /** Cut over-long pairs to this many tokens (-1: the model's maximum); only the document is
   * cut. Unset refuses over-long pairs. */
  truncatePromptTokens?: number;
  /** Which end embedding models cut ("left" or "right"); pairs always cut the document's end. */
  truncationSide?: "left" | "right" | TruncationSide;
  /** A decoder reranker's instruction (e.g. Qwen3-Reranker's `<Instruct>`); other models refuse one. */
  instruction?: string;
  /** Scheduling priority: lower values run first (default 0). */
  priority?: number;
  /** The request id (default: a new one). */
  requestId?: string;
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

/** A refusal by the client itself (nothing was sent): `details` starts with the parameter. */
export function invalidArgument(field: string, problem: string): RewardServeError {
  return new RewardServeError(Code.InvalidArgument, `${field}: ${problem}`, "", undefined,
    [{ field, description: problem }]);
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value === "object" ? (value.constructor?.name ?? "object") : typeof value;
}

function short(value: unknown): string {
  const text = typeof value === "string" ? JSON.stringify(value) : String(value);
  return text.length <= 40 ? text : `${text.slice(0, 37)}...`;
}

function scoreInput(item: unknown, where: string): ScoreInput {
  if (typeof item === "string") return create(ScoreInputSchema, { input: { case: "text", value: item } });
  if (!Array.isArray(item) && !(item instanceof Uint32Array)) {
    throw invalidArgument(where, `expected a string or an array of token ids, got ${describe(item)}`);
  }
  const ids = Array.from(item as ArrayLike<unknown>);
  ids.forEach((id, j) => {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= 2 ** 32) {
      throw invalidArgument(`${where}.token_ids[${j}]`, `token ids are integers in [0, 2**32), got ${short(id)}`);
    }
  });
  return create(ScoreInputSchema, { input: { case: "tokenIds", value: { ids: ids as number[] } } });
}

function integer(value: unknown, field: string, min: number, max: number, what: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw invalidArgument(field, `must be ${what}, got ${short(value)}`);
  }
  return value;
}

function side(value: ScoreFields["truncationSide"]): TruncationSide {
  if (value === undefined || value === TruncationSide.UNSPECIFIED) return TruncationSide.UNSPECIFIED;
  if (value === "left" || value === TruncationSide.LEFT) return TruncationSide.LEFT;
  if (value === "right" || value === TruncationSide.RIGHT) return TruncationSide.RIGHT;
  throw invalidArgument("truncationSide", `unknown value ${short(value)}; expected one of: left, right`);
}

/** A ScoreRequest from the arguments of `RewardClient.score`, checked as the Python client does. */
export function scoreRequest(query: ScoreItem, documents: readonly ScoreItem[] | string, fields: ScoreFields,
                             requestId: string): ScoreRequest {
  const topN = integer(fields.topN ?? 0, "topN", 0, 2 ** 32 - 1, "a non-negative integer");
  if (typeof documents !== "string" && !Array.isArray(documents)) {
    throw invalidArgument("documents", `expected an array of texts or token id arrays, got ${describe(documents)}`);
  }
  const docs: readonly unknown[] = typeof documents === "string" ? [documents] : documents;
  if (docs.length === 0) throw invalidArgument("documents", "must not be empty (score)");
  if (fields.instruction !== undefined && typeof fields.instruction !== "string") {
    throw invalidArgument("instruction", `expected a string, got ${describe(fields.instruction)}`);
  }
  const priority = integer(fields.priority ?? 0, "priority", INT32_MIN, INT32_MAX, "an int32");
  const truncateSide = side(fields.truncationSide);
  const cut = fields.truncatePromptTokens === undefined ? undefined
    : integer(fields.truncatePromptTokens, "truncatePromptTokens", INT32_MIN, INT32_MAX, "an int32");
  const truncation = cut === undefined && truncateSide === TruncationSide.UNSPECIFIED ? undefined
    : { truncatePromptTokens: cut, side: truncateSide };
  return create(ScoreRequestSchema, {
    query: scoreInput(query, "query"),
    documents: docs.map((doc, i) => scoreInput(doc, `documents[${i}]`)),
    topN, truncation, instruction: fields.instruction ?? "", priority, requestId,
  });
}
