// What the slurm backend gives Slurm, without a cluster: the sbatch options a job's resources
// become, the batch script rendered from deploy/slurm/job.sbatch.in (a script bash accepts, with
// no root-only variables or --oversubscribe unless configured), and the checks on every
// resources field of a job spec and every slurm: key of the server's config.
#include "launcher/server/slurm_script.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/job_spec.h"
#include "launcher/server/processes.h"
#include "launcher/server/server_config.h"
#include "test_util.h"

namespace shardtune::server {
namespace {

using testing::ScratchDir;

std::string Template() { return ReadFile(std::filesystem::path(SHARDTUNE_SOURCE_DIR) / "deploy/slurm/job.sbatch.in"); }

SlurmAttempt Attempt(int64_t nodes, int64_t ranks_per_node, int ranks) {
  SlurmAttempt a;
  a.job_id = "j-1";
  a.ranks = ranks;
  a.resources.nodes = nodes;
  a.resources.ranks_per_node = ranks_per_node;
  a.mpirun = "/usr/bin/mpirun";
  a.worker = {"/opt/shardtune/bin/shardtune-worker", "/data/job 1/job.yaml"};
  a.environment = {"SHARDTUNE_SERVER", "SHARDTUNE_JOB_ID"};
  a.script_path = "/data/job 1/attempt-1.sbatch";
  a.log_path = "/data/job 1/attempt-1.log";
  a.exit_file = "/data/job 1/exit-1";
  a.umask = 027;
  return a;
}

bool Has(const std::vector<std::string>& argv, const std::string& word) {
  return std::find(argv.begin(), argv.end(), word) != argv.end();
}

TEST(SlurmScript, TwoNodesOfEightRanksAndEightGpus) {
  SlurmAttempt attempt = Attempt(2, 8, 16);
  attempt.resources.gpus_per_node = 8;
  const SlurmBatchJob job = RenderSlurmBatchJob(SlurmConfig{}, Template(), attempt);
  EXPECT_EQ(job.sbatch_argv,
            (std::vector<std::string>{"sbatch", "--parsable", "--job-name=shardtune-j-1",
                                      "--output=/data/job 1/attempt-1.log", "--nodes=2", "--ntasks=16",
                                      "--ntasks-per-node=8", "--gpus-per-node=8", "/data/job 1/attempt-1.sbatch"}));
  const std::string& s = job.script;
  EXPECT_NE(s.find("\numask 0027\nunset OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM\n'/usr/bin/mpirun' "
                   "'--bind-to' 'none' '-x' 'SHARDTUNE_SERVER' '-x' 'SHARDTUNE_JOB_ID' "
                   "'-np' '16' '/opt/shardtune/bin/shardtune-worker' '/data/job 1/job.yaml'\n"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find("echo \"$status\" > '/data/job 1/exit-1'\n"), std::string::npos) << s;
  for (const char* absent : {"export OMPI_ALLOW_RUN_AS_ROOT", "oversubscribe", "{{", "}}"})
    EXPECT_EQ(s.find(absent), std::string::npos) << absent << " in\n" << s;
  EXPECT_EQ(s.rfind("#!/bin/bash\n", 0), 0u);

  // bash reads it: a script Slurm can run.
  ScratchDir dir;
  WriteFileAtomic(dir / "job.sbatch", s);
  EXPECT_EQ(RunCommand({"bash", "-n", (dir / "job.sbatch").string()}).status, 0);
}

TEST(SlurmScript, TheSpecsResourcesOverTheServersDefaultsAndEachAsItsOption) {
  SlurmConfig config;
  config.partition = "gpu";
  config.account = "ml";
  config.qos = "normal";
  config.time_limit = "1-00:00:00";
  config.gpus_per_node = 4;
  config.cpus_per_rank = 2;
  config.gres = true;
  // The server's defaults where the spec says nothing.
  SlurmBatchJob job = RenderSlurmBatchJob(config, Template(), Attempt(1, 4, 4));
  for (const char* option : {"--nodes=1", "--ntasks=4", "--ntasks-per-node=4", "--gres=gpu:4", "--cpus-per-task=2",
                             "--time=1-00:00:00", "--partition=gpu", "--account=ml", "--qos=normal"})
    EXPECT_TRUE(Has(job.sbatch_argv, option)) << option;
  EXPECT_FALSE(Has(job.sbatch_argv, "--gpus-per-node=4"));
  // The spec's own values win.
  SlurmAttempt attempt = Attempt(1, 4, 4);
  attempt.resources.gpus_per_node = 2;
  attempt.resources.cpus_per_rank = 6;
  attempt.resources.time_limit = "30";
  attempt.resources.partition = "debug";
  attempt.resources.account = "team-a";
  attempt.resources.qos = "high";
  job = RenderSlurmBatchJob(config, Template(), attempt);
  for (const char* option :
       {"--gres=gpu:2", "--cpus-per-task=6", "--time=30", "--partition=debug", "--account=team-a", "--qos=high"})
    EXPECT_TRUE(Has(job.sbatch_argv, option)) << option;
  EXPECT_FALSE(Has(job.sbatch_argv, "--partition=gpu"));
}

TEST(SlurmScript, RankCountsThatDoNotFillTheNodes) {
  // A job resumed on another rank count: the nodes it asked for, the tasks spread by Slurm.
  SlurmBatchJob job = RenderSlurmBatchJob(SlurmConfig{}, Template(), Attempt(4, 2, 6));
  EXPECT_TRUE(Has(job.sbatch_argv, "--nodes=4"));
  EXPECT_TRUE(Has(job.sbatch_argv, "--ntasks=6"));
  EXPECT_FALSE(std::any_of(job.sbatch_argv.begin(), job.sbatch_argv.end(),
                           [](const std::string& w) { return w.rfind("--ntasks-per-node", 0) == 0; }));
  job = RenderSlurmBatchJob(SlurmConfig{}, Template(), Attempt(2, 1, 1));  // never more nodes than ranks
  EXPECT_TRUE(Has(job.sbatch_argv, "--nodes=1"));
  EXPECT_TRUE(Has(job.sbatch_argv, "--ntasks-per-node=1"));
}

TEST(SlurmScript, SrunRunAsAndWhatOnlyConfigurationAdds) {
  SlurmConfig config;
  config.launcher = "srun";
  config.mpi = "pmix_v4";
  SlurmAttempt attempt = Attempt(2, 2, 4);
  attempt.run_as = "shardtune-jobs";
  attempt.run_as_gid = 1234;
  SlurmBatchJob job = RenderSlurmBatchJob(config, Template(), attempt);
  EXPECT_NE(job.script.find("\n'srun' '--mpi=pmix_v4' '--ntasks=4' '/opt/shardtune/bin/shardtune-worker' "
                            "'/data/job 1/job.yaml'\n"),
            std::string::npos)
      << job.script;
  EXPECT_TRUE(Has(job.sbatch_argv, "--uid=shardtune-jobs"));
  EXPECT_TRUE(Has(job.sbatch_argv, "--gid=1234"));
  EXPECT_EQ(job.sbatch_argv.back(), "/data/job 1/attempt-1.sbatch");  // the script last, after every option

  config = SlurmConfig{};
  config.allow_run_as_root = true;
  config.oversubscribe = true;
  job = RenderSlurmBatchJob(config, Template(), Attempt(1, 2, 2));
  EXPECT_NE(job.script.find("\nexport OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\n"), std::string::npos);
  EXPECT_NE(job.script.find("'--oversubscribe'"), std::string::npos);
  EXPECT_FALSE(Has(job.sbatch_argv, "--uid=shardtune-jobs"));
}

TEST(SlurmScript, TheJobSpecsResourcesAreCheckedKeyByKey) {
  const std::string head = "name: r\nmodel: {path: m}\ndata: {train: t.jsonl, format: tokens}\noutput: {dir: o}\n";
  SpecOptions no_files;
  no_files.check_files = false;
  const JobSpec spec = ParseJobSpec(head + R"(resources: {nodes: 2, ranks_per_node: 8, gpus_per_node: 8,
  cpus_per_rank: 4, time_limit: "2-12:30:00", partition: gpu, account: ml-team, qos: high}
)",
                                    "job.yaml", "/", no_files);
  EXPECT_EQ(spec.resources.world_size(), 16);
  EXPECT_EQ(spec.resources.gpus_per_node, 8);
  EXPECT_EQ(spec.resources.time_limit, "2-12:30:00");
  EXPECT_TRUE(spec.resources.NamesSchedulerOptions());
  // The resolved spec (what the server stores and hands on) keeps them.
  const JobSpec again = ParseJobSpec(JobSpecToYaml(spec), "again", "/", no_files);
  EXPECT_EQ(again.resources.cpus_per_rank, 4);
  EXPECT_EQ(again.resources.qos, "high");
  EXPECT_EQ(again.resources.time_limit, "2-12:30:00");
  for (const char* ok : {"30", "30:00", "12:30:00", "2-12", "2-12:30", "UNLIMITED"})
    EXPECT_EQ(TimeLimitProblem(ok), "");
  try {
    ParseJobSpec(head + R"(resources: {gpus_per_node: -1, cpus_per_rank: x, time_limit: "1 hour",
  partition: "gpu; rm -rf /", account: "", qos: [a], cores: 4}
)",
                 "bad.yaml", "/", no_files);
    FAIL();
  } catch (const SpecError& e) {
    const std::string what = e.what();
    for (const char* fragment : {"resources.gpus_per_node", "resources.cpus_per_rank", "resources.time_limit",
                                 "'1 hour' is not a Slurm time limit", "resources.partition", "is not a plain name",
                                 "resources.qos", "resources.cores"})
      EXPECT_NE(what.find(fragment), std::string::npos) << fragment << " in " << what;
  }
}

TEST(SlurmScript, TheServersSlurmKeysAreCheckedKeyByKey) {
  ScratchDir dir;
  testing::WriteText(dir / "job.sbatch.in", Template());
  testing::WriteText(dir / "ok.yaml", R"(backend: slurm
slurm: {template: job.sbatch.in, partition: gpu, account: ml, qos: normal, time_limit: "4:00:00", gpus_per_node: 8,
        cpus_per_rank: 6, gpu_request: gres, launcher: srun, mpi: pmix_v4, allow_run_as_root: true,
        oversubscribe: true}
)");
  const ServerConfig c = LoadServerConfig(dir / "ok.yaml");
  EXPECT_EQ(c.slurm.template_path, (dir / "job.sbatch.in").string());
  EXPECT_EQ(c.slurm.time_limit, "4:00:00");
  EXPECT_EQ(c.slurm.gpus_per_node, 8);
  EXPECT_EQ(c.slurm.cpus_per_rank, 6);
  EXPECT_TRUE(c.slurm.gres);
  EXPECT_EQ(c.slurm.launcher, "srun");
  EXPECT_EQ(c.slurm.mpi, "pmix_v4");
  EXPECT_TRUE(c.slurm.allow_run_as_root && c.slurm.oversubscribe);

  testing::WriteText(dir / "bad.yaml", R"(backend: slurm
slurm: {template: job.sbatch.in, partition: "a b", time_limit: soon, gpus_per_node: -2, cpus_per_rank: -1,
        gpu_request: gpus, launcher: mpiexec, mpi: "pmix --x", nodes: 2}
)");
  testing::ExpectRefusedWith(
      [&] { LoadServerConfig(dir / "bad.yaml"); },
      {"slurm.partition (line 2): 'a b' is not a plain name", "slurm.time_limit (line 2): 'soon' is not a Slurm",
       "slurm.gpus_per_node (line 2): must be >= 0", "slurm.cpus_per_rank (line 2): must be >= 0",
       "slurm.gpu_request (line 3): must be gpus-per-node or gres", "slurm.launcher (line 3): must be mpirun or srun",
       "slurm.mpi (line 3)", "slurm.nodes (line 3): unknown key", "8 problem(s)"});
}

TEST(SlurmScript, TheFilesAJobWritesAreReadWithoutFollowingItsLinks) {
  ScratchDir dir;
  JobUser self;  // the server's own user: no chown
  self.umask = 027;
  const std::string exit_file = (dir / "exit-1").string();
  CreateForJobUser(exit_file, self);
  EXPECT_EQ(std::filesystem::status(exit_file).permissions(), std::filesystem::perms(0640));
  EXPECT_EQ(ReadExitFile(exit_file), std::nullopt);  // empty: not written yet
  testing::WriteText(exit_file, "1");
  EXPECT_EQ(ReadExitFile(exit_file), std::nullopt);  // partly written
  testing::WriteText(exit_file, "3\n");
  EXPECT_EQ(ReadExitFile(exit_file), 3);
  EXPECT_EQ(ReadJobWrittenFile(exit_file, 1, 10), "\n");
  // A job that swapped its files for links, or a FIFO, gets nothing read through them.
  testing::WriteText(dir / "secret", "0\n");
  std::filesystem::create_symlink(dir / "secret", dir / "exit-2");
  EXPECT_EQ(ReadExitFile((dir / "exit-2").string()), std::nullopt);
  EXPECT_EQ(ReadJobWrittenFile((dir / "exit-2").string(), 0, 10), std::nullopt);
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  EXPECT_EQ(ReadJobWrittenFile((dir / "fifo").string(), 0, 10), std::nullopt);  // and does not hang
  CreateForJobUser(exit_file, self);  // made again for the next attempt: empty
  EXPECT_EQ(ReadJobWrittenFile(exit_file, 0, 10), "");
}

}  // namespace
}  // namespace shardtune::server
