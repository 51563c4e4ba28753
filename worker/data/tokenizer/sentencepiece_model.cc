#include "worker/data/tokenizer/sentencepiece_model.h"

#include "common/error.h"

namespace shardtune {

std::unique_ptr<Tokenizer> LoadSentencePieceModel(const std::filesystem::path& path) {
  Fail(ErrorCode::kUnimplemented,
       "{}: SentencePiece .model files are not supported yet; use the model's tokenizer.json", path.string());
}

}  // namespace shardtune
