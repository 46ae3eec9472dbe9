/**
 * The Node client's conformance runner: every case of clients/conformance/cases.json through
 * RewardClient, compared with the reference answers the harness wrote (see cases.json "about").
 *
 *   node dist/conformance/run.js CASES REFERENCE     (REWARDSERVE_TARGET: the demo server)
 */
import { readFileSync } from "node:fs";
import { fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import {
  ChatRewardRequestSchema, ChatRewardResponseSchema, ChatRewardResultSchema, EncodeRequestSchema,
  EncodeResponseSchema, GetModelInfoResponseSchema, grpcCodeName, RewardClient, RewardServeError,
  type ScoreInput, ScoreRequestSchema, ScoreResponseSchema, type ScoreItem, StreamItemSchema, StreamRewardOptionsSchema,
} from "../src/index.js";

type Json = JsonValue;
type Outcome = { ok: Json } | { code: string; field: string; message: string };
interface Rule { abs: number; rel: number; ignore: Set<string> }
interface Case { name: string; call: string; request: Record<string, any>; expect: Record<string, any> }

const ZERO = (v: unknown) => v === undefined || v === null || v === 0 || v === false || v === ""
  || (Array.isArray(v) && v.length === 0) || (typeof v === "object" && v !== null && !Array.isArray(v) && Object.keys(v).length === 0);
const isObject = (v: unknown): v is Record<string, Json> => typeof v === "object" && v !== null && !Array.isArray(v);
const asNumber = (v: unknown): number | undefined => v === undefined || v === null ? 0
  : typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" && !Number.isNaN(Number(v)) ? Number(v) : undefined;

/** Where `actual` departs from `expected`: the rule of cases.json (proto3 defaults may be left out). */
export function differences(expected: unknown, actual: unknown, rule: Rule, path = "$"): string[] {
  if (isObject(expected) || isObject(actual)) {
    if (ZERO(expected) && ZERO(actual)) return [];
    if (!isObject(expected) || !isObject(actual)) return [`${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`];
    const keys = [...new Set([...Object.keys(expected), ...Object.keys(actual)])].sort();
    return keys.filter((k) => !rule.ignore.has(k)).flatMap((k) => differences(expected[k], actual[k], rule, `${path}.${k}`));
  }
  if (Array.isArray(expected) || Array.isArray(actual)) {
    const e = (expected ?? []) as unknown[], a = (actual ?? []) as unknown[];
    if (!Array.isArray(e) || !Array.isArray(a) || e.length !== a.length) return [`${path}: expected ${e.length} items`];
    return e.flatMap((item, i) => differences(item, a[i], rule, `${path}[${i}]`));
  }
  if (typeof expected === "number" || typeof actual === "number") {
    const e = asNumber(expected), a = asNumber(actual);
    const close = e !== undefined && a !== undefined && Math.abs(a - e) <= rule.abs + rule.rel * Math.abs(e);
    return close ? [] : [`${path}: expected ${expected}, got ${actual}`];
  }
  return (ZERO(expected) && ZERO(actual)) || expected === actual ? [] : [`${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`];
}

/** Whether an error message names `field`: it starts with it or contains `field:`. */
const names = (message: string, field: string) => message.startsWith(field) || message.includes(`${field}:`);

function matches(want: Record<string, any>, got: Record<string, any>): boolean {
  return got.code === want.code && (got.field === want.field || names(got.message ?? "", want.field));
}

async function outcome(call: () => Promise<Json>): Promise<Outcome> {
  try {
    return { ok: await call() };
  } catch (error) {
    if (!(error instanceof RewardServeError)) throw error;
    return { code: error.codeName, field: error.fieldViolations[0]?.field ?? "", message: error.details };
  }
}

/** A ScoreInput message as the argument `RewardClient.score` takes: text, or token ids. */
const scoreItem = (input: ScoreInput | undefined): ScoreItem =>
  input?.input.case === "tokenIds" ? input.input.value.ids : input?.input.case === "text" ? input.input.value : [];

async function score(client: RewardClient, request: Json): Promise<Json> {
  const r = fromJson(ScoreRequestSchema, request);
  const reply = await client.score(scoreItem(r.query), r.documents.map(scoreItem), {
    topN: r.topN, truncatePromptTokens: r.truncation?.truncatePromptTokens, truncationSide: r.truncation?.side,
    instruction: r.instruction || undefined, priority: r.priority, requestId: r.requestId || undefined,
  });
  return toJson(ScoreResponseSchema, reply);
}

async function run(client: RewardClient, c: Case): Promise<unknown> {
  switch (c.call) {
    case "modelInfo":
      return outcome(async () => toJson(GetModelInfoResponseSchema, await client.modelInfo()));
    case "encode":
      return outcome(async () => toJson(EncodeResponseSchema, await client.encode(fromJson(EncodeRequestSchema, c.request))));
    case "chatReward":
      return outcome(async () => toJson(ChatRewardResponseSchema, await client.chatReward(fromJson(ChatRewardRequestSchema, c.request))));
    case "score":
      return outcome(() => score(client, c.request));
    case "streamReward": {
      const answers: Record<string, Record<string, any>[]> = {};
      const items = (c.request.items as Json[]).map((item) => fromJson(StreamItemSchema, item));
      const options = fromJson(StreamRewardOptionsSchema, c.request.options ?? {});
      for await (const answer of client.streamReward(items, { options })) {
        const entry = answer.result ? { ok: toJson(ChatRewardResultSchema, answer.result) }
          : { code: grpcCodeName(answer.error!.code), message: answer.error!.details };
        (answers[answer.id] ??= []).push(entry);
      }
      return answers;
    }
    default:
      throw new Error(`unknown call ${c.call}`);
  }
}

function compare(c: Case, ref: any, got: any, rule: Rule): string[] {
  if (c.expect.answers) {
    const ids = [...new Set([...Object.keys(ref), ...Object.keys(got)])].sort();
    return ids.flatMap((id) => {
      const expected: any[] = ref[id] ?? [], actual: any[] = got[id] ?? [];
      if (expected.length !== actual.length) return [`item '${id}': ${actual.length} answers, expected ${expected.length}`];
      return expected.flatMap((e, i) => "ok" in e ? differences(e.ok, actual[i].ok, rule).map((d) => `item '${id}': ${d}`)
        : actual[i].code === e.code && names(actual[i].message ?? "", c.expect.answers[id].field) ? []
          : [`item '${id}': expected ${JSON.stringify(c.expect.answers[id])}, got ${JSON.stringify(actual[i])}`]);
    });
  }
  if ("ok" in ref) return "ok" in got ? differences(ref.ok, got.ok, rule) : [`expected success, got ${JSON.stringify(got)}`];
  return matches(c.expect, got) ? [] : [`expected ${JSON.stringify(c.expect)}, got ${JSON.stringify(got)}`];
}

async function main(): Promise<number> {
  const [casesPath, referencePath] = process.argv.slice(2);
  const suite = JSON.parse(readFileSync(casesPath, "utf8"));
  const reference = JSON.parse(readFileSync(referencePath, "utf8"));
  const rule: Rule = { abs: suite.tolerance.abs, rel: suite.tolerance.rel, ignore: new Set(suite.ignore) };
  const client = new RewardClient({ target: process.env.REWARDSERVE_TARGET, timeoutMs: 60_000 });
  let passed = 0, failed = 0;
  for (const c of suite.cases as Case[]) {
    const problems = compare(c, reference[c.name], await run(client, c), rule);
    if (problems.length) {
      failed++;
      console.log(`FAIL ${c.name}: ${problems.slice(0, 5).join("; ")}`);
    } else {
      passed++;
    }
  }
  client.close();
  console.log(`node: ${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

process.exitCode = await main();
