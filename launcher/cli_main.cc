// shardtune: the command line (docs/cli.md). It talks to a server (submit, watch, ...), plans
// memory, and starts training; it links no LibTorch, so it starts at once. The commands that run
// a model or read its data are shardtune-worker's, and run there in place of this process.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/exit_codes.h"
#include "common/logging.h"
#include "common/version.h"
#include "launcher/client/client.h"
#include "launcher/client/files_client.h"
#include "launcher/client/sweeps_client.h"
#include "launcher/launch.h"
#include "launcher/report.h"
#include "launcher/sweep_command.h"
#include "launcher/sweep_report.h"
#include "sharding/planner.h"

namespace shardtune {
namespace {

// The worker's commands, with the descriptions `shardtune --help` shows for them.
const std::vector<std::pair<std::string, std::string>> kWorkerCommands = {
    {"generate", "generate tokens from a model directory (and a PEFT adapter)"},
    {"tokenize", "stdin text -> token ids, or ids -> text with --decode"},
    {"validate-data", "check every data file of a job: errors with file:line and a code"},
    {"export", "export a training checkpoint as a Hugging Face model or PEFT adapter"},
    {"init-model", "write a randomly initialized model for a config.json"},
    {"quantize", "store a model's linear weights 4-bit (NF4/FP4), as transformers saves a bitsandbytes model"},
    {"evaluate", "a finished model's metrics on a dataset (loss, accuracy, F1, ...)"},
    {"synthesize", "new training examples written by a teacher model from seed examples"},
};

// The command word of argv: the first argument that is neither an option nor an option's value.
std::string CommandOf(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--log-level") == 0 || std::strcmp(argv[i], "--log-format") == 0) {
      ++i;
    } else if (argv[i][0] != '-') {
      return argv[i];
    }
  }
  return "";
}

// `export --np N` (or --np=N): how many processes run the command; 1 when absent or not a positive
// number (the worker's own parsing then names the mistake).
int RanksOf(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string value;
    if (args[i] == "--np" && i + 1 < args.size()) value = args[i + 1];
    if (args[i].rfind("--np=", 0) == 0) value = args[i].substr(5);
    if (value.empty()) continue;
    int ranks = 0;
    const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), ranks);
    return error == std::errc() && end == value.data() + value.size() && ranks > 0 ? ranks : 1;
  }
  return 1;
}

struct PlanArgs {
  std::string job, model, method = "full", dtype = "bf16", output = "table", quantization = "none";
  int64_t gpus = 1, gpus_per_node = 8, zero_stage = 0, shard_group_size = 0, lora_r = 8, micro_batch = 1,
          seq_len = 2048;
  std::vector<std::string> lora_targets = {"q_proj", "v_proj"};
  double gpu_memory_gib = 0;
  bool cpu = false, offload = false, checkpointing = false;
};

// Sets `in` from the options: every one of them with --model; with a job spec, only those given
// on the command line, each overriding the spec's value (none is ignored).
void ApplyPlanOptions(const PlanArgs& args, const CLI::App& command, bool only_given, PlanInput& in) {
  auto given = [&](const char* name) { return !only_given || command.count(name) > 0; };
  if (given("--gpus")) in.ranks = args.gpus;
  // --gpus alone: that many ranks on nodes of --gpus-per-node's default, not on the spec's node shape.
  if (given("--gpus-per-node") || given("--gpus")) in.ranks_per_node = std::min(args.gpus_per_node, in.ranks);
  if (given("--zero-stage")) in.zero_stage = static_cast<int>(args.zero_stage);
  if (given("--offload")) in.offload_optimizer = args.offload;
  if (given("--shard-group-size")) in.shard_group_size = args.shard_group_size;
  if (given("--method")) {
    const std::map<std::string, MethodType> methods = {
        {"full", MethodType::kFull},    {"lora", MethodType::kLora},       {"dora", MethodType::kDora},
        {"ia3", MethodType::kIa3},      {"adapter", MethodType::kAdapter}, {"prefix", MethodType::kPrefix},
        {"prompt", MethodType::kPrompt}};
    if (!methods.count(args.method)) Fail(ErrorCode::kInvalidArgument, "--method {}: not a method", args.method);
    in.method.type = methods.at(args.method);
  }
  if (given("--quantization")) {
    in.quantization.type = args.quantization == "nf4"   ? QuantizationType::kNf4
                           : args.quantization == "fp4" ? QuantizationType::kFp4
                                                        : QuantizationType::kNone;
  }
  if (in.quantization.type != QuantizationType::kNone && in.method.type == MethodType::kFull) {
    Fail(ErrorCode::kInvalidArgument,
         "--quantization {}: a 4-bit base is frozen; give a parameter-efficient --method (lora, dora, ...)",
         args.quantization);
  }
  if (given("--lora-r")) in.method.lora.r = args.lora_r;
  if (given("--lora-targets")) in.method.lora.target_modules = args.lora_targets;
  if (given("--dtype")) {
    in.dtype = args.dtype == "fp32"   ? ComputeDType::kFp32
               : args.dtype == "fp16" ? ComputeDType::kFp16
                                      : ComputeDType::kBf16;
  }
  if (given("--micro-batch")) in.micro_batch = args.micro_batch;
  if (given("--seq-len")) in.seq_len = args.seq_len;
  if (given("--activation-checkpointing")) in.activation_checkpointing = args.checkpointing;
}

// `--output json`'s document for a local command that failed (docs/cli.md).
std::string FailureJson(const std::string& kind, const std::string& message) {
  const nlohmann::ordered_json out = {{"ok", false}, {"error", {{"kind", kind}, {"message", message}}}};
  return out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

int PlanJob(const PlanArgs& args, const CLI::App& command) {
  if (args.job.empty() == args.model.empty())
    Fail(ErrorCode::kInvalidArgument, "give a job spec or --model CONFIG.json (one of them)");
  PlanInput in;
  if (!args.job.empty()) {
    const JobSpec spec = LoadJobSpec(args.job);
    in = PlanInputForJob(spec, spec.resources.world_size(), args.gpu_memory_gib * (1 << 30), !args.cpu);
  } else {
    in.model = ModelConfig::Parse(ReadFile(args.model), args.model);
    in.device_memory_bytes = args.gpu_memory_gib * (1 << 30);
    in.on_gpu = !args.cpu;
  }
  ApplyPlanOptions(args, command, /*only_given=*/!args.job.empty(), in);
  const Plan plan = MakePlan(in);
  std::cout << (args.output == "json" ? PlanToJson(plan) + "\n" : PlanToText(plan));
  return plan.verdict_known && !plan.fits ? 1 : kExitOk;
}

// `shardtune plan`'s options.
void AddPlanOptions(CLI::App* planner, PlanArgs& plan) {
  planner->add_option("job", plan.job, "job spec (YAML); or give --model");
  planner->add_option("--model", plan.model, "config.json of the model (instead of a job spec)");
  // With a job spec, each option given overrides the spec's value (its resources, sharding, ...).
  planner->add_option("--gpus", plan.gpus, "ranks (one device each, or CPU ranks with --cpu)")
      ->check(CLI::PositiveNumber);
  planner->add_option("--gpus-per-node", plan.gpus_per_node, "ranks per node")->check(CLI::PositiveNumber);
  planner->add_option("--gpu-memory", plan.gpu_memory_gib, "memory per device in GiB (for a verdict)");
  planner->add_flag("--cpu", plan.cpu, "CPU training: everything in host memory");
  planner->add_option("--zero-stage", plan.zero_stage, "0 to 3")->check(CLI::Range(0, 3));
  planner->add_flag("--offload", plan.offload, "optimizer state in host memory");
  planner->add_option("--shard-group-size", plan.shard_group_size, "hybrid sharding group size");
  planner->add_option("--method", plan.method, "full, lora, dora, ia3, adapter, prefix, prompt");
  planner->add_option("--lora-r", plan.lora_r, "LoRA rank");
  planner->add_option("--quantization", plan.quantization, "none, nf4 or fp4: the frozen base in 4 bits (QLoRA)")
      ->check(CLI::IsMember({"none", "nf4", "fp4"}));
  planner->add_option("--lora-targets", plan.lora_targets, "LoRA target modules (default q_proj v_proj)");
  planner->add_option("--dtype", plan.dtype, "fp32, bf16 or fp16")->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  planner->add_option("--micro-batch", plan.micro_batch, "examples per rank per step")->check(CLI::PositiveNumber);
  planner->add_option("--seq-len", plan.seq_len, "tokens per example")->check(CLI::PositiveNumber);
  planner->add_flag("--activation-checkpointing", plan.checkpointing, "recompute layers in backward");
  planner->add_option("--output", plan.output, "table or json")->check(CLI::IsMember({"table", "json"}));
}

}  // namespace
}  // namespace shardtune

int main(int argc, char** argv) {
  using namespace shardtune;
  const std::string command = CommandOf(argc, argv);
  for (const auto& [name, description] : kWorkerCommands) {
    if (command != name) continue;
    const std::vector<std::string> args(argv + 1, argv + argc);
    // export and synthesize --np N: N processes through mpirun, each doing its share.
    if (command == "export" || command == "synthesize") return LaunchWorkerRanks(args, LaunchOptions{RanksOf(args)});
    return ExecWorker(args);
  }

  CLI::App app{"shardtune: fine-tune Hugging Face language models on one or many ranks"};
  app.require_subcommand(1);
  app.set_version_flag("--version", VersionText("shardtune"), "print the version and the libraries built with");
  std::string log_level = "info", log_format = "text";
  // --log-level and --log-format, on the app and on each of `commands`.
  auto add_log_options = [&](std::initializer_list<CLI::App*> commands) {
    for (CLI::App* command : commands) {
      command->add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off");
      command->add_option("--log-format", log_format, "text, or json: one object a line")
          ->check(CLI::IsMember({"text", "json"}));
    }
  };
  add_log_options({&app});
  // Listed for --help; run by shardtune-worker (above).
  for (const auto& [name, description] : kWorkerCommands) app.add_subcommand(name, description);

  CLI::App* train = app.add_subcommand("train", "run a job locally: one rank, or N through mpirun");
  std::string job_path;
  LaunchOptions launch;
  train->add_option("job", job_path, "job spec (YAML)")->required();
  train->add_option("--np", launch.ranks, "number of ranks")->check(CLI::PositiveNumber);
  train->add_option("--hostfile", launch.hostfile, "MPI hostfile");
  train->add_option("--output", launch.output, "table (the log only) or json (also the outcome on stdout)")
      ->check(CLI::IsMember({"table", "json"}));

  CLI::App* sweep = app.add_subcommand(
      "sweep",
      "run a hyperparameter sweep's trials here (docs/sweeps.md); again: resume. Or, on a shardtune-server: "
      "sweep submit|get|list|watch|cancel");
  SweepCommandOptions sweep_options;
  // Not required: `shardtune sweep submit ...` names one of the server's commands instead.
  sweep->add_option("sweep", sweep_options.sweep_path, "sweep spec (YAML) to run here");
  sweep->require_subcommand(0, 1);
  sweep->add_option("--np", sweep_options.launch.ranks, "ranks per trial")->check(CLI::PositiveNumber);
  sweep->add_option("--hostfile", sweep_options.launch.hostfile, "MPI hostfile for each trial");
  sweep
      ->add_option("--slots", sweep_options.slots,
                   "cores (MPI slots) the trials share; default: this machine's. Trials at once: "
                   "min(parallel_trials, slots / ranks per trial)")
      ->check(CLI::PositiveNumber);

  CLI::App* planner = app.add_subcommand("plan", "per-rank memory of a job, before any device is spent");
  PlanArgs plan;
  AddPlanOptions(planner, plan);

  CLI::App* report = app.add_subcommand(
      "report", "a run's loss and validation curves (PNG) and a summary; a sweep's trials, sorted, and charts");
  std::string run_dir, report_output = "table";
  report->add_option("dir", run_dir, "a run's output.dir, or a sweep's directory (it holds trials.jsonl)")->required();
  report->add_option("--output", report_output, "table (the summary) or json")->check(CLI::IsMember({"table", "json"}));

  add_log_options({train, sweep, planner, report});

  ClientCommands client(app);
  FileCommands files(app);
  SweepCommands sweeps(*sweep);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitInvalidInput;
  }
  InitLogging(log_level, /*rank=*/-1, ParseLogFormat(log_format));
  if (client.parsed()) return client.Run();
  if (files.parsed()) return files.Run();
  if (sweeps.parsed()) return sweeps.Run();
  if (sweep->parsed() && sweep_options.sweep_path.empty()) {
    std::cerr << "shardtune sweep: expected a sweep spec to run here, or one of submit, get, list, watch, cancel\n"
              << sweep->help();
    return kExitInvalidInput;
  }
  if (sweep->parsed()) {
    sweep_options.launch.log_level = log_level;
    sweep_options.launch.log_format = log_format;
    return RunSweepCommand(sweep_options);
  }
  if (train->parsed()) {
    launch.log_level = log_level;
    launch.log_format = log_format;
    return LaunchTraining(job_path, launch);
  }
  const bool json = planner->parsed() ? plan.output == "json" : report_output == "json";
  try {
    if (planner->parsed()) return PlanJob(plan, *planner);
    if (report->parsed() && IsSweepDir(run_dir)) {
      const SweepReport summary = WriteSweepReport(run_dir);
      std::cout << (json ? SweepReportJson(summary) : summary.text);
      return kExitOk;
    }
    if (report->parsed()) {
      const RunReport summary = WriteRunReport(run_dir);
      std::cout << (json ? RunReportJson(summary) : summary.text);
      return kExitOk;
    }
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    const bool failed = e.code() == ErrorCode::kInternal || e.code() == ErrorCode::kIo;
    if (json) std::cout << FailureJson(failed ? "failed" : "invalid_input", e.what());
    return failed ? kExitFailed : kExitInvalidInput;
  }
  return kExitOk;
}
