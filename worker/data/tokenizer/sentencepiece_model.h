#pragma once
// SentencePiece .model files (a serialized ModelProto), read and run by shardtune itself: the
// library cannot share a process with LibTorch (both carry their own copy of protobuf, and the
// copies collide at load time). Supported: BPE and Unigram models, byte fallback, user-defined
// pieces, the dummy prefix, whitespace escaping and collapsing, and the normalization rules'
// precompiled charsmap (precompiled_charsmap.h), applied as SentencePiece's normalizer does.

#include <filesystem>
#include <memory>

#include "worker/data/tokenizer/tokenizer.h"

namespace shardtune {

std::unique_ptr<Tokenizer> LoadSentencePieceModel(const std::filesystem::path& path);

}  // namespace shardtune
