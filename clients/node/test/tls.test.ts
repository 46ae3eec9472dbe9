/** TLS: the client verifies the server against the given CA and sends its requests over it. */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { create } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Code, GetModelInfoResponseSchema, RewardClient, RewardServeError, RewardService } from "../src/index.js";

let server: http2.Http2SecureServer;
let dir: string;
let cert: string;
let port: number;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "rewardserve-tls-"));
  // A self-signed certificate for 127.0.0.1, made at test time.
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1"], { stdio: "ignore" });
  cert = readFileSync(join(dir, "cert.pem"), "utf8");
  const routes = (router: ConnectRouter) => router.service(RewardService, {
    getModelInfo: async () => create(GetModelInfoResponseSchema, { model: "over-tls" }),
  });
  server = http2.createSecureServer({ cert, key: readFileSync(join(dir, "key.pem")), allowHTTP1: false },
    connectNodeAdapter({ routes, grpc: true, connect: false, grpcWeb: false }));
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  port = (server.address() as AddressInfo).port;
});

after(async () => {
  await new Promise<void>((ok) => server.close(() => ok()));
  rmSync(dir, { recursive: true, force: true });
});

test("a call over TLS with the server's CA succeeds", async () => {
  const client = new RewardClient({ target: `127.0.0.1:${port}`, tls: { ca: cert } });
  assert.equal((await client.modelInfo()).model, "over-tls");
  client.close();
});

test("an untrusted server certificate fails the call and says why", async () => {
  const client = new RewardClient({ target: `127.0.0.1:${port}`, tls: true });
  // Connect reports a failed handshake as INTERNAL (not retried), naming the certificate problem.
  await assert.rejects(client.modelInfo({ timeoutMs: 5_000 }), (e: unknown) => e instanceof RewardServeError
    && e.code === Code.Internal && /certificate/.test(e.details));
  client.close();
});
