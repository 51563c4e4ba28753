// shardtune-worker: everything that runs a model or reads its data, in the one executable that
// links LibTorch. `shardtune-worker JOB.yaml` is one rank of a job (mpirun and srun start it);
// the subcommands are the model and data commands of the `shardtune` CLI, which hands them here
// (docs/cli.md).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <iterator>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/logging.h"
#include "common/model_config.h"
#include "common/version.h"
#include "sharding/flat_parameters.h"
#include "sharding/model_layout.h"
#include "worker/blas_env.h"
#include "worker/check_file.h"
#include "worker/data/tokenizer/tokenizer.h"
#include "worker/entry.h"
#include "worker/evaluate.h"
#include "worker/export.h"
#include "worker/generate.h"
#include "worker/models/hf_io.h"
#include "worker/models/llama.h"
#include "worker/quantize_model.h"
#include "worker/validate_data.h"

namespace shardtune {
namespace {

std::vector<int64_t> ParseIds(const std::string& text) {
  std::vector<int64_t> ids;
  std::istringstream in(text);
  std::string word;
  while (in >> word) {
    size_t used = 0;
    int64_t id = 0;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size()) Fail(ErrorCode::kInvalidArgument, "--input-ids: '{}' is not an integer token id", word);
    ids.push_back(id);
  }
  return ids;
}

struct GenerateArgs {
  std::string model;
  std::string adapter;
  std::string prompt;
  std::string input_ids;
  std::string tokenizer;
  std::string format = "text";
  bool ignore_eos = false;
  std::string quantization = "none";
  int64_t quant_block_size = 64;
  bool no_double_quant = false;
  GenerateOptions options;
};

// `shardtune-worker generate`'s options, read into `gen`.
CLI::App* AddGenerateCommand(CLI::App& app, GenerateArgs& gen) {
  CLI::App* generate = app.add_subcommand("generate", "generate tokens from a model directory");
  generate->add_option("--model", gen.model, "Hugging Face model directory")->required();
  generate->add_option("--adapter", gen.adapter, "PEFT adapter directory");
  generate->add_option("--prompt", gen.prompt, "prompt text (needs a tokenizer)");
  generate->add_option("--input-ids", gen.input_ids, "prompt token ids, space-separated");
  generate->add_option("--tokenizer", gen.tokenizer, "tokenizer for --prompt and --format text (default: the model's)");
  generate->add_option("--max-new-tokens", gen.options.max_new_tokens, "tokens to generate")
      ->check(CLI::NonNegativeNumber);
  generate->add_option("--temperature", gen.options.temperature, "0 for greedy")->check(CLI::NonNegativeNumber);
  generate->add_option("--top-p", gen.options.top_p, "nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  generate->add_option("--seed", gen.options.seed, "sampling seed");
  generate->add_option("--format", gen.format, "text or ids")->check(CLI::IsMember({"text", "ids"}));
  generate->add_flag("--ignore-eos", gen.ignore_eos, "keep generating after an end-of-sequence token");
  generate
      ->add_option("--quantization", gen.quantization,
                   "none, nf4 or fp4: the base's linear weights in 4 bits, as a QLoRA adapter was trained on them")
      ->check(CLI::IsMember({"none", "nf4", "fp4"}));
  generate->add_option("--quant-block-size", gen.quant_block_size, "with --quantization: elements per absmax")
      ->check(CLI::IsMember(std::vector<int64_t>(kQuant4BlockSizes.begin(), kQuant4BlockSizes.end())));
  generate->add_flag("--no-double-quant", gen.no_double_quant, "with --quantization: fp32 absmax");
  return generate;
}

int Generate(const GenerateArgs& args) {
  if (args.prompt.empty() == args.input_ids.empty()) {
    Fail(ErrorCode::kInvalidArgument, "give the prompt as --prompt TEXT or as --input-ids \"1 2 3\" (one of them)");
  }
  // Text in or out needs a tokenizer: --tokenizer, else the model directory's.
  std::unique_ptr<Tokenizer> tokenizer;
  if (!args.prompt.empty() || args.format == "text") {
    try {
      tokenizer = Tokenizer::Load(args.tokenizer.empty() ? args.model : args.tokenizer);
    } catch (const Error& e) {
      Fail(ErrorCode::kInvalidArgument,
           "--prompt and --format text need a tokenizer ({}); give --tokenizer, or use "
           "--input-ids and --format ids",
           e.what());
    }
  }
  std::optional<Quant4Format> quantization;
  if (args.quantization != "none")
    quantization = Quant4Format{*ParseQuant4Type(args.quantization), args.quant_block_size, !args.no_double_quant};
  const LoadedModel loaded = LoadModelForInference(args.model, args.adapter, {}, quantization);
  if (!loaded.model || loaded.config.task() != ModelTask::kCausalLm) {
    Fail(ErrorCode::kInvalidArgument, "{}: a {} does not generate text; generate needs a causal language model",
         args.model, loaded.config.Architecture());
  }
  GenerateOptions options = args.options;
  options.stop_at_eos = !args.ignore_eos;
  const std::vector<int64_t> prompt =
      args.prompt.empty() ? ParseIds(args.input_ids) : tokenizer->Encode(args.prompt, /*add_special_tokens=*/true);
  const std::vector<int64_t> ids = shardtune::Generate(*loaded.model, prompt, options);
  if (args.format == "text") {
    std::cout << tokenizer->Decode(ids, /*skip_special_tokens=*/true) << std::endl;
    return kExitOk;
  }
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  std::cout << line << std::endl;
  return kExitOk;
}

int Tokenize(const std::string& path, bool add_special_tokens, bool decode) {
  const auto tokenizer = Tokenizer::Load(path);
  const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  if (decode) {
    std::cout << tokenizer->Decode(ParseIds(input), /*skip_special_tokens=*/!add_special_tokens);
    return kExitOk;
  }
  std::string line;
  for (int64_t id : tokenizer->Encode(input, add_special_tokens))
    line += (line.empty() ? "" : " ") + std::to_string(id);
  std::cout << line << "\n";
  return kExitOk;
}

ComputeDType ParseComputeDType(const std::string& name) {
  return name == "bf16" ? ComputeDType::kBf16 : name == "fp16" ? ComputeDType::kFp16 : ComputeDType::kFp32;
}

struct InitModelArgs {
  std::string config_path, out_dir, dtype = "fp32";
  uint64_t seed = 0;
  uint64_t max_shard_mb = 5000;  // the files' size limit: one file below it, else model-0000K-of-0000N + index
};

int InitModel(const InitModelArgs& args) {
  const ModelConfig config = ModelConfig::Parse(ReadFile(args.config_path), args.config_path);
  FlatParameters flat(ModelParameterSpecs(config));
  InitializeWeights(flat, args.seed);
  WriteHfModel(args.out_dir, args.config_path, flat, ParseComputeDType(args.dtype), args.max_shard_mb * 1'000'000);
  spdlog::info("wrote a randomly initialized {} model ({} parameters, {}, seed {}) to {}", config.model_type(),
               flat.numel(), args.dtype, args.seed, args.out_dir);
  return kExitOk;
}

struct QuantizeArgs {
  std::string model_dir, out_dir, type = "nf4";
  int64_t block_size = 64;
  bool no_double_quant = false;
};

// `quantize MODEL_DIR --out DIR [--type nf4|fp4] [--block-size N] [--no-double-quant]`.
CLI::App* AddQuantizeCommand(CLI::App& app, QuantizeArgs& args) {
  CLI::App* quantize = app.add_subcommand(
      "quantize", "store a model's linear weights 4-bit (NF4/FP4), as transformers saves a bitsandbytes model");
  quantize->add_option("model", args.model_dir, "Hugging Face model directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  quantize->add_option("--out", args.out_dir, "output directory (must not exist)")->required();
  quantize->add_option("--type", args.type, "nf4 or fp4")->check(CLI::IsMember({"nf4", "fp4"}));
  quantize->add_option("--block-size", args.block_size, "elements per absmax: 64, 128, ..., 4096")
      ->check(CLI::IsMember(std::vector<int64_t>(kQuant4BlockSizes.begin(), kQuant4BlockSizes.end())));
  quantize->add_flag("--no-double-quant", args.no_double_quant, "keep the absmax in fp32 (bitsandbytes' nested=False)");
  return quantize;
}

int Quantize(const QuantizeArgs& args) {
  QuantizeModel(args.model_dir, args.out_dir,
                Quant4Format{*ParseQuant4Type(args.type), args.block_size, !args.no_double_quant});
  return kExitOk;
}

struct ExportArgs {
  std::string checkpoint_dir;
  std::string to = "hf";
  std::string out_dir;
  std::string dtype = "fp32";
  int processes = 0;  // 0: one, or mpirun's
};

int Export(const ExportArgs& args) {
  CheckpointExport request;
  request.checkpoint_dir = args.checkpoint_dir;
  request.format = args.to == "peft" ? ExportFormat::kPeft : ExportFormat::kHf;
  request.out_dir = args.out_dir;
  request.dtype = ParseComputeDType(args.dtype);
  return RunExport(request, args.processes);
}

// `evaluate --output table`: the figures that are numbers, "name: value" a line.
std::string FiguresTable(const nlohmann::json& figures) {
  std::string text;
  for (const auto& [name, value] : figures.items()) {
    if (value.is_number()) text += name + ": " + value.dump() + "\n";
  }
  if (figures.contains("generation")) {  // the generation metrics, prefixed
    for (const auto& [name, value] : figures["generation"].items())
      text += "generation." + name + ": " + value.dump() + "\n";
  }
  return text;
}

struct EvaluateArgs {
  std::string model, adapter, data, tokenizer, out;
  std::string output = "json";  // the figures nest (per class, confusion matrix): JSON unless asked
  EvaluateOptions options;
};

// `shardtune-worker evaluate`'s options, read into `eval`.
CLI::App* AddEvaluateCommand(CLI::App& app, EvaluateArgs& eval) {
  CLI::App* evaluate = app.add_subcommand("evaluate", "a finished model's metrics on a dataset (its task's)");
  evaluate->add_option("--model", eval.model, "Hugging Face model directory")->required();
  evaluate->add_option("--adapter", eval.adapter, "PEFT adapter directory");
  evaluate->add_option("--data", eval.data, "JSONL dataset")->required();
  evaluate->add_option("--format", eval.options.format,
                       "the data's format (default for classifiers: classification or ner)");
  evaluate->add_option("--tokenizer", eval.tokenizer, "default: the model's");
  evaluate->add_option("--max-seq-len", eval.options.max_seq_len, "longer examples are truncated")
      ->check(CLI::PositiveNumber);
  evaluate->add_option("--batch-size", eval.options.batch_size, "examples per forward")->check(CLI::PositiveNumber);
  evaluate->add_option("--out", eval.out, "also write the metrics (JSON) to this file");
  evaluate
      ->add_option("--metrics", eval.options.generation_metrics,
                   "generate an answer to each example's prompt and score it against the example's reference: "
                   "exact_match, rouge_l, bleu, json_parse_rate, json_field_f1, or pass@K: the share of problems "
                   "with a passing answer among K of --num-samples, each run against its record's tests in a sandbox "
                   "(language models)")
      ->delimiter(',');
  evaluate->add_option("--max-new-tokens", eval.options.generate.max_new_tokens, "generated tokens per answer at most")
      ->check(CLI::PositiveNumber);
  evaluate->add_option("--num-samples", eval.options.num_samples, "answers per example (with --temperature > 0)")
      ->check(CLI::PositiveNumber);
  evaluate->add_option("--temperature", eval.options.generate.temperature, "0: greedy")->check(CLI::NonNegativeNumber);
  evaluate->add_option("--top-p", eval.options.generate.top_p, "nucleus sampling's mass")->check(CLI::Range(0.0, 1.0));
  evaluate->add_option("--seed", eval.options.generate.seed, "of the sampling");
  evaluate->add_option("--generations-out", eval.options.generations_out,
                       "also write each answer as JSONL: {line, prompt, reference, generated; passed, outcome}");
  evaluate->add_option("--test-timeout", eval.options.sandbox.wall_seconds, "pass@K: seconds an answer's tests may run")
      ->check(CLI::PositiveNumber);
  evaluate->add_option("--output", eval.output, "json (default) or table: the top-level figures, one a line")
      ->check(CLI::IsMember({"table", "json"}));
  return evaluate;
}

struct SynthesizeArgs {
  SynthesizeOptions options;
  int processes = 0;
};

// `synthesize --model DIR --seed-data FILE --format F --num N --out FILE`, read into `args`.
CLI::App* AddSynthesizeCommand(CLI::App& app, SynthesizeArgs& args) {
  SynthesizeOptions& o = args.options;
  CLI::App* synthesize =
      app.add_subcommand("synthesize", "new training examples written by a teacher model from seed examples");
  synthesize->add_option("--model", o.model, "the teacher: a Hugging Face language model directory")->required();
  synthesize->add_option("--adapter", o.adapter, "a PEFT adapter on the teacher");
  synthesize->add_option("--seed-data", o.seed_data, "JSONL seed examples of the format")->required();
  synthesize->add_option("--format", o.format, "alpaca, chat, classification or completion")->required();
  synthesize->add_option("--num", o.num, "examples to write")->check(CLI::PositiveNumber);
  synthesize->add_option("--out", o.out, "the JSONL file to write")->required();
  synthesize->add_option("--template", o.template_file,
                         "a file with one example's text, fields as {name} (default: the format's, docs/data.md)");
  synthesize->add_option("--shots", o.shots, "seed examples in each prompt")->check(CLI::PositiveNumber);
  synthesize->add_option("--max-candidates", o.max_candidates, "give up after this many (default: 4 x --num)")
      ->check(CLI::NonNegativeNumber);
  synthesize->add_option("--batch-size", o.batch_size, "candidates a rank generates together")
      ->check(CLI::PositiveNumber);
  synthesize->add_option("--max-new-tokens", o.max_new_tokens, "tokens per candidate at most")
      ->check(CLI::PositiveNumber);
  synthesize->add_option("--temperature", o.temperature, "sampling temperature (0: greedy)")
      ->check(CLI::NonNegativeNumber);
  synthesize->add_option("--top-p", o.top_p, "nucleus sampling's mass")->check(CLI::Range(0.0, 1.0));
  synthesize->add_option("--seed", o.seed, "of the shots and the sampling");
  synthesize->add_option("--min-chars", o.min_chars, "shortest example text kept")->check(CLI::NonNegativeNumber);
  synthesize->add_option("--max-chars", o.max_chars, "longest example text kept")->check(CLI::PositiveNumber);
  synthesize->add_option("--dedup-threshold", o.dedup_threshold, "near duplicates: Jaccard similarity at least this")
      ->check(CLI::Range(0.0, 1.0));
  synthesize
      ->add_option("--rouge-threshold", o.rouge_threshold,
                   "drop a candidate whose ROUGE-L F against its closest seed is at least this")
      ->check(CLI::Range(0.0, 1.0));
  synthesize->add_option("--np", args.processes, "ranks that split the candidates (through mpirun)")
      ->check(CLI::PositiveNumber);
  return synthesize;
}

// check-file: the Files API's check of an uploaded training file (check_file.h).
struct CheckFileCommand {
  explicit CheckFileCommand(CLI::App& parent)
      : app(parent.add_subcommand("check-file",
                                  "check one data file on its own: every line valid JSON of a known format")) {
    app->add_option("file", path, "JSONL data file")->required();
    app->add_option("--format", format, "the data's format (default: from the first record's keys)");
  }
  int Run() const {
    std::optional<DataFormat> parsed;
    if (!format.empty() && !(parsed = DataFormatNamed(format)))
      Fail(ErrorCode::kInvalidArgument, "--format: '{}' is not a data format (see docs/data.md)", format);
    CheckDataFile(path, parsed, std::cout);
    return kExitOk;
  }

  CLI::App* app;
  std::string path;
  std::string format;  // empty: from the first record's keys
};

// `export CHECKPOINT --to hf|peft --out DIR`, its options read into `args`.
CLI::App* AddExportCommand(CLI::App& app, ExportArgs& args) {
  CLI::App* exporter = app.add_subcommand("export", "export a training checkpoint as a Hugging Face model directory");
  exporter->add_option("checkpoint", args.checkpoint_dir, "OUTPUT_DIR/checkpoints/step-N")->required();
  exporter->add_option("--to", args.to, "hf (or peft, with PEFT methods)")->check(CLI::IsMember({"hf", "peft"}));
  exporter->add_option("--out", args.out_dir, "output directory (must not exist)")->required();
  exporter->add_option("--dtype", args.dtype, "fp32, bf16 or fp16")->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  exporter
      ->add_option("--np", args.processes,
                   "processes that split the output files among them (through mpirun; default: 1, or mpirun's)")
      ->check(CLI::PositiveNumber);

  return exporter;
}

// `init-model --config config.json --out DIR`, its options read into `args`.
CLI::App* AddInitModelCommand(CLI::App& app, InitModelArgs& args) {
  CLI::App* init = app.add_subcommand("init-model", "write a randomly initialized model for a config.json");
  init->add_option("--config", args.config_path, "config.json of the model to create")
      ->required()
      ->check(CLI::ExistingFile);
  init->add_option("--out", args.out_dir, "output directory (must not exist)")->required();
  init->add_option("--seed", args.seed, "initialization seed");
  init->add_option("--dtype", args.dtype, "the weights' dtype: fp32, bf16 or fp16")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  init->add_option("--max-shard-mb", args.max_shard_mb,
                   "split the weights into files of at most this many MB (10^6 bytes), with an index")
      ->check(CLI::PositiveNumber);
  return init;
}

}  // namespace
}  // namespace shardtune

int main(int argc, char** argv) {
  shardtune::EnsureBlasCoreType(argv);
  using namespace shardtune;
  CLI::App app{
      "shardtune-worker: one rank of a shardtune job (shardtune-worker JOB.yaml), and the model and data "
      "commands of the shardtune CLI"};
  std::string log_level = "info", log_format = "text";
  std::string job_path, output = "table";
  app.add_option("job", job_path, "job spec (YAML): train one rank of it");
  // Every command's --output: table (for people) or json (for programs), as the shardtune CLI's.
  auto add_output = [&output](CLI::App* command, const std::string& what) {
    command->add_option("--output", output, "table or json: " + what)->check(CLI::IsMember({"table", "json"}));
  };
  add_output(&app, "json adds the run's outcome on stdout as one JSON object");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off");
  app.add_option("--log-format", log_format, "text, or json: one object a line")
      ->check(CLI::IsMember({"text", "json"}));
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", VersionText("shardtune-worker"), "print the version and the libraries built with");

  GenerateArgs gen;
  CLI::App* generate = AddGenerateCommand(app, gen);

  CLI::App* tokenize =
      app.add_subcommand("tokenize", "stdin text -> token ids (space-separated), or ids -> text with --decode");
  std::string tokenizer_path;
  bool no_special = false, decode = false;
  tokenize
      ->add_option("--tokenizer", tokenizer_path, "tokenizer.json, SentencePiece .model, or a directory holding one")
      ->required();
  tokenize->add_flag("--no-special", no_special, "do not add the post-processor's special tokens (BOS, EOS, CLS/SEP)");
  tokenize->add_flag("--decode", decode, "read ids from stdin and print the text");

  CLI::App* validate =
      app.add_subcommand("validate-data", "check every data file of a job: errors with file:line and a code");
  std::string validate_job;
  validate->add_option("job", validate_job, "job spec (YAML)")->required();
  add_output(validate, "the summary, or the problems, as JSON");

  const CheckFileCommand check_file(app);
  ExportArgs export_args;
  CLI::App* exporter = AddExportCommand(app, export_args);
  InitModelArgs init_args;
  CLI::App* init = AddInitModelCommand(app, init_args);
  QuantizeArgs quantize_args;
  CLI::App* quantize = AddQuantizeCommand(app, quantize_args);

  EvaluateArgs eval;
  CLI::App* evaluate = AddEvaluateCommand(app, eval);
  SynthesizeArgs synth;
  CLI::App* synthesize = AddSynthesizeCommand(app, synth);
  add_output(synthesize, "json prints what was done as one JSON object");

  for (CLI::App* command :
       {generate, tokenize, validate, check_file.app, exporter, init, quantize, evaluate, synthesize}) {
    command->add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off");
    command->add_option("--log-format", log_format, "text, or json: one object a line")
        ->check(CLI::IsMember({"text", "json"}));
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitInvalidInput;
  }
  if (app.get_subcommands().empty()) {
    if (job_path.empty()) {
      std::cerr << "give a job spec (shardtune-worker JOB.yaml) or a command; see --help\n";
      return kExitInvalidInput;
    }
    return RunWorker(job_path, log_level, ParseLogFormat(log_format), output == "json");
  }
  try {
    InitLogging(log_level, RankFromEnvironment(), ParseLogFormat(log_format));
    if (generate->parsed()) return Generate(gen);
    if (init->parsed()) return InitModel(init_args);
    if (quantize->parsed()) return Quantize(quantize_args);
    if (tokenize->parsed()) return Tokenize(tokenizer_path, !no_special, decode);
    if (exporter->parsed()) return Export(export_args);
    if (evaluate->parsed()) {
      eval.options.model = eval.model;
      eval.options.adapter = eval.adapter;
      eval.options.data = eval.data;
      eval.options.tokenizer = eval.tokenizer;
      const nlohmann::json figures = EvaluateModel(eval.options);
      const std::string text = figures.dump(2) + "\n";
      if (!eval.out.empty()) WriteFileAtomic(eval.out, text);
      std::cout << (eval.output == "json" ? text : FiguresTable(figures));
      return kExitOk;
    }
    if (validate->parsed()) {
      const nlohmann::json report = ValidateData(validate_job);
      std::cout << (output == "json" ? report.dump() + "\n" : ValidationText(report));
      return kExitOk;
    }
    if (check_file.app->parsed()) return check_file.Run();
    if (synthesize->parsed()) return RunSynthesize(synth.options, synth.processes, output == "json");
  } catch (const std::exception& e) {
    if (output == "json") std::cout << FailureJson(e);
    return ReportFailure(e);
  }
  return kExitOk;
}
