#pragma once
// The contract between shardtune-server and the ranks of a job it starts, in one place that
// both sides include (LibTorch-free, proto-free). The server passes the job's identity to every
// rank in environment variables (mpirun -x NAME, or the batch script's environment under Slurm);
// rank 0 reports back over WorkerService (proto/shardtune/v1/jobs.proto), whose enums
// (JobErrorCode, AttemptOutcome) carry how an attempt ended. The exit statuses both sides read
// are in common/exit_codes.h.

#include <array>
#include <string_view>

namespace shardtune::contract {

// host:port of the server's WorkerService.
inline constexpr std::string_view kEnvServer = "SHARDTUNE_SERVER";
// The job's id ("job-..."): reports name it.
inline constexpr std::string_view kEnvJobId = "SHARDTUNE_JOB_ID";
// The attempt's bearer token; the server keeps only its SHA-256.
inline constexpr std::string_view kEnvJobToken = "SHARDTUNE_JOB_TOKEN";
// The attempt number (1, 2, ...): the server ignores reports of an attempt other than the current one.
inline constexpr std::string_view kEnvJobAttempt = "SHARDTUNE_JOB_ATTEMPT";

// Every variable above: what a launcher must pass on to each rank.
inline constexpr std::array<std::string_view, 4> kJobEnvironment = {kEnvServer, kEnvJobId, kEnvJobToken,
                                                                    kEnvJobAttempt};

}  // namespace shardtune::contract
