// A SentencePiece .model (a serialized ModelProto), read from a file as Tokenizer::Load reads it,
// then run as tokenizer_json_fuzz.cc runs a tokenizer.json.

#include "common/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/tokenizer_exercise.h"
#include "worker/data/tokenizer/sentencepiece_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = shardtune::fuzz::WriteScratch("tokenizer.model", shardtune::fuzz::AsText(data, size));
  try {
    const auto tokenizer = shardtune::LoadSentencePieceModel(path);
    shardtune::fuzz::ExerciseTokenizer(*tokenizer);
  } catch (const shardtune::Error&) {
  }
  return 0;
}
