#pragma once
// The gRPC services: JobService for people and services (API keys), WorkerService for a job's
// rank 0 (the attempt's token). Both map errors to gRPC status codes: INVALID_ARGUMENT with the
// spec's problems, NOT_FOUND (also for another tenant's job), FAILED_PRECONDITION,
// RESOURCE_EXHAUSTED (pool or quota), UNAUTHENTICATED.

#include <memory>

#include "launcher/server/job_manager.h"
#include "shardtune/v1/files.grpc.pb.h"
#include "shardtune/v1/jobs.grpc.pb.h"

namespace shardtune::server {

std::unique_ptr<v1::JobService::Service> MakeJobService(JobManager& manager);
std::unique_ptr<v1::WorkerService::Service> MakeWorkerService(JobManager& manager);
// The Files API (services_files.cc).
std::unique_ptr<v1::FileService::Service> MakeFileService(JobManager& manager);

}  // namespace shardtune::server
