package dev.rewardserve.smoke;

import dev.rewardserve.v1.EncodeInput;
import dev.rewardserve.v1.EncodeRequest;
import dev.rewardserve.v1.EncodeResponse;
import dev.rewardserve.v1.GetModelInfoRequest;
import dev.rewardserve.v1.GetModelInfoResponse;
import dev.rewardserve.v1.PoolingTask;
import dev.rewardserve.v1.RewardServiceGrpc;
import dev.rewardserve.v1.ScoreInput;
import dev.rewardserve.v1.ScoreMethod;
import dev.rewardserve.v1.ScoreRequest;
import dev.rewardserve.v1.ScoreResponse;
import dev.rewardserve.v1.TokenIds;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import java.util.concurrent.TimeUnit;

/**
 * The Java smoke call: the generated messages (java_multiple_files, package dev.rewardserve.v1)
 * and stubs, compiled against Debian's grpc-java, call a live server (args[0] = host:port).
 * Prints "java: N passed, 0 failed" or exits non-zero.
 */
public final class Smoke {
  private static final int MAX_MESSAGE_BYTES = 256 << 20; // token-level replies pass 4 MiB

  public static void main(String[] args) throws Exception {
    ManagedChannel channel = NettyChannelBuilder.forTarget(args[0]).usePlaintext()
        .maxInboundMessageSize(MAX_MESSAGE_BYTES).build();
    Metadata headers = new Metadata();
    headers.put(Metadata.Key.of("x-request-id", Metadata.ASCII_STRING_MARSHALLER), "java-smoke-1");
    RewardServiceGrpc.RewardServiceBlockingStub stub = RewardServiceGrpc.newBlockingStub(channel)
        .withInterceptors(MetadataUtils.newAttachHeadersInterceptor(headers));
    int passed = 0;
    try {
      GetModelInfoResponse info = stub.withDeadlineAfter(30, TimeUnit.SECONDS)
          .getModelInfo(GetModelInfoRequest.getDefaultInstance());
      check(!info.getArchitecture().isEmpty() && info.getLabelsCount() > 0, "model info: " + info);
      passed++;

      EncodeResponse reply = stub.withDeadlineAfter(30, TimeUnit.SECONDS).encode(EncodeRequest.newBuilder()
          .setTask(PoolingTask.POOLING_TASK_CLASSIFY)
          .addInputs(EncodeInput.newBuilder().setText("hello from java"))
          .addInputs(EncodeInput.newBuilder().setTokenIds(TokenIds.newBuilder().addIds(5).addIds(6)))
          .build());
      check(reply.getResultsCount() == 2 && reply.getResults(1).getIndex() == 1
          && reply.getResults(1).getNumTokens() == 2 && reply.getRequestId().equals("java-smoke-1"),
          "encode: " + reply);
      passed++;

      try {
        stub.withDeadlineAfter(30, TimeUnit.SECONDS).encode(EncodeRequest.newBuilder()
            .addInputs(EncodeInput.newBuilder().setTokenIds(TokenIds.newBuilder().addIds(99999))).build());
        check(false, "an out-of-vocabulary token id was accepted");
      } catch (StatusRuntimeException e) {
        check(e.getStatus().getCode() == Status.Code.INVALID_ARGUMENT
            && e.getStatus().getDescription().startsWith("inputs[0]"), "bad input: " + e.getStatus());
        passed++;
      }

      // Score: the demo model (one label) reads each (query, document) pair as a cross-encoder.
      ScoreResponse scored = stub.withDeadlineAfter(30, TimeUnit.SECONDS).score(ScoreRequest.newBuilder()
          .setQuery(ScoreInput.newBuilder().setText("What is the answer?"))
          .addDocuments(ScoreInput.newBuilder().setText("The answer is 42."))
          .addDocuments(ScoreInput.newBuilder().setTokenIds(TokenIds.newBuilder().addIds(5).addIds(6)))
          .build());
      check(scored.getResultsCount() == 2 && scored.getResults(0).getIndex() == 0
          && scored.getResults(1).getIndex() == 1 && scored.getResults(1).hasLogit()
          && scored.getMethod() == ScoreMethod.SCORE_METHOD_CROSS_ENCODER, "score: " + scored);
      passed++;

      try {
        stub.withDeadlineAfter(30, TimeUnit.SECONDS).score(ScoreRequest.newBuilder()
            .setQuery(ScoreInput.newBuilder().setText("q")).build());
        check(false, "a Score without documents was accepted");
      } catch (StatusRuntimeException e) {
        check(e.getStatus().getCode() == Status.Code.INVALID_ARGUMENT
            && e.getStatus().getDescription().startsWith("documents"), "score without documents: " + e.getStatus());
        passed++;
      }
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
    System.out.println("java: " + passed + " passed, 0 failed");
  }

  private static void check(boolean ok, String what) {
    if (!ok) {
      System.out.println("java: FAIL " + what);
      System.exit(1);
    }
  }
}
