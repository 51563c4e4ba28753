#pragma once
// Logging for every executable: spdlog's default logger, one line per event, each line
// prefixed with the process's rank, to stderr and (once the output directory is known) to a log
// file there. Use spdlog::info(...) etc. directly after InitLogging.

#include <filesystem>
#include <string>

namespace shardtune {

// The rank under mpirun (OMPI_COMM_WORLD_RANK, PMI_RANK) or srun (SLURM_PROCID); 0 otherwise.
int RankFromEnvironment();

// `level` is one of trace, debug, info, warn, error, critical, off; others throw Error naming it.
void InitLogging(const std::string& level, int rank);

// Also writes every later line to `path` (appending, so a resumed job keeps its earlier log).
void AddLogFile(const std::filesystem::path& path);

}  // namespace shardtune
