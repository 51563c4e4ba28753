// Loading by byte range (ZeroEngine::LoadWeights over a SafetensorsWeightSource): at stage 3 a rank
// reads exactly the bytes of its shard's elements; at stages 0 and 1 the ranks of a host share
// the reading, each byte read once; on any world size, stage and dtype the loaded weights equal
// the single-process whole-tensor load bit for bit; a bad checkpoint is an error naming the file
// and the tensor on every rank before anything is read. Also the trainer's load record.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/safetensors.h"
#include "run_comparison.h"
#include "sharding/prequantized.h"
#include "sharding/weight_source.h"
#include "sharding/zero_engine.h"
#include "tiny_models.h"
#include "worker/models/hf_io.h"
#include "worker/trainer.h"
#include "world.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using testing::World;

// Shard boundaries fall inside tensors on 2 and 4 ranks; frozen and trainable units; "d" is
// small enough to stay gathered at stage 3 (kPersistence).
std::vector<UnitSpec> Units() {
  return {UnitSpec{"a", {ParameterSpec{"a.weight", {7, 13}, true}, ParameterSpec{"a.bias", {5}, false}}, true},
          UnitSpec{"b", {ParameterSpec{"b.weight", {37, 3}, true}}, false},
          UnitSpec{"c", {ParameterSpec{"c.weight", {19, 21}, true}, ParameterSpec{"c.norm", {21}, false}}, true},
          UnitSpec{"d", {ParameterSpec{"d.weight", {3}, true}}, true}};
}
constexpr int64_t kPersistence = 8;
// Small enough that every conversion runs in several chunks.
constexpr int64_t kBufferBytes = 64;

at::ScalarType TypeOf(DType dtype) { return *WeightScalarType(dtype); }

// The units' parameters as seeded random values in `dtype`, split over files of at most
// `max_file_bytes` (rank 0 writes; every rank waits).
fs::path WriteCheckpoint(const fs::path& dir, DType dtype, uint64_t max_file_bytes = 600) {
  if (World().rank() == 0) {
    fs::create_directories(dir);
    at::manual_seed(11);
    std::vector<at::Tensor> values;
    std::vector<TensorBytes> tensors;
    for (const UnitSpec& unit : Units()) {
      for (const ParameterSpec& p : unit.parameters) {
        values.push_back(at::randn(p.shape).to(TypeOf(dtype)).contiguous());
        tensors.push_back(
            TensorBytes{p.name, dtype, p.shape, values.back().data_ptr(), static_cast<size_t>(values.back().nbytes())});
      }
    }
    WriteSafetensorsModel(dir, tensors, max_file_bytes);
  }
  World().Barrier(CollectiveTag{"checkpoint written"});
  return dir;
}

// What an engine holds after a load: every parameter's fp32 value (the master weights of
// trainable units, the compute-dtype parameters of frozen ones, as ForEachUnitGathered gives
// them) and its compute-dtype value, whole.
struct Loaded {
  std::map<std::string, at::Tensor> fp32;
  std::map<std::string, at::Tensor> compute;
};

Loaded Snapshot(ZeroEngine& engine) {
  Loaded loaded;
  engine.ForEachUnitGathered([&](const UnitLayout& unit, const at::Tensor& full) {
    for (const auto& p : unit.parameters) loaded.fp32[p.spec.name] = full.narrow(0, p.offset, p.numel).clone();
  });
  std::vector<int> all(engine.layout().units.size());
  for (size_t u = 0; u < all.size(); ++u) all[u] = static_cast<int>(u);
  const UnitParameters params = engine.Acquire(all, /*requires_grad=*/false);
  for (const auto& [name, tensor] : params.all()) loaded.compute[name] = tensor.reshape({-1}).clone();
  engine.Release(all);
  return loaded;
}

ZeroConfig Config(int stage, at::ScalarType compute) {
  ZeroConfig zero;
  zero.stage = stage;
  zero.compute_dtype = compute;
  zero.persistence_threshold = kPersistence;
  return zero;
}

// Today's load, the reference, without an engine: each tensor whole in fp32, then in the compute
// dtype; the fp32 values of trainable units are the master weights, those of frozen ones their
// compute-dtype values.
Loaded WholeLoad(const fs::path& dir, at::ScalarType compute) {
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(dir);
  Loaded loaded;
  for (const UnitSpec& unit : Units()) {
    for (const ParameterSpec& p : unit.parameters) {
      // A copy: an F32 tensor is a view of the file's mapping, which ends with `checkpoint`.
      const at::Tensor fp32 = ReadHfTensor(checkpoint, dir, p).reshape({-1}).clone();
      loaded.compute[p.name] = fp32.to(compute);
      loaded.fp32[p.name] = unit.trainable ? fp32 : loaded.compute[p.name].to(at::kFloat);
    }
  }
  return loaded;
}

void ExpectSameBits(const std::map<std::string, at::Tensor>& actual,
                    const std::map<std::string, at::Tensor>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [name, tensor] : expected) {
    const at::Tensor& got = actual.at(name);
    if (got.scalar_type() != tensor.scalar_type() || !got.sizes().equals(tensor.sizes())) {
      ADD_FAILURE() << name << " is " << got.toString() << got.sizes() << ", expected " << tensor.toString()
                    << tensor.sizes();
      continue;
    }
    EXPECT_TRUE(at::equal(got, tensor)) << name << ": max difference "
                                        << (got.to(at::kFloat) - tensor.to(at::kFloat)).abs().max().item<double>();
  }
}

void ExpectSameBits(const Loaded& actual, const Loaded& expected) {
  ExpectSameBits(actual.fp32, expected.fp32);
  ExpectSameBits(actual.compute, expected.compute);
}

// The bytes, at `element` bytes each, of the parameters' elements inside [begin, end) of each unit,
// where `range(unit)` gives that range.
template <typename Range>
int64_t BytesWithin(const ShardedLayout& layout, int64_t element, Range range) {
  int64_t bytes = 0;
  for (const UnitLayout& unit : layout.units) {
    const auto [begin, end] = range(unit);
    for (const ParameterSlot& p : unit.parameters)
      bytes += std::max<int64_t>(0, std::min(p.offset + p.numel, end) - std::max(p.offset, begin)) * element;
  }
  return bytes;
}

int64_t AllTensorBytes(int64_t element) {
  int64_t bytes = 0;
  for (const UnitSpec& unit : Units())
    for (const ParameterSpec& p : unit.parameters) bytes += NumelOf(p.shape) * element;
  return bytes;
}

int64_t SumOverRanks(int64_t value) {
  at::Tensor sum = at::full({1}, value, at::kLong);
  World().AllReduceSum(sum, CollectiveTag{"sum"})->Wait();
  return sum.item<int64_t>();
}

class LoadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { dir_ = new fs::path(testing::SharedScratchDir("load")); }
  static void TearDownTestSuite() {
    World().Barrier(CollectiveTag{"teardown"});
    if (World().rank() == 0) fs::remove_all(*dir_);
    delete dir_;
  }
  static fs::path* dir_;
};

fs::path* LoadTest::dir_ = nullptr;

TEST_F(LoadTest, Stage3ReadsOnlyTheBytesOfTheRanksShardAndEqualsTheWholeLoad) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const fs::path checkpoint = WriteCheckpoint(*dir_ / fmt::format("s3-{}", DTypeName(dtype)), dtype);
    for (at::ScalarType compute : {at::kFloat, at::kBFloat16}) {
      SCOPED_TRACE(fmt::format("{} into {} on {} ranks", DTypeName(dtype), c10::toString(compute), World().size()));
      OwnedProcessGroups groups = MakeProcessGroups(World(), 0);
      ZeroEngine engine(Units(), Config(3, compute), groups.groups);
      SafetensorsWeightSource source(checkpoint, kBufferBytes);
      engine.LoadWeights(source);
      const int64_t shard = World().rank();
      EXPECT_EQ(source.bytes_read(),
                BytesWithin(engine.layout(), static_cast<int64_t>(DTypeSize(dtype)), [&](const UnitLayout& unit) {
                  return std::pair(shard * unit.shard_size, (shard + 1) * unit.shard_size);
                }));
      EXPECT_EQ(SumOverRanks(source.bytes_read()), AllTensorBytes(static_cast<int64_t>(DTypeSize(dtype))));
      ExpectSameBits(Snapshot(engine), WholeLoad(checkpoint, compute));
    }
  }
}

TEST_F(LoadTest, Stages0And1ShareTheReadingAmongTheRanksOfAHost) {
  const fs::path checkpoint = WriteCheckpoint(*dir_ / "shared-read", DType::kBF16);
  const std::unique_ptr<Communicator> node = MakeNodeGroup(World());
  ASSERT_EQ(node->size(), World().size()) << "the test's ranks run on one host";
  for (int stage : {0, 1}) {
    for (at::ScalarType compute : {at::kFloat, at::kBFloat16}) {
      SCOPED_TRACE(fmt::format("stage {} {} on {} ranks", stage, c10::toString(compute), World().size()));
      OwnedProcessGroups groups = MakeProcessGroups(World(), 0);
      ZeroEngine engine(Units(), Config(stage, compute), groups.groups);
      SafetensorsWeightSource source(checkpoint, kBufferBytes);
      engine.LoadWeights(source, ZeroEngine::Units::kAll, node.get());
      // Each unit split in node->size() equal pieces; a rank reads the parameters' part of its own.
      const int n = node->size(), r = node->rank();
      EXPECT_EQ(source.bytes_read(), BytesWithin(engine.layout(), 2, [&](const UnitLayout& unit) {
                  const int64_t piece = (unit.padded + n - 1) / n;
                  return std::pair(r * piece, (r + 1) * piece);
                }));
      EXPECT_EQ(SumOverRanks(source.bytes_read()), AllTensorBytes(2)) << "the host reads every byte once";
      ExpectSameBits(Snapshot(engine), WholeLoad(checkpoint, compute));
    }
  }
}

// `check` throws an Error whose message holds each of `fragments`.
template <typename Check>
void ExpectRefused(Check check, const std::vector<std::string>& fragments) {
  try {
    check();
    ADD_FAILURE() << "not refused; expected an error naming " << fragments.front();
  } catch (const Error& e) {
    for (const std::string& fragment : fragments)
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
          << "'" << e.what() << "' does not mention " << fragment;
  }
}

TEST_F(LoadTest, ABadCheckpointIsAnErrorNamingTheFileAndTheTensorBeforeAnythingIsRead) {
  const fs::path good = WriteCheckpoint(*dir_ / "good", DType::kBF16, 1'000'000);
  const fs::path mine = *dir_ / fmt::format("bad-rank-{}", World().rank());  // each rank its own copies
  const fs::path file = mine / "model.safetensors";
  fs::create_directories(mine);
  fs::copy_file(good / "model.safetensors", file);
  std::vector<ParameterSpec> all;
  for (const UnitSpec& unit : Units()) all.insert(all.end(), unit.parameters.begin(), unit.parameters.end());

  std::string last;  // the tensor whose bytes end the file
  uint64_t last_end = 0;
  const std::unique_ptr<SafetensorsFile> opened = SafetensorsFile::Open(file);
  for (const auto& [name, info] : opened->tensors()) {
    if (info.end > last_end) last = "'" + name + "'", last_end = info.end;
  }

  SafetensorsWeightSource source(mine, kBufferBytes);
  ExpectRefused(
      [&] {
        source.Check({ParameterSpec{"e.weight", {2, 2}, true}});
      },
      {mine.string(), "'e.weight'", "missing"});
  ExpectRefused(
      [&] {
        source.Check({ParameterSpec{"a.weight", {13, 7}, true}});
      },
      {file.string(), "'a.weight'", "has shape [7, 13]"});
  // Cut short after it was opened: the check sees it before any byte is read.
  fs::resize_file(file, fs::file_size(file) - 2);  // into the last tensor only
  ExpectRefused([&] { source.Check(all); }, {file.string(), last, "truncated"});
  EXPECT_EQ(source.bytes_read(), 0);
  // Cut short before: opening it names the tensor that runs past the end.
  ExpectRefused([&] { SafetensorsWeightSource reopened(mine, kBufferBytes); }, {file.string(), last, "run past"});

  const int32_t ints[3] = {1, 2, 3};
  WriteSafetensors(file, {TensorBytes{"d.weight", DType::kI32, {3}, ints, sizeof(ints)}});
  SafetensorsWeightSource integers(mine, kBufferBytes);
  ExpectRefused(
      [&] {
        integers.Check({ParameterSpec{"d.weight", {3}, true}});
      },
      {file.string(), "'d.weight'", "is I32"});
}

// A LoRA job's metrics.jsonl begins with the load record: every rank's bytes read, which add up
// to the checkpoint's tensor bytes at stage 3 (each rank its shards) and at stage 0 (the host's
// ranks share the reading); training after it is unchanged (the equivalence tests).
TEST_F(LoadTest, TheLoadRecordCountsEachByteOfTheBaseModelOnce) {
  const fs::path model = *dir_ / "tiny-bf16";
  if (World().rank() == 0) {
    const fs::path source = *dir_ / "tiny.config";
    testing::WriteText(source / "config.json", testing::TinyConfig("llama", R"("tie_word_embeddings": false)"));
    FlatParameters flat(LlamaParameterSpecs(LlamaConfig::Load(source)));
    InitializeWeights(flat, 3, /*std=*/0.1);
    WriteHfModel(model, source, flat, ComputeDType::kBf16, /*max_shard_bytes=*/4000);
    std::string text;
    for (int n = 0; n < 8; ++n) text += fmt::format("{{\"input_ids\": [1, {}, {}, {}, 7]}}\n", 3 + n, 4 + n, 5 + n);
    testing::WriteText(*dir_ / "tokens.jsonl", text);
  }
  World().Barrier(CollectiveTag{"model written"});
  ASSERT_TRUE(fs::exists(model / "model.safetensors.index.json")) << "the model is in several files";
  int64_t tensor_bytes = 0;
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(model);
  for (const std::string& name : checkpoint.Names()) {
    const TensorInfo& info = *checkpoint.Find(name)->info;
    tensor_bytes += static_cast<int64_t>(info.end - info.begin);
  }
  for (int stage : {0, 3}) {
    SCOPED_TRACE(fmt::format("stage {} on {} ranks", stage, World().size()));
    const fs::path out = *dir_ / fmt::format("run-s{}", stage);
    const std::string yaml = fmt::format(
        "name: t\nmodel: {{path: {}, dtype: bf16}}\nmethod: {{type: lora}}\n"
        "data: {{train: tokens.jsonl, format: tokens}}\noutput: {{dir: {}}}\n"
        "training: {{max_steps: 1, micro_batch_size: 1, global_batch_size: {}}}\nsharding: {{zero_stage: {}}}\n",
        model.string(), out.string(), World().size(), stage);
    RunTraining(ParseJobSpec(yaml, "job.yaml", *dir_), World());
    World().Barrier(CollectiveTag{"trained"});
    std::ifstream in(out / "metrics.jsonl");
    std::string line;
    std::getline(in, line);
    const nlohmann::json load = nlohmann::json::parse(line).at("load");
    const std::vector<int64_t> bytes = load.at("per_rank").at("bytes_read").get<std::vector<int64_t>>();
    ASSERT_EQ(bytes.size(), static_cast<size_t>(World().size()));
    EXPECT_EQ(load.at("bytes_read").get<int64_t>(), tensor_bytes);
    for (int64_t b : bytes) {
      EXPECT_GT(b, 0);
      EXPECT_LE(b, tensor_bytes / World().size() + tensor_bytes / 4) << "a rank reads about its share";
    }
  }
}

// --- pre-quantized checkpoints (sharding/prequantized.h) ---

// A frozen norm and a 4-bit unit: weights of several records with a partial last block (q), one
// smaller than a block with an odd count (k), and one just over two records (o).
std::vector<UnitSpec> QuantizedUnits(const Quant4Format& format) {
  return {UnitSpec{"norms", {ParameterSpec{"n.weight", {40}, false}}, false},
          UnitSpec{"layer 0 4-bit",
                   {ParameterSpec{"q.weight", {130, 300}, true}, ParameterSpec{"k.weight", {7, 13}, true},
                    ParameterSpec{"o.weight", {256, 129}, true}},
                   false,
                   format}};
}

// One checkpoint's values (bf16, seeded) and, for each 4-bit weight, its quantized tensors.
struct QuantizedCheckpoint {
  std::map<std::string, at::Tensor> values;  // bf16
  std::map<std::string, Quant4Tensor> quantized;
  std::vector<PrequantizedTensors> held;

  explicit QuantizedCheckpoint(const Quant4Format& format) {
    at::manual_seed(23);
    for (const UnitSpec& unit : QuantizedUnits(format)) {
      for (const ParameterSpec& p : unit.parameters) {
        values[p.name] = at::randn(p.shape).to(at::kBFloat16).contiguous();
        if (!unit.quant4) continue;
        const at::Tensor fp32 = values[p.name].to(at::kFloat).contiguous();
        quantized[p.name] = Quantize4(fp32.data_ptr<float>(), fp32.numel(), format);
      }
    }
  }
  // The original weights.
  std::vector<TensorBytes> Original() const {
    std::vector<TensorBytes> tensors;
    for (const auto& [name, v] : values)
      tensors.push_back(
          TensorBytes{name, DType::kBF16, v.sizes().vec(), v.data_ptr(), static_cast<size_t>(v.nbytes())});
    return tensors;
  }
  // The 4-bit weights in transformers' layout, the others as they are.
  std::vector<TensorBytes> Stored() {
    std::vector<TensorBytes> tensors;
    for (const auto& [name, v] : values) {
      const auto it = quantized.find(name);
      if (it == quantized.end()) {
        tensors.push_back(
            TensorBytes{name, DType::kBF16, v.sizes().vec(), v.data_ptr(), static_cast<size_t>(v.nbytes())});
        continue;
      }
      held.push_back(PrequantizedTensorsOf(name, v.sizes().vec(), "bfloat16", it->second));
      tensors.insert(tensors.end(), held.back().tensors.begin(), held.back().tensors.end());
    }
    return tensors;
  }
};

// Bytes of the tensors a load reads: every tensor but the maps and quant_states (read whole when
// the checkpoint is opened).
int64_t LoadedTensorBytes(const fs::path& dir) {
  const SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::Open(dir);
  int64_t bytes = 0;
  for (const std::string& name : checkpoint.Names()) {
    if (name.find("quant_map") != std::string::npos || name.find(".quant_state.") != std::string::npos) continue;
    const TensorInfo& info = *checkpoint.Find(name)->info;
    bytes += static_cast<int64_t>(info.end - info.begin);
  }
  return bytes;
}

TEST_F(LoadTest, APrequantizedCheckpointLoadsAsItsOriginalQuantizedAtLoad) {
  // Written by transformers' layout (over several files, so that a weight's tensors may lie in
  // different ones) and loaded: the engine holds the same records, reading each byte once.
  for (const Quant4Format& format : {Quant4Format{}, Quant4Format{Quant4Type::kFp4, 128, false}}) {
    const std::string name =
        fmt::format("{}-{}-{}", Quant4TypeName(format.type), format.block_size, format.double_quant);
    const fs::path original = *dir_ / ("original-" + name), stored = *dir_ / ("stored-" + name);
    QuantizedCheckpoint checkpoint(format);
    if (World().rank() == 0) {
      fs::create_directories(original);
      fs::create_directories(stored);
      WriteSafetensorsModel(original, checkpoint.Original());
      WriteSafetensorsModel(stored, checkpoint.Stored(), /*max_shard_bytes=*/20'000);
    }
    World().Barrier(CollectiveTag{"checkpoints written"});
    ASSERT_TRUE(fs::exists(stored / "model.safetensors.index.json"));
    const std::unique_ptr<Communicator> node = MakeNodeGroup(World());
    for (int stage : {0, 3}) {
      SCOPED_TRACE(fmt::format("{} stage {} on {} ranks", name, stage, World().size()));
      OwnedProcessGroups groups = MakeProcessGroups(World(), 0);
      ZeroEngine quantized_at_load(QuantizedUnits(format), Config(stage, at::kFloat), groups.groups);
      SafetensorsWeightSource from_original(original, kBufferBytes);
      quantized_at_load.LoadWeights(from_original, ZeroEngine::Units::kAll, node.get());
      ZeroEngine loaded(QuantizedUnits(format), Config(stage, at::kFloat), groups.groups);
      SafetensorsWeightSource from_stored(stored, kBufferBytes);
      EXPECT_EQ(from_stored.prequantized().size(), 3u);
      loaded.LoadWeights(from_stored, ZeroEngine::Units::kAll, node.get());
      ExpectSameBits(Snapshot(loaded), Snapshot(quantized_at_load));
      EXPECT_EQ(SumOverRanks(from_stored.bytes_read()), LoadedTensorBytes(stored)) << "each byte read once";
    }
    // The records are bitsandbytes' tensors cut at every 256 blocks, byte for byte.
    SafetensorsWeightSource source(stored, kBufferBytes);
    const ParameterSpec q{"q.weight", {130, 300}, true};
    const std::vector<uint8_t> expected = RecordsOf(checkpoint.quantized.at("q.weight"));
    const int64_t count = (130 * 300 + format.record_elements() - 1) / format.record_elements();  // 3 or 2
    ASSERT_EQ(static_cast<int64_t>(expected.size()), count * format.record_bytes());
    std::vector<uint8_t> records(expected.size());
    ASSERT_TRUE(source.ReadRecords(q, format, 0, count, records.data()));
    EXPECT_EQ(records, expected);
    ASSERT_TRUE(source.ReadRecords(q, format, 1, count - 1, records.data()));
    EXPECT_TRUE(std::equal(records.begin(), records.begin() + (count - 1) * format.record_bytes(),
                           expected.begin() + format.record_bytes()));
    EXPECT_FALSE(source.ReadRecords(ParameterSpec{"n.weight", {40}, false}, format, 0, 1, records.data()));
    // Read gives the dequantized values of any range.
    std::vector<float> all(130 * 300);
    Dequantize4(checkpoint.quantized.at("q.weight"), all.data());
    at::Tensor range = at::empty({20'000}, at::kFloat);
    source.Read(q, 17'000, 20'000, range);
    EXPECT_TRUE(at::equal(range, at::from_blob(all.data() + 17'000, {20'000}, at::kFloat)));
  }
}

TEST_F(LoadTest, ABadPrequantizedCheckpointIsAnErrorNamingTheTensor) {
  const Quant4Format nf4;
  const fs::path mine = *dir_ / fmt::format("bad-4bit-rank-{}", World().rank());
  // Writes the checkpoint with `change` applied to its tensors, and opens it.
  auto open = [&](const std::function<void(std::vector<TensorBytes>&)>& change) {
    QuantizedCheckpoint checkpoint(nf4);
    std::vector<TensorBytes> tensors = checkpoint.Stored();
    change(tensors);
    fs::remove_all(mine);
    fs::create_directories(mine);
    WriteSafetensorsModel(mine, tensors);
    return std::make_unique<SafetensorsWeightSource>(mine, kBufferBytes);
  };
  auto without = [](const std::string& name) {
    return [name](std::vector<TensorBytes>& tensors) {
      tensors.erase(std::find_if(tensors.begin(), tensors.end(), [&](const TensorBytes& t) { return t.name == name; }));
    };
  };
  const std::string state = "q.weight.quant_state.bitsandbytes__nf4";
  std::string text;  // a replacement quant_state, alive while it is written
  auto with_state = [&](const std::string& json_text) {
    return [&, json_text](std::vector<TensorBytes>& tensors) {
      text = json_text;
      for (TensorBytes& t : tensors) {
        if (t.name != state) continue;
        t.data = text.data();
        t.nbytes = text.size();
        t.shape = {static_cast<int64_t>(text.size())};
      }
    };
  };
  ExpectRefused([&] { open(without("q.weight.absmax")); }, {mine.string(), "'q.weight.absmax' is missing", state});
  ExpectRefused([&] { open(without("k.weight.nested_absmax")); }, {"'k.weight.nested_absmax' is missing"});
  ExpectRefused([&] { open(without(state)); },
                {mine.string(), "'q.weight.quant_state.bitsandbytes__nf4' (or __fp4) is missing"});
  ExpectRefused(
      [&] {
        open(with_state(R"({"quant_type": "nf4", "blocksize": 64, "shape": [130, 299], )"
                        R"("nested_blocksize": 256, "nested_offset": 0.5})"));
      },
      {"'q.weight'", "is U8 [19500, 1]", "implies U8 of 19435 elements"});
  ExpectRefused([&] { open(with_state(R"({"quant_type": "nf4", "blocksize": 96, "shape": [130, 300]})")); },
                {state, "blocksize 96"});
  ExpectRefused([&] { open(with_state("not json")); }, {state, "is not a JSON object"});
  ExpectRefused([&] { open(with_state(R"({"quant_type": "fp4", "blocksize": 64, "shape": [130, 300]})")); },
                {state, "quant_type"});
  // The same number of elements in another shape than config.json's: caught by the check.
  const auto transposed = open(with_state(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", )"
                                          R"("shape": [300, 130], "nested_blocksize": 256, "nested_offset": 0.5})"));
  ExpectRefused(
      [&] {
        transposed->Check({ParameterSpec{"q.weight", {130, 300}, true}});
      },
      {"'q.weight'", "stored 4-bit with shape [300, 130]", "config.json implies [130, 300]"});
  // Another code map than bitsandbytes' NF4.
  const std::vector<float> uniform = [] {
    std::vector<float> v(16);
    for (int k = 0; k < 16; ++k) v[k] = -1.0f + 2.0f * k / 15;
    return v;
  }();
  ExpectRefused(
      [&] {
        open([&](std::vector<TensorBytes>& tensors) {
          for (TensorBytes& t : tensors)
            if (t.name == "o.weight.quant_map") t.data = uniform.data();
        });
      },
      {"'o.weight.quant_map'", "not bitsandbytes'"});
  // A job holding it in another format.
  const auto good = open([&](std::vector<TensorBytes>&) {});
  std::vector<uint8_t> records(Quant4Format{Quant4Type::kFp4}.record_bytes() * 3);
  ExpectRefused(
      [&] {
        good->ReadRecords(ParameterSpec{"q.weight", {130, 300}, true}, Quant4Format{Quant4Type::kFp4}, 0, 3,
                          records.data());
      },
      {"'q.weight'", "stored 4-bit as nf4 (block size 64, double quantization)", "the job holds it as fp4"});
}

}  // namespace
}  // namespace shardtune
