#pragma once
// `shardtune quantize`: a model directory's frozen-base linear weights stored 4-bit, in the layout
// transformers saves for a bitsandbytes load_in_4bit model (sharding/prequantized.h). The result
// loads in transformers as it does, and in shardtune as a QLoRA base without its original weights.

#include <filesystem>

#include "sharding/quant4.h"

namespace shardtune {

// Writes `out_dir` (which must not exist; it appears complete or not at all): the model in
// `model_dir` with every decoder layer's linear weight quantized in `format` (the ones QLoRA
// quantizes, model_layout.h's QuantizedBaseUnits), every other tensor as it was, config.json with
// its quantization_config, and the tokenizer and generation files. Holds the quantized weights in
// memory (about 0.53 bytes per parameter) while it writes.
void QuantizeModel(const std::filesystem::path& model_dir, const std::filesystem::path& out_dir,
                   const Quant4Format& format);

}  // namespace shardtune
