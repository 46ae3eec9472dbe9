#!/usr/bin/env bash
# Java: generate the messages and stubs from proto/ with Debian's protoc and grpc-java plugin,
# compile them and the smoke call against Debian's grpc-java jars, and run it against a live
# server: clients/java/smoke.sh HOST:PORT. The generated code lives in build/ only (rebuilt from
# the proto on every run, so it cannot drift).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
build="$here/build"
rm -rf "$build" && mkdir -p "$build/gen" "$build/classes"
protoc -I "$root/proto" --java_out="$build/gen" \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin --grpc-java_out="$build/gen" \
  rewardserve/v1/reward_service.proto
jars=(protobuf grpc-api grpc-context grpc-core grpc-stub grpc-protobuf grpc-protobuf-lite grpc-netty
      guava perfmark-api gson geronimo-annotation-1.3-spec error_prone_annotations jsr305
      netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-common netty-handler
      netty-resolver netty-transport)
classpath="$(printf '/usr/share/java/%s.jar:' "${jars[@]}")"
for jar in "${jars[@]}"; do
  [[ -f "/usr/share/java/$jar.jar" ]] || { echo "missing /usr/share/java/$jar.jar (make clients-deps)" >&2; exit 1; }
done
find "$build/gen" "$here/src" -name '*.java' > "$build/sources.txt"
javac -nowarn -d "$build/classes" -cp "$classpath" @"$build/sources.txt"
java -cp "$build/classes:$classpath" dev.rewardserve.smoke.Smoke "$1"
