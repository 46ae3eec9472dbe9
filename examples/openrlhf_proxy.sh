#!/usr/bin/env bash
# OpenRLHF's --remote_rm_url in front of rewardserve. With a server running (`make serve`):
#
#   bash examples/openrlhf_proxy.sh [HOST:PORT of rewardserve] [proxy port]
#
# In training: openrlhf.cli.train_ppo_ray ... --remote_rm_url http://127.0.0.1:5000/get_reward
set -euo pipefail
TARGET=${1:-127.0.0.1:50051}
PORT=${2:-5000}
BIN=$(dirname "$0")/../.venv/bin
CLIENT=$([ -x "$BIN/rewardserve-client" ] && echo "$BIN/rewardserve-client" || echo rewardserve-client)

"$CLIENT" openrlhf-proxy --target "$TARGET" --port "$PORT" &
PROXY=$!
trap 'kill $PROXY' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done

# OpenRLHF posts whole decoded sequences (the policy's template, special tokens, padding).
curl -sf -X POST "http://127.0.0.1:$PORT/get_reward" -H 'Content-Type: application/json' -d '{
  "query": ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"],
  "prompts": ["What is 2+2?", "What is 2+2?"]}'
echo
