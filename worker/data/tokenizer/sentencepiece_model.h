#pragma once
// SentencePiece .model files (a serialized ModelProto), read and run by shardtune itself: the
// library cannot share a process with LibTorch (both carry their own copy of protobuf, and the
// copies collide at load time). Supported: BPE and Unigram models, byte fallback, the dummy
// prefix, whitespace escaping and collapsing; the normalization charsmap is approximated by NFKC
// where the model names an NFKC rule set ("nmt_nfkc", "nfkc").

#include <filesystem>
#include <memory>

#include "worker/data/tokenizer/tokenizer.h"

namespace shardtune {

std::unique_ptr<Tokenizer> LoadSentencePieceModel(const std::filesystem::path& path);

}  // namespace shardtune
