/**
 * The real demo server the tests call: REWARDSERVE_TARGET when the caller started one (make
 * clients-test shares one across languages), else `rewardserve serve` on a free port from the
 * project venv (REWARDSERVE_BIN), stopped when the tests end.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { resolve } from "node:path";
import { after, before } from "node:test";
import { RewardClient } from "../src/index.js";

export interface DemoServer {
  target: string;
  stop(): Promise<void>;
}

const LISTENING = /listening on [^\s]*:(\d+)/;

export async function demoServer(extraArgs: string[] = []): Promise<DemoServer> {
  if (process.env.REWARDSERVE_TARGET && extraArgs.length === 0) {
    return { target: process.env.REWARDSERVE_TARGET, stop: async () => {} };
  }
  const bin = process.env.REWARDSERVE_BIN ?? resolve(process.cwd(), "../../.venv/bin/rewardserve");
  // The tests send request chat templates: allowed here (off by default).
  const child = spawn(bin, ["serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--allow-request-chat-template", ...extraArgs],
    { stdio: ["ignore", "ignore", "pipe"] });
  const port = await new Promise<string>((ok, fail) => {
    let log = "";
    child.stderr!.on("data", (chunk: Buffer) => {
      log += chunk.toString();
      const match = LISTENING.exec(log);
      if (match) ok(match[1]);
    });
    child.on("exit", (code) => fail(new Error(`rewardserve exited ${code} before listening:\n${log}`)));
  });
  child.stderr!.resume();
  const target = `127.0.0.1:${port}`;
  return { target, stop: () => stop(child) };
}

/**
 * The set-up a test file shares: a demo server and a ready client before its tests, both closed
 * after them. Call at the top of the file; `client` is set once the `before` hook has run.
 */
export function useDemoClient(): { readonly client: RewardClient } {
  let server: DemoServer | undefined;
  let client: RewardClient | undefined;
  before(async () => {
    server = await demoServer();
    client = new RewardClient({ target: server.target });
    await waitReady(client);
  });
  after(async () => {
    client?.close();
    await server?.stop();
  });
  return {
    get client(): RewardClient {
      if (!client) throw new Error("useDemoClient: the client is set in a before hook, read it inside a test");
      return client;
    },
  };
}

/** Wait until the server answers (the model loads after the port opens). */
export async function waitReady(client: RewardClient, timeoutMs = 180_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await client.modelInfo({ timeoutMs: 5_000 });
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

function stop(child: ChildProcess): Promise<void> {
  return new Promise((done) => {
    if (child.exitCode !== null) return done();
    child.on("exit", () => done());
    child.kill("SIGTERM");
  });
}
