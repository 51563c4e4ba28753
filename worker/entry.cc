#include "worker/entry.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "common/run_dir.h"
#include "common/storage_roots.h"
#include "common/worker_contract.h"
#include "sharding/comm/collective_timeout.h"
#include "sharding/comm/mpi_communicator.h"
#include "sharding/comm/nccl_communicator.h"
#include "worker/cpu_allocator.h"
#include "worker/data/formats.h"
#include "worker/server_reporter.h"
#include "worker/synthesize.h"
#include "worker/trainer.h"

namespace shardtune {

namespace {

// Ranks sharing a machine share its cores: give each its share of intra-op threads instead of
// letting every rank start one thread per core.
void SetThreadsPerRank() {
  const char* local_size = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (local_size == nullptr || std::getenv("OMP_NUM_THREADS") != nullptr) return;
  const int ranks = std::max(1, std::atoi(local_size));
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = std::max(1, cores / ranks);
  at::set_num_threads(threads);
  // shardtune's own parallel loops run on the OpenMP runtime this binary links. It is LibTorch's
  // own with Debian's LibTorch, but a pip wheel's LibTorch bundles a private copy, whose thread
  // count at::set_num_threads alone would set.
  omp_set_num_threads(threads);
}

// The world of this process: MPI's when an MPI launcher started it (`mpi` then holds the runtime,
// and the rank takes its share of the cores), else a single process.
std::unique_ptr<Communicator> MpiOrSingleProcessWorld(std::unique_ptr<MpiRuntime>& mpi, double timeout_s) {
  if (!MpiRuntime::LaunchedByMpi()) return std::make_unique<SingleProcessCommunicator>();
  mpi = std::make_unique<MpiRuntime>(nullptr, nullptr);
  std::unique_ptr<Communicator> world = mpi->World(timeout_s);
  SetThreadsPerRank();
  return world;
}

// sharding.backend: an NCCL group on this rank's GPU when asked for, or when `auto` finds one;
// nullptr to train on the CPU over `base` (MPI, or the single process).
std::unique_ptr<Communicator> MaybeNccl(const JobSpec& spec, Communicator& base) {
  const CommBackend backend = spec.sharding.backend;
#ifdef SHARDTUNE_WITH_NCCL
  const bool gpu = at::hasCUDA() && NcclAvailable();
  if (backend == CommBackend::kNccl || (backend == CommBackend::kAuto && gpu)) {
    if (!gpu) Fail(ErrorCode::kFailedPrecondition, "sharding.backend: nccl, but this process sees no CUDA device");
    return MakeNcclCommunicator(base, spec.sharding.collective_timeout_s);
  }
#else
  if (backend == CommBackend::kNccl) {
    Fail(ErrorCode::kUnimplemented,
         "sharding.backend: nccl, but this build has no NCCL (CUDA and NCCL were not found)");
  }
#endif
  return nullptr;
}

}  // namespace

namespace {

// What an exception thrown while preparing or training means for the job (the one place that
// classifies them by type; common/worker_contract.h maps the rest by ErrorCode). A collective past
// its timeout is TIMEOUT on whichever rank saw it; the stuck rank may be another.
contract::JobErrorKind JobErrorKindOf(const std::exception& error) {
  if (dynamic_cast<const SpecError*>(&error) != nullptr) return contract::JobErrorKind::kInvalidSpec;
  if (dynamic_cast<const CollectiveTimeout*>(&error) != nullptr) return contract::JobErrorKind::kTimeout;
  if (const auto* typed = dynamic_cast<const Error*>(&error)) return contract::JobErrorKindFor(typed->code());
  return contract::JobErrorKind::kRankFailed;
}

}  // namespace

int ReportFailure(const std::exception& error) {
  spdlog::error("{}", error.what());
  return contract::ExitCodeFor(JobErrorKindOf(error));
}

std::string FailureJson(const std::exception& error) {
  static const std::map<contract::JobErrorKind, std::string> kNames = {
      {contract::JobErrorKind::kUnspecified, "unspecified"},  {contract::JobErrorKind::kInvalidSpec, "invalid_spec"},
      {contract::JobErrorKind::kInvalidData, "invalid_data"}, {contract::JobErrorKind::kInvalidInput, "invalid_input"},
      {contract::JobErrorKind::kRankFailed, "rank_failed"},   {contract::JobErrorKind::kTimeout, "timeout"},
      {contract::JobErrorKind::kNodeLost, "node_lost"},       {contract::JobErrorKind::kBackend, "backend"}};
  nlohmann::ordered_json out = {{"ok", false},
                                {"error", {{"kind", kNames.at(JobErrorKindOf(error))}, {"message", error.what()}}}};
  // Bad data: each problem as a record too, for scripts (the first 50, and how many in all).
  if (const auto* data = dynamic_cast<const DataError*>(&error)) {
    nlohmann::ordered_json problems = nlohmann::ordered_json::array();
    for (const DataIssue& issue : data->issues()) {
      problems.push_back(
          {{"file", issue.file}, {"line", issue.line}, {"code", issue.code}, {"message", issue.message}});
    }
    out["problems"] = problems;
    out["total_problems"] = data->total();
  }
  return out.dump() + "\n";
}

namespace {

// A trial of `shardtune sweep` (common/worker_contract.h, kEnvEvaluationGate): after an
// evaluation (its figures, val_loss among them, are in this step's metrics) rank 0 waits for the
// runner's verdict. A runner silent for 10 minutes is taken as "continue".
TrainerOptions::StepCallback EvaluationGate(const std::string& dir) {
  return [dir](int64_t step, int64_t, double, int64_t, const std::map<std::string, double>& metrics) {
    if (metrics.count("val_loss") == 0) return false;
    const std::filesystem::path verdict = std::filesystem::path(dir) / contract::VerdictFileName(step);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
    while (std::chrono::steady_clock::now() < deadline) {
      std::ifstream in(verdict);
      std::string word;
      if (in >> word) return word == "stop";
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    spdlog::warn("no verdict on the evaluation at step {} in {} after 10 minutes: training goes on", step, dir);
    return false;
  };
}

// `train --output json`'s line for a run that ended without an error.
std::string SummaryJson(const JobSpec& spec, const TrainingSummary& summary) {
  nlohmann::ordered_json out = {{"ok", true},
                                {"job", spec.name},
                                {"steps", summary.steps},
                                {"resumed_from_step", summary.resumed_from_step},
                                {"last_loss", summary.last_loss},
                                {"last_val_loss", nullptr},
                                {"finished", summary.finished},
                                {"paused", summary.paused},
                                {"stopped_early", summary.stopped_early},
                                {"output_dir", spec.output.dir}};
  if (summary.last_val_loss) out["last_val_loss"] = *summary.last_val_loss;
  if (summary.best_step > 0) out["best_step"] = summary.best_step;
  if (summary.finished) out["final"] = RunDir(spec.output.dir).Final().string();
  return out.dump() + "\n";
}

}  // namespace

int RunWorker(const std::string& job_path, const std::string& log_level, LogFormat log_format, bool json_summary) {
  // Declared outside the try: on failure the error is logged and the job aborted while the
  // communicators still exist (tearing them down first could hang on a dead peer).
  std::unique_ptr<MpiRuntime> mpi;
  std::unique_ptr<Communicator> mpi_world;   // NCCL bootstraps over it, so it outlives `nccl_world`
  std::unique_ptr<Communicator> nccl_world;  // set when training on GPUs
  std::unique_ptr<ServerReporter> reporter;  // rank 0 of a job started by shardtune-server
  int world_size = 1;
  try {
    InitLogging(log_level, RankFromEnvironment(), log_format);
    const char* server_job_id = std::getenv(std::string(contract::kEnvJobId).c_str());
    if (server_job_id != nullptr) SetLogJob(server_job_id);
    // Before anything that can fail (the spec, MPI, NCCL): rank 0 reports such failures too.
    if (ServerReporter::ManagedByServer() && RankFromEnvironment() == 0) reporter = ServerReporter::FromEnvironment();
    // Its paths against the storage roots before anything opens them: they may have changed since admission.
    const JobSpec spec = LoadJobSpecWithinGrantedRoots(job_path);
    if (server_job_id == nullptr || *server_job_id == '\0') SetLogJob(spec.name);
    if (!ServerReporter::ManagedByServer() && RankFromEnvironment() == 0 && spec.resources.NamesSchedulerOptions()) {
      spdlog::warn(
          "{}: resources.time_limit, partition, account and qos are for shardtune-server's Slurm backend; "
          "this run does not use them",
          job_path);
    }
    mpi_world = MpiOrSingleProcessWorld(mpi, spec.sharding.collective_timeout_s);
    world_size = mpi_world->size();
    nccl_world = MaybeNccl(spec, *mpi_world);
    if (!nccl_world) InstallCachingCpuAllocator();
    TrainerOptions options;
    if (ServerReporter::ManagedByServer()) {
      options.stop_check = true;
      if (reporter) {
        options.on_step = [&](int64_t step, int64_t total, double epoch, int64_t tokens,
                              const std::map<std::string, double>& metrics) {
          return reporter->Progress(step, total, epoch, tokens, metrics, "");
        };
        options.on_checkpoint = [&](int64_t step, const std::string& path) { reporter->Checkpoint(step, path); };
      }
    } else if (const char* gate = std::getenv(std::string(contract::kEnvEvaluationGate).c_str());
               gate != nullptr && *gate != '\0') {
      options.stop_check = true;
      if (mpi_world->rank() == 0) options.on_step = EvaluationGate(gate);
    }
    const TrainingSummary summary = RunTraining(spec, nccl_world ? *nccl_world : *mpi_world, options);
    if (reporter) {
      reporter->Result(summary.finished ? AttemptOutcome::kFinished
                       : summary.paused ? AttemptOutcome::kPaused
                                        : AttemptOutcome::kStopped);
    }
    if (mpi_world->rank() == 0) {
      spdlog::info("job '{}' finished: {} steps, last loss {:.4f}{}", spec.name, summary.steps, summary.last_loss,
                   summary.last_val_loss ? fmt::format(", val_loss {:.4f}", *summary.last_val_loss) : "");
      if (json_summary) std::fputs(SummaryJson(spec, summary).c_str(), stdout);
    }
    nccl_world.reset();
    mpi_world.reset();
    mpi.reset();
    return kExitOk;
  } catch (const std::exception& e) {
    const int code = ReportFailure(e);
    if (json_summary && RankFromEnvironment() == 0) std::fputs(FailureJson(e).c_str(), stdout);
    if (reporter) reporter->Failure(JobErrorKindOf(e), e.what());
    // One rank failing fails the job: take every other rank down now rather than let them wait
    // in a collective until their timeout.
    if (mpi && world_size > 1) MpiRuntime::Abort(code);
    return code;
  }
}

namespace {

// A command on this process, or on each of the ranks mpirun started: `processes` (--np; 0: not
// given) must be the number taking part. A failure on one rank ends them all.
int RunOnRanks(const std::string& command, int processes, double timeout_s,
               const std::function<void(Communicator&)>& body) {
  std::unique_ptr<MpiRuntime> mpi;
  std::unique_ptr<Communicator> world;
  try {
    world = MpiOrSingleProcessWorld(mpi, timeout_s);
    if (processes > 0 && processes != world->size()) {
      if (world->size() == 1) {
        Fail(ErrorCode::kInvalidArgument,
             "--np {}: the processes are started by mpirun: run `shardtune {} ... --np {}` (or mpirun -np {} "
             "shardtune-worker {} ...)",
             processes, command, processes, processes, command);
      }
      Fail(ErrorCode::kInvalidArgument, "--np {}, but mpirun started {} processes", processes, world->size());
    }
    body(*world);
    world.reset();
    mpi.reset();
    return kExitOk;
  } catch (const std::exception& e) {
    const int code = ReportFailure(e);
    if (mpi && world && world->size() > 1) MpiRuntime::Abort(code);
    return code;
  }
}

}  // namespace

int RunExport(const CheckpointExport& request, int processes) {
  // The ranks wait for each other only around the writes: the job's collective timeout bounds that.
  double timeout_s = 0;
  try {
    if (MpiRuntime::LaunchedByMpi())
      timeout_s = LoadJobSpec(CheckpointDir(request.checkpoint_dir).Run().JobYaml()).sharding.collective_timeout_s;
  } catch (const std::exception& e) {
    return ReportFailure(e);
  }
  return RunOnRanks("export", processes, timeout_s, [&](Communicator& world) { ExportCheckpoint(request, world); });
}

int RunSynthesize(const SynthesizeOptions& options, int processes, bool json_output) {
  // Ranks generate between collectives: a round's generation bounds a wait, generously.
  return RunOnRanks("synthesize", processes, 3600, [&](Communicator& world) {
    const nlohmann::json report = Synthesize(options, world);
    if (world.rank() != 0) return;
    if (json_output) {
      std::cout << report.dump() << std::endl;
      return;
    }
    std::cout << fmt::format("wrote {} examples to {} ({} candidates, {:.0f} tokens/s on {} rank{})\n",
                             report["kept"].get<int64_t>(), options.out.string(), report["candidates"].get<int64_t>(),
                             report["tokens_per_s"].get<double>(), world.size(), world.size() == 1 ? "" : "s");
    for (const auto& [filter, count] : report["removed"].items())
      if (count.get<int64_t>() > 0) std::cout << fmt::format("  removed {}: {}\n", filter, count.get<int64_t>());
  });
}

}  // namespace shardtune
