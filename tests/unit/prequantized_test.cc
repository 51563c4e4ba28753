// The bitsandbytes layout of a pre-quantized checkpoint (sharding/prequantized.h): the
// quant_state JSON and config.json's quantization_config as transformers writes and reads them.
// Loading such checkpoints is tested in tests/mpi/load_test.cc and tests/e2e/qlora_test.sh.
#include "sharding/prequantized.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/error.h"

namespace shardtune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The tensor `name` among `tensors`.
const TensorBytes& Named(const PrequantizedTensors& tensors, const std::string& name) {
  for (const TensorBytes& t : tensors.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

TEST(Prequantized, TheTensorsAreThoseQuantStateAsDictPacks) {
  std::vector<float> values(200);
  for (size_t k = 0; k < values.size(); ++k) values[k] = std::sin(0.37f * k) * (1 + k % 7);
  const Quant4Tensor q = Quantize4(values.data(), 200, Quant4Format{});
  const PrequantizedTensors t = PrequantizedTensorsOf("w", {10, 20}, "bfloat16", q);
  EXPECT_EQ(t.tensors.size(), 6u);
  EXPECT_EQ(Named(t, "w").shape, (std::vector<int64_t>{100, 1}));
  EXPECT_EQ(Named(t, "w").dtype, DType::kU8);
  EXPECT_EQ(Named(t, "w.absmax").shape, (std::vector<int64_t>{4}));  // 200 elements, blocks of 64
  EXPECT_EQ(Named(t, "w.absmax").dtype, DType::kU8);
  EXPECT_EQ(Named(t, "w.nested_absmax").shape, (std::vector<int64_t>{1}));
  EXPECT_EQ(Named(t, "w.nested_quant_map").shape, (std::vector<int64_t>{256}));
  EXPECT_EQ(Named(t, "w.quant_map").shape, (std::vector<int64_t>{16}));
  const TensorBytes& state = Named(t, "w.quant_state.bitsandbytes__nf4");
  const auto* text = static_cast<const char*>(state.data);
  const json parsed = json::parse(text, text + state.nbytes);
  EXPECT_EQ(parsed["quant_type"], "nf4");
  EXPECT_EQ(parsed["blocksize"], 64);
  EXPECT_EQ(parsed["dtype"], "bfloat16");
  EXPECT_EQ(parsed["shape"], json::array({10, 20}));
  EXPECT_EQ(parsed["nested_blocksize"], 256);
  EXPECT_EQ(parsed["nested_dtype"], "float32");
  EXPECT_EQ(static_cast<float>(parsed["nested_offset"].get<double>()), q.offset) << "the fp32 offset, exactly";

  const Quant4Tensor fp4 = Quantize4(values.data(), 200, Quant4Format{Quant4Type::kFp4, 128, false});
  const PrequantizedTensors plain = PrequantizedTensorsOf("w", {200}, "float32", fp4);
  EXPECT_EQ(plain.tensors.size(), 4u) << "no nested tensors without double quantization";
  EXPECT_EQ(Named(plain, "w.absmax").dtype, DType::kF32);
  EXPECT_EQ(Named(plain, "w.absmax").shape, (std::vector<int64_t>{2}));
  const TensorBytes& fp4_state = Named(plain, "w.quant_state.bitsandbytes__fp4");
  const auto* fp4_text = static_cast<const char*>(fp4_state.data);
  EXPECT_FALSE(json::parse(fp4_text, fp4_text + fp4_state.nbytes).contains("nested_offset"));
}

class DeclaredQuantizationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("shardtune-declared-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::optional<Quant4Format> Declared(const std::string& quantization_config) {
    WriteFileAtomic(dir_ / "config.json",
                    R"({"model_type": "llama", "quantization_config": )" + quantization_config + "}");
    return DeclaredQuantization(dir_);
  }
  void ExpectRefused(const std::string& quantization_config, const std::string& fragment) {
    try {
      Declared(quantization_config);
      ADD_FAILURE() << quantization_config << " was not refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find((dir_ / "config.json").string()), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  }
  fs::path dir_;
};

TEST_F(DeclaredQuantizationTest, ReadsWhatTransformersWritesAndRefusesWhatItCannotLoad) {
  WriteFileAtomic(dir_ / "config.json", R"({"model_type": "llama"})");
  EXPECT_FALSE(DeclaredQuantization(dir_));
  const Quant4Format fp4{Quant4Type::kFp4, 64, false};
  EXPECT_EQ(Declared(QuantizationConfigJson(fp4, "bfloat16")), fp4);
  EXPECT_EQ(Declared(QuantizationConfigJson(Quant4Format{}, "float32")), Quant4Format{});
  const json written = json::parse(QuantizationConfigJson(Quant4Format{}, "bfloat16"));
  EXPECT_EQ(written["quant_method"], "bitsandbytes");
  EXPECT_EQ(written["load_in_4bit"], true);
  EXPECT_EQ(written["bnb_4bit_compute_dtype"], "bfloat16");
  EXPECT_EQ(written["bnb_4bit_quant_storage"], "uint8");
  // transformers' defaults: fp4, no double quantization.
  EXPECT_EQ(Declared(R"({"quant_method": "bitsandbytes", "load_in_4bit": true})"), fp4);
  ExpectRefused(R"({"quant_method": "bitsandbytes", "load_in_8bit": true})", "load_in_4bit");
  ExpectRefused(R"({"quant_method": "gptq", "bits": 4})", "gptq");
  ExpectRefused(R"({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_storage": "bfloat16"})",
                "bnb_4bit_quant_storage is 'bfloat16'");
  ExpectRefused(R"({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "int4"})",
                "bnb_4bit_quant_type is 'int4'");
  ExpectRefused(R"("nf4")", "quantization_config must be an object");
}

}  // namespace
}  // namespace shardtune
