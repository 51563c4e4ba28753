#include "worker/data/tokenizer/sentencepiece_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <queue>
#include <unordered_map>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/protobuf_wire.h"
#include "worker/data/tokenizer/precompiled_charsmap.h"
#include "worker/data/tokenizer/unicode.h"
#include "worker/data/tokenizer/viterbi.h"

namespace shardtune {

namespace {

constexpr const char* kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

enum class PieceType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };
enum class ModelType { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

struct Piece {
  std::string text;
  float score = 0;
  PieceType type = PieceType::kNormal;
};

class SentencePieceModel : public Tokenizer {
 public:
  std::vector<Piece> pieces;
  ModelType model_type = ModelType::kUnigram;
  bool byte_fallback = false;
  int64_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::optional<PrecompiledCharsmap> charsmap;  // absent: no normalization (the "identity" rule)
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
  std::unordered_map<std::string, int64_t> ids;      // pieces usable in segmentation
  std::unordered_map<std::string, int64_t> by_text;  // every piece
  std::vector<std::string> user_defined;             // matched whole, longest first
  size_t max_piece_chars = 1;
  float min_score = 0;

  void Finish() {
    min_score = std::numeric_limits<float>::max();
    for (size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      by_text.emplace(p.text, static_cast<int64_t>(i));
      if (p.type == PieceType::kNormal || p.type == PieceType::kUserDefined || p.type == PieceType::kByte) {
        ids.emplace(p.text, static_cast<int64_t>(i));
      }
      if (p.type == PieceType::kUserDefined) user_defined.push_back(p.text);
      if (p.type == PieceType::kNormal) {
        min_score = std::min(min_score, p.score);
        max_piece_chars = std::max(max_piece_chars, Utf8Characters(p.text).size());
      }
    }
    std::sort(user_defined.begin(), user_defined.end(),
              [](const auto& a, const auto& b) { return a.size() > b.size(); });
  }

  // SentencePiece's Normalizer::Normalize: the charsmap applied prefix by prefix (user-defined
  // pieces pass through untouched), spaces at the start, the end and in runs dropped when
  // remove_extra_whitespaces says so, the dummy prefix added, and spaces escaped as U+2581.
  std::string Normalize(std::string_view input) const {
    const std::string_view space = escape_whitespaces ? kSpace : " ";
    if (remove_extra_whitespaces) {
      while (!input.empty()) {
        const auto [piece, length] = NormalizePrefix(input);
        if (piece != " ") break;
        input.remove_prefix(length);
      }
    }
    std::string out;
    if (input.empty()) return out;
    if (add_dummy_prefix) out += space;
    bool previous_space = remove_extra_whitespaces;
    while (!input.empty()) {
      auto [piece, length] = NormalizePrefix(input);
      input.remove_prefix(length);
      while (previous_space && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
      if (!piece.empty()) {
        for (char c : piece) {
          if (c == ' ')
            out += space;
          else
            out.push_back(c);
        }
        previous_space = piece.back() == ' ';
      }
      if (!remove_extra_whitespaces) previous_space = false;
    }
    if (remove_extra_whitespaces) {
      while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0)
        out.resize(out.size() - space.size());
    }
    return out;
  }

  // SentencePiece's NormalizePrefix: a user-defined piece as it is (the longest), else the charsmap's
  // longest rule, else one character (an invalid byte: U+FFFD).
  std::pair<std::string_view, size_t> NormalizePrefix(std::string_view input) const {
    for (const std::string& u : user_defined) {
      if (input.substr(0, u.size()) == u) return {input.substr(0, u.size()), u.size()};
    }
    if (charsmap) return charsmap->NormalizePrefix(input);
    const size_t length = ValidUtf8Length(input, 0);
    if (length == 0) return {"\xEF\xBF\xBD", 1};
    return {input.substr(0, length), length};
  }

  // The normalized text as symbols: characters, with user-defined pieces kept whole.
  std::vector<std::string> Symbols(const std::string& text) const {
    std::vector<std::string> symbols;
    for (size_t i = 0; i < text.size();) {
      bool matched = false;
      for (const std::string& u : user_defined) {
        if (text.compare(i, u.size(), u) == 0) {
          symbols.push_back(u);
          i += u.size();
          matched = true;
          break;
        }
      }
      if (matched) continue;
      const std::vector<std::string> one = Utf8Characters(std::string_view(text).substr(i, 4));
      symbols.push_back(one.front());
      i += one.front().size();
    }
    return symbols;
  }

  // A symbol that is no piece: its bytes with byte fallback, else the unknown piece.
  void Unknown(const std::string& symbol, std::vector<int64_t>& out) const {
    if (byte_fallback) {
      for (unsigned char b : symbol) {
        const auto it = ids.find(fmt::format("<0x{:02X}>", static_cast<unsigned>(b)));
        if (it != ids.end()) out.push_back(it->second);
      }
      return;
    }
    if (!out.empty() && out.back() == unk_id) return;  // consecutive unknowns are one
    out.push_back(unk_id);
  }

  std::vector<int64_t> EncodeBpe(const std::string& text) const {
    // SentencePiece's BPE: repeatedly merge the adjacent pair whose concatenation is the
    // highest-scoring piece (leftmost on ties), until no pair is a piece. A heap of candidate
    // pairs with per-symbol versions (to drop stale candidates) makes it O(n log n).
    std::vector<std::string> symbols = Symbols(text);
    const auto n = static_cast<int64_t>(symbols.size());
    std::vector<int64_t> prev(n), next(n), version(n, 0);
    for (int64_t i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
    struct Candidate {
      float score;
      int64_t left, right, left_version, right_version;
      bool operator<(const Candidate& o) const { return score != o.score ? score < o.score : left > o.left; }
    };
    std::priority_queue<Candidate> queue;
    auto push = [&](int64_t left) {
      if (left < 0 || next[left] < 0) return;
      const int64_t right = next[left];
      const auto it = ids.find(symbols[left] + symbols[right]);
      if (it == ids.end() || pieces[static_cast<size_t>(it->second)].type == PieceType::kByte) return;
      queue.push({pieces[static_cast<size_t>(it->second)].score, left, right, version[left], version[right]});
    };
    for (int64_t i = 0; i + 1 < n; ++i) push(i);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      if (next[c.left] != c.right || version[c.left] != c.left_version || version[c.right] != c.right_version) continue;
      symbols[c.left] += symbols[c.right];
      ++version[c.left];
      version[c.right] = -1;  // gone
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      push(prev[c.left]);
      push(c.left);
    }
    std::vector<int64_t> out;
    for (int64_t i = n > 0 ? 0 : -1; i >= 0; i = next[i]) {
      const auto it = ids.find(symbols[i]);
      if (it != ids.end())
        out.push_back(it->second);
      else
        Unknown(symbols[i], out);
    }
    return out;
  }

  std::vector<int64_t> EncodeUnigram(const std::string& text) const {
    // An unknown character costs min_score - 10, as SentencePiece charges it.
    const std::vector<std::string> chars = Symbols(text);
    const std::vector<int64_t> path = ViterbiSegment(
        chars, max_piece_chars, static_cast<double>(min_score) - 10.0, [this](const std::string& candidate) {
          const auto it = ids.find(candidate);
          if (it == ids.end()) return std::optional<ScoredPiece>();
          const Piece& p = pieces[static_cast<size_t>(it->second)];
          if (p.type == PieceType::kByte) return std::optional<ScoredPiece>();
          return std::optional<ScoredPiece>(ScoredPiece{it->second, p.type == PieceType::kUserDefined ? 0.0 : p.score});
        });
    std::vector<int64_t> out;
    for (int64_t id : path) {
      if (id >= 0)
        out.push_back(id);
      else
        Unknown(chars[static_cast<size_t>(-1 - id)], out);
    }
    return out;
  }

  std::vector<int64_t> Encode(std::string_view raw, bool add_special_tokens) const override {
    const std::string text = Normalize(raw);
    std::vector<int64_t> out;
    if (add_special_tokens && bos_id >= 0) out.push_back(bos_id);
    if (!text.empty()) {
      const std::vector<int64_t> body = model_type == ModelType::kBpe ? EncodeBpe(text) : EncodeUnigram(text);
      out.insert(out.end(), body.begin(), body.end());
    }
    return out;
  }

  std::string Decode(const std::vector<int64_t>& token_ids, bool skip_special_tokens) const override {
    std::string text, bytes;
    auto flush = [&] {
      text += Utf8Lossy(bytes);
      bytes.clear();
    };
    for (int64_t id : token_ids) {
      const Piece& p = pieces.at(static_cast<size_t>(CheckId(id)));
      if (p.type == PieceType::kByte) {
        unsigned value = 0;
        std::sscanf(p.text.c_str() + 3, "%2x", &value);
        bytes.push_back(static_cast<char>(value));
        continue;
      }
      flush();
      if (p.type == PieceType::kControl) {
        if (!skip_special_tokens) text += p.text;
        continue;
      }
      if (p.type == PieceType::kUnknown) {
        text += " \xE2\x81\x87 ";  // SentencePiece renders an unknown piece as " ⁇ "
        continue;
      }
      text += p.text;
    }
    flush();
    std::string out;
    for (size_t i = 0; i < text.size();) {
      if (text.compare(i, 3, kSpace) == 0) {
        out.push_back(' ');
        i += 3;
      } else {
        out.push_back(text[i++]);
      }
    }
    if (add_dummy_prefix && !out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(pieces.size()); }
  std::optional<int64_t> TokenToId(const std::string& token) const override {
    const auto it = by_text.find(token);
    return it == by_text.end() ? std::nullopt : std::optional<int64_t>(it->second);
  }
  std::string IdToToken(int64_t id) const override { return pieces[static_cast<size_t>(CheckId(id))].text; }
  bool IsSpecial(int64_t id) const override {
    return pieces[static_cast<size_t>(CheckId(id))].type == PieceType::kControl;
  }

 private:
  int64_t CheckId(int64_t id) const {
    if (id < 0 || id >= vocab_size())
      Fail(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary [0, {})", id, vocab_size());
    return id;
  }
};

void ReadPiece(std::string_view data, const std::string& where, Piece& piece) {
  WireReader::ForEachField(data, where, [&](uint64_t field, int wire, WireReader& r) {
    if (field == 1 && wire == 2)
      piece.text = std::string(r.Bytes());
    else if (field == 2 && wire == 5)
      piece.score = r.Fixed32();
    else if (field == 3 && wire == 0)
      piece.type = static_cast<PieceType>(r.Varint());
    else
      return false;
    return true;
  });
}

void ReadTrainerSpec(std::string_view data, const std::string& where, SentencePieceModel& m) {
  WireReader::ForEachField(data, where, [&](uint64_t field, int wire, WireReader& r) {
    if (wire != 0) return false;
    const auto value = static_cast<int64_t>(r.Varint());
    switch (field) {
      case 3:
        m.model_type = static_cast<ModelType>(value);
        break;
      case 35:
        m.byte_fallback = value != 0;
        break;
      case 40:
        m.unk_id = static_cast<int32_t>(value);
        break;
      case 41:
        m.bos_id = static_cast<int32_t>(value);
        break;
      case 42:
        m.eos_id = static_cast<int32_t>(value);
        break;
      case 43:
        m.pad_id = static_cast<int32_t>(value);
        break;
      default:
        break;
    }
    return true;
  });
}

void ReadNormalizerSpec(std::string_view data, const std::string& where, SentencePieceModel& m) {
  WireReader::ForEachField(data, where, [&](uint64_t field, int wire, WireReader& r) {
    if (field == 2 && wire == 2) {
      const std::string_view blob = r.Bytes();
      if (!blob.empty())
        m.charsmap = PrecompiledCharsmap::Parse(blob, where + ": normalizer_spec.precompiled_charsmap");
    } else if (field == 3 && wire == 0) {
      m.add_dummy_prefix = r.Varint() != 0;
    } else if (field == 4 && wire == 0) {
      m.remove_extra_whitespaces = r.Varint() != 0;
    } else if (field == 5 && wire == 0) {
      m.escape_whitespaces = r.Varint() != 0;
    } else {
      return false;
    }
    return true;
  });
}

}  // namespace

std::unique_ptr<Tokenizer> LoadSentencePieceModel(const std::filesystem::path& path) {
  const std::string data = ReadFile(path);
  const std::string where = path.string();
  auto model = std::make_unique<SentencePieceModel>();
  WireReader::ForEachField(data, where, [&](uint64_t field, int wire, WireReader& r) {
    if (wire != 2 || field < 1 || field > 3) return false;
    const std::string_view message = r.Bytes();
    if (field == 1) ReadPiece(message, where, model->pieces.emplace_back());
    if (field == 2) ReadTrainerSpec(message, where, *model);
    if (field == 3) ReadNormalizerSpec(message, where, *model);
    return true;
  });
  if (model->pieces.empty()) Fail(ErrorCode::kDataLoss, "{}: holds no pieces (not a SentencePiece model?)", where);
  // As SentencePiece refuses them: an empty piece would match every prefix without consuming it
  // (the normalizer and the segmenter would loop forever on a user-defined one).
  for (size_t i = 0; i < model->pieces.size(); ++i) {
    if (model->pieces[i].text.empty()) Fail(ErrorCode::kDataLoss, "{}: piece {} is empty", where, i);
  }
  if (model->model_type != ModelType::kBpe && model->model_type != ModelType::kUnigram) {
    Fail(ErrorCode::kUnimplemented, "{}: SentencePiece model type {} is not supported (supported: unigram, bpe)", where,
         static_cast<int>(model->model_type));
  }
  if (model->unk_id < 0 || model->unk_id >= model->vocab_size()) {
    Fail(ErrorCode::kDataLoss, "{}: unk_id {} is outside the {} pieces", where, model->unk_id, model->vocab_size());
  }
  // The special ids the encoder adds: -1 (none) or a piece, never an id past the vocabulary.
  for (const auto& [name, id] :
       {std::pair{"bos_id", model->bos_id}, {"eos_id", model->eos_id}, {"pad_id", model->pad_id}}) {
    if (id < -1 || id >= model->vocab_size()) {
      Fail(ErrorCode::kDataLoss, "{}: trainer_spec.{} {} is outside the {} pieces (expected -1 or a piece id)", where,
           name, id, model->vocab_size());
    }
  }
  model->Finish();
  return model;
}

}  // namespace shardtune
