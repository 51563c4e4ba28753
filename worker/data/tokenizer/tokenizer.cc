#include "worker/data/tokenizer/tokenizer.h"

#include "common/atomic_file.h"
#include "common/error.h"
#include "worker/data/tokenizer/hf_tokenizer.h"
#include "worker/data/tokenizer/sentencepiece_model.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::Load(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "tokenizer.json")) return Load(path / "tokenizer.json");
    if (fs::exists(path / "tokenizer.model")) return Load(path / "tokenizer.model");
    if (fs::exists(path / "vocab.json") && fs::exists(path / "merges.txt")) {
      return LoadGpt2VocabMerges(path / "vocab.json", path / "merges.txt");
    }
    if (fs::exists(path / "vocab.txt")) return LoadWordPieceVocab(path / "vocab.txt");  // BERT's
    Fail(ErrorCode::kNotFound, "{}: no tokenizer.json, tokenizer.model, vocab.json + merges.txt, or vocab.txt there",
         path.string());
  }
  if (!fs::exists(path, ec)) Fail(ErrorCode::kNotFound, "{}: no such tokenizer file", path.string());
  if (path.extension() == ".model") return LoadSentencePieceModel(path);
  if (path.extension() == ".txt" && path.filename().string().find("vocab") != std::string::npos)
    return LoadWordPieceVocab(path);
  if (path.extension() == ".json") {
    // A vocab.json beside a merges.txt is GPT-2's pair, not a tokenizer.json.
    const std::string name = path.filename().string();
    const fs::path merges =
        path.parent_path() / (name.size() > 10 && name.compare(name.size() - 10, 10, "vocab.json") == 0
                                  ? name.substr(0, name.size() - 10) + "merges.txt"
                                  : std::string("merges.txt"));
    if (name.find("vocab") != std::string::npos && fs::exists(merges)) return LoadGpt2VocabMerges(path, merges);
    return LoadHfTokenizerJson(ReadFile(path), path.string());
  }
  Fail(ErrorCode::kInvalidArgument, "{}: expected a tokenizer.json, a SentencePiece .model, or a directory holding one",
       path.string());
}

}  // namespace shardtune
