#pragma once
// Counts every call of the gRPC listener into the server's metrics (ServerMetrics::RpcHandled):
// its full method ("shardtune.v1.JobService/CreateJob"), the name of the status code it ended with
// ("OK", "NOT_FOUND", ...) and its latency, from the call's start to its status (for a stream such
// as WatchJob, its whole life). A call that ends without a status being sent (the client went
// away first) counts as CANCELLED. Installed with ServerBuilder::experimental().SetInterceptorCreators;
// `metrics` outlives the server.

#include <grpcpp/support/server_interceptor.h>

#include <memory>

#include "launcher/server/server_metrics.h"

namespace shardtune::server {

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcMetricsInterceptorFactory(
    ServerMetrics& metrics);

// "OK", "CANCELLED", ... "UNAUTHENTICATED": the code's name as gRPC's documentation spells it.
const char* StatusCodeName(grpc::StatusCode code);

}  // namespace shardtune::server
