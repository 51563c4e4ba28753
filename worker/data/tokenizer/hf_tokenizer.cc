#include "worker/data/tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <array>
#include <sstream>
#include <unordered_map>

#include "common/atomic_file.h"
#include "common/error.h"
#include "worker/data/tokenizer/hf_stages.h"
#include "worker/data/tokenizer/unicode.h"

// The orchestration of Hugging Face's pipeline: added tokens, then the stages of hf_stages.h in
// order. The stages themselves live one file each (hf_normalizers.cc ... hf_decoders.cc).

namespace shardtune {

namespace {

using hf::json;
using hf::Malformed;
using hf::Pieces;

struct AddedToken {
  int64_t id;
  std::string content;
  bool special, normalized, lstrip, rstrip, single_word;
};

class HfTokenizer : public Tokenizer {
 public:
  std::unique_ptr<hf::Model> model;
  hf::Normalizer normalizer;
  hf::PreTokenizer pre_tokenizer;
  hf::PostProcessor post_processor;
  hf::Decoder decoder;
  std::vector<AddedToken> added;  // longest first, for leftmost-longest matching
  std::unordered_map<int64_t, const AddedToken*> added_by_id;
  std::array<std::vector<const AddedToken*>, 256> by_first_byte;  // longest first, as `added`

  void Finish() {
    std::stable_sort(added.begin(), added.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    for (const auto& token : added) {
      added_by_id[token.id] = &token;
      if (!token.content.empty()) by_first_byte[static_cast<unsigned char>(token.content[0])].push_back(&token);
    }
  }

  std::vector<int64_t> Encode(std::string_view raw, bool add_special_tokens) const override {
    const std::string text = IsValidUtf8(raw) ? std::string(raw) : Utf8Lossy(raw);
    std::vector<int64_t> ids;
    bool at_start = true;  // nothing (no added token) precedes the current piece
    // Added tokens matched in the raw text first, then the normalized ones in each normalized gap.
    for (const Segment& s : SplitAdded(text, /*normalized=*/false)) {
      if (s.token) {
        ids.push_back(s.token->id);
        at_start = false;
        continue;
      }
      const std::string normalized = normalizer ? normalizer(s.text) : s.text;
      for (const Segment& t : SplitAdded(normalized, /*normalized=*/true)) {
        if (t.token) {
          ids.push_back(t.token->id);
          at_start = false;
          continue;
        }
        Pieces pieces = pre_tokenizer ? pre_tokenizer(Pieces{t.text}, at_start) : Pieces{t.text};
        at_start = false;
        for (const std::string& piece : pieces) model->Encode(piece, ids);
      }
    }
    if (add_special_tokens && post_processor) ids = post_processor(std::move(ids));
    return ids;
  }

  std::string Decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<std::string> tokens;
    for (int64_t id : ids) {
      if (skip_special_tokens && IsSpecial(id)) continue;
      tokens.push_back(IdToToken(id));
    }
    if (!decoder) {
      std::string joined;
      for (size_t i = 0; i < tokens.size(); ++i) joined += (i ? " " : "") + tokens[i];
      return joined;
    }
    std::string out;
    for (const std::string& piece : decoder(std::move(tokens))) out += piece;
    return out;
  }

  int64_t vocab_size() const override {
    int64_t n = static_cast<int64_t>(model->id_to_token().size());
    for (const auto& token : added) n = std::max(n, token.id + 1);
    return n;
  }
  std::optional<int64_t> TokenToId(const std::string& token) const override {
    for (const auto& a : added)
      if (a.content == token) return a.id;
    return model->Find(token);
  }
  std::string IdToToken(int64_t id) const override {
    if (const auto it = added_by_id.find(id); it != added_by_id.end()) return it->second->content;
    if (id < 0 || id >= static_cast<int64_t>(model->id_to_token().size())) {
      Fail(ErrorCode::kInvalidArgument, "token id {} is outside the vocabulary [0, {})", id, vocab_size());
    }
    return model->id_to_token()[static_cast<size_t>(id)];
  }
  bool IsSpecial(int64_t id) const override {
    const auto it = added_by_id.find(id);
    return it != added_by_id.end() && it->second->special;
  }

 private:
  struct Segment {
    std::string text;
    const AddedToken* token = nullptr;
  };

  static bool IsWordChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (c & 0x80); }

  std::vector<Segment> SplitAdded(const std::string& text, bool normalized) const {
    std::vector<Segment> segments;
    size_t last = 0, i = 0;
    while (i < text.size()) {
      const AddedToken* hit = nullptr;
      // Only tokens that start with this byte, longest first.
      for (const AddedToken* token : by_first_byte[static_cast<unsigned char>(text[i])]) {
        if (token->normalized != normalized) continue;
        if (text.compare(i, token->content.size(), token->content) != 0) continue;
        const size_t end = i + token->content.size();
        if (token->single_word && ((i > 0 && IsWordChar(text[i - 1])) || (end < text.size() && IsWordChar(text[end]))))
          continue;
        hit = token;
        break;
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      size_t begin = i, end = i + hit->content.size();
      if (hit->lstrip)
        while (begin > last && std::isspace(static_cast<unsigned char>(text[begin - 1]))) --begin;
      if (hit->rstrip)
        while (end < text.size() && std::isspace(static_cast<unsigned char>(text[end]))) ++end;
      if (begin > last) segments.push_back({text.substr(last, begin - last), nullptr});
      segments.push_back({"", hit});
      last = i = end;
    }
    if (last < text.size()) segments.push_back({text.substr(last), nullptr});
    return segments;
  }
};

}  // namespace

std::unique_ptr<Tokenizer> LoadHfTokenizerJson(const std::string& json_text, const std::string& where) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
    Malformed(where, fmt::format("not valid JSON: {}", e.what()));
  }
  if (!root.is_object()) Malformed(where, "expected a JSON object");
  // The stages read their fields with nlohmann's checked accessors: a field of the wrong type or
  // missing where no check of ours looked (a post-processor's special token without "ids") is
  // the same malformed file.
  auto tokenizer = std::make_unique<HfTokenizer>();
  try {
    tokenizer->model = hf::ParseModel(hf::Field(root, "model", where), where + ": model");
    tokenizer->normalizer = hf::ParseNormalizer(root.value("normalizer", json()), where + ": normalizer");
    tokenizer->pre_tokenizer = hf::ParsePreTokenizer(root.value("pre_tokenizer", json()), where + ": pre_tokenizer");
    tokenizer->post_processor =
        hf::ParsePostProcessor(root.value("post_processor", json()), where + ": post_processor");
    tokenizer->decoder = hf::ParseDecoder(root.value("decoder", json()), where + ": decoder");
    if (root.contains("added_tokens")) {
      for (const json& a : root["added_tokens"]) {
        if (!a.is_object() || !a.contains("id") || !a.contains("content"))
          Malformed(where, "added_tokens entries need an integer 'id' and 'content'");
        tokenizer->added.push_back(
            AddedToken{hf::TokenId(a["id"], "added_tokens' id", where), a["content"].get<std::string>(),
                       a.value("special", false), a.value("normalized", !a.value("special", false)),
                       a.value("lstrip", false), a.value("rstrip", false), a.value("single_word", false)});
      }
    }
  } catch (const json::exception& e) {
    Malformed(where, e.what());
  }
  tokenizer->Finish();
  // The ids the post-processor adds around every sequence (what it makes of an empty one) index
  // the embedding like any other: one past the vocabulary would be read out of bounds.
  if (tokenizer->post_processor) {
    for (const int64_t id : tokenizer->post_processor({})) {
      if (id >= tokenizer->vocab_size())
        Malformed(where + ": post_processor",
                  fmt::format("it adds token id {}, outside the vocabulary [0, {})", id, tokenizer->vocab_size()));
    }
  }
  return tokenizer;
}

std::unique_ptr<Tokenizer> LoadGpt2VocabMerges(const std::filesystem::path& vocab_json,
                                               const std::filesystem::path& merges_txt) {
  json vocab;
  try {
    vocab = json::parse(ReadFile(vocab_json));
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e500
    Malformed(vocab_json.string(), fmt::format("not valid JSON: {}", e.what()));
  }
  json merges = json::array();
  std::istringstream lines(ReadFile(merges_txt));
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (number == 1 && line.rfind("#version", 0) == 0)) continue;
    merges.push_back(line);
  }
  json tokenizer = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
                    {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                    {"decoder", {{"type", "ByteLevel"}}},
                    {"added_tokens", json::array()}};
  // GPT-2's one special token, as GPT2Tokenizer declares it.
  if (vocab.is_object() && vocab.contains("<|endoftext|>")) {
    tokenizer["added_tokens"].push_back(
        {{"id", vocab["<|endoftext|>"]}, {"content", "<|endoftext|>"}, {"special", true}, {"normalized", false}});
  }
  return LoadHfTokenizerJson(tokenizer.dump(), vocab_json.string() + " + " + merges_txt.filename().string());
}

std::unique_ptr<Tokenizer> LoadWordPieceVocab(const std::filesystem::path& vocab_txt) {
  json vocab = json::object();
  std::istringstream lines(ReadFile(vocab_txt));
  std::string line;
  for (int64_t id = 0; std::getline(lines, line); ++id) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    vocab[line] = id;
  }
  json added = json::array();
  for (const char* special : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}) {
    if (vocab.contains(special))
      added.push_back({{"id", vocab[special]}, {"content", special}, {"special", true}, {"normalized", false}});
  }
  const bool lowercase = vocab_txt.filename().string().find("uncased") != std::string::npos;
  const json cls = {"[CLS]", vocab.value("[CLS]", 101)}, sep = {"[SEP]", vocab.value("[SEP]", 102)};
  const json tokenizer = {{"model",
                           {{"type", "WordPiece"},
                            {"vocab", vocab},
                            {"unk_token", "[UNK]"},
                            {"continuing_subword_prefix", "##"},
                            {"max_input_chars_per_word", 100}}},
                          {"normalizer",
                           {{"type", "BertNormalizer"},
                            {"clean_text", true},
                            {"handle_chinese_chars", true},
                            {"lowercase", lowercase},
                            {"strip_accents", nullptr}}},
                          {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
                          {"post_processor", {{"type", "BertProcessing"}, {"cls", cls}, {"sep", sep}}},
                          {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
                          {"added_tokens", added}};
  return LoadHfTokenizerJson(tokenizer.dump(), vocab_txt.string());
}

}  // namespace shardtune
