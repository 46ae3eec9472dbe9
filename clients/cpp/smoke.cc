// The C++ smoke call: generated messages and stubs (Debian's protoc, grpc_cpp_plugin and
// libgrpc++) call GetModelInfo and Encode on a live server. Build: see build.sh.
#include <chrono>
#include <iostream>
#include <memory>

#include <grpcpp/grpcpp.h>

#include "rewardserve/v1/reward_service.grpc.pb.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: smoke HOST:PORT\n";
    return 2;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);  // token-level replies pass gRPC's default 4 MiB
  auto stub = rewardserve::v1::RewardService::NewStub(
      grpc::CreateCustomChannel(argv[1], grpc::InsecureChannelCredentials(), args));

  grpc::ClientContext info_context;
  info_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  rewardserve::v1::GetModelInfoResponse info;
  grpc::Status status = stub->GetModelInfo(&info_context, rewardserve::v1::GetModelInfoRequest(), &info);
  if (!status.ok()) {
    std::cerr << "GetModelInfo: " << status.error_message() << "\n";
    return 1;
  }

  grpc::ClientContext encode_context;
  encode_context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  encode_context.AddMetadata("x-request-id", "cpp-smoke-1");
  rewardserve::v1::EncodeRequest request;
  request.set_task(rewardserve::v1::POOLING_TASK_CLASSIFY);
  request.add_inputs()->set_text("hello from c++");
  rewardserve::v1::EncodeResponse reply;
  status = stub->Encode(&encode_context, request, &reply);
  if (!status.ok() || reply.results_size() != 1 || reply.request_id() != "cpp-smoke-1") {
    std::cerr << "Encode: " << status.error_message() << "\n";
    return 1;
  }
  std::cout << info.architecture() << " score " << reply.results(0).data().values(0) << "\n"
            << "cpp: 2 passed, 0 failed\n";
  return 0;
}
