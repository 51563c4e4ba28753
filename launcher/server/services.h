#pragma once
// The gRPC services: JobService, FileService and SweepService for people and services (API
// keys), WorkerService for a job's rank 0 (the attempt's token). All map errors to gRPC status codes: INVALID_ARGUMENT
// with the spec's problems, NOT_FOUND (also for another tenant's job), FAILED_PRECONDITION, RESOURCE_EXHAUSTED (pool or
// quota), UNAUTHENTICATED.

#include <memory>

#include "launcher/server/job_manager.h"
#include "shardtune/v1/files.grpc.pb.h"
#include "shardtune/v1/jobs.grpc.pb.h"
#include "shardtune/v1/sweeps.grpc.pb.h"

namespace shardtune::server {

std::unique_ptr<v1::JobService::Service> MakeJobService(JobManager& manager);
std::unique_ptr<v1::WorkerService::Service> MakeWorkerService(JobManager& manager);
// The Files API (services_files.cc).
std::unique_ptr<v1::FileService::Service> MakeFileService(JobManager& manager);
// Sweeps (services_sweeps.cc).
class SweepManager;
std::unique_ptr<v1::SweepService::Service> MakeSweepService(SweepManager& sweeps, const ServerConfig& config);

}  // namespace shardtune::server
