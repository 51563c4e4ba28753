// shardtune-worker JOB.yaml: one training process (one rank under mpirun or srun).
#include <CLI/CLI.hpp>

#include "worker/blas_env.h"
#include "worker/entry.h"

int main(int argc, char** argv) {
  shardtune::EnsureBlasCoreType(argv);
  CLI::App app{"shardtune-worker: trains one rank of a shardtune job"};
  std::string job_path;
  std::string log_level = "info";
  app.add_option("job", job_path, "job spec (YAML)")->required();
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : shardtune::kExitInvalidInput;
  }
  return shardtune::RunWorker(job_path, log_level);
}
