#!/usr/bin/env bash
# C++: generate the messages and stubs with Debian's protoc and grpc_cpp_plugin and build the smoke
# call against libgrpc++ (apt-get install protobuf-compiler protobuf-compiler-grpc libgrpc++-dev
# pkg-config g++). Usage: clients/cpp/build.sh && clients/cpp/build/smoke HOST:PORT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$here/build"
mkdir -p "$build/gen"
protoc -I "$here/../../proto" --cpp_out="$build/gen" --grpc_out="$build/gen" \
  --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" rewardserve/v1/reward_service.proto
g++ -std=c++17 -O1 -I "$build/gen" -o "$build/smoke" "$here/smoke.cc" \
  "$build/gen/rewardserve/v1/reward_service.pb.cc" "$build/gen/rewardserve/v1/reward_service.grpc.pb.cc" \
  $(pkg-config --cflags --libs grpc++ protobuf)
