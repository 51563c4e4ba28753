// SweepService (proto/shardtune/v1/sweeps.proto): sweeps over SweepManager, with JobService's
// authentication and error mapping.
#include "launcher/server/service_util.h"
#include "launcher/server/services.h"
#include "launcher/server/sweep_manager.h"

namespace shardtune::server {

using grpc::ServerContext;

namespace {

class SweepServiceImpl final : public v1::SweepService::Service {
 public:
  SweepServiceImpl(SweepManager& sweeps, const ServerConfig& config) : sweeps_(sweeps), keys_(config) {}

  Status CreateSweep(ServerContext* context, const v1::CreateSweepRequest* request, v1::Sweep* sweep) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      *sweep = sweeps_.Create(caller, *request);
      return Status::OK;
    });
  }

  Status GetSweep(ServerContext* context, const v1::GetSweepRequest* request, v1::Sweep* sweep) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      *sweep = sweeps_.Get(caller, request->id());
      return Status::OK;
    });
  }

  Status ListSweeps(ServerContext* context, const v1::ListSweepsRequest* request,
                    v1::ListSweepsResponse* response) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      *response = sweeps_.List(caller, *request);
      return Status::OK;
    });
  }

  Status CancelSweep(ServerContext* context, const v1::CancelSweepRequest* request, v1::Sweep* sweep) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      *sweep = sweeps_.Cancel(caller, request->id());
      return Status::OK;
    });
  }

 private:
  SweepManager& sweeps_;
  ApiKeys keys_;
};

}  // namespace

std::unique_ptr<v1::SweepService::Service> MakeSweepService(SweepManager& sweeps, const ServerConfig& config) {
  return std::make_unique<SweepServiceImpl>(sweeps, config);
}

}  // namespace shardtune::server
