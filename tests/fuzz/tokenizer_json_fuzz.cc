// tokenizer.json (Hugging Face `tokenizers`): loaded, then a fixed text with every kind of
// character (ASCII, accents, CJK, emoji, special-token spellings, invalid UTF-8) encoded with and
// without special tokens and decoded back.

#include "common/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/tokenizer_exercise.h"
#include "worker/data/tokenizer/hf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tokenizer =
        shardtune::LoadHfTokenizerJson(std::string(shardtune::fuzz::AsText(data, size)), "tokenizer.json");
    shardtune::fuzz::ExerciseTokenizer(*tokenizer);
  } catch (const shardtune::Error&) {
  }
  return 0;
}
