// tokenizer.json decoders: one builder per "type", dispatched through Decoders(). A decoder maps
// the token strings to text pieces; the tokenizer concatenates what the last one gives.
#include <cstdio>

#include "worker/data/tokenizer/hf_stages.h"
#include "worker/data/tokenizer/unicode.h"

namespace shardtune::hf {

namespace {

using Tokens = std::vector<std::string>;

Decoder BuildSequence(const json& node, const std::string& where) {
  std::vector<Decoder> parts = ParseParts(node, "decoders", where, &ParseDecoder);
  return [parts = std::move(parts)](Tokens tokens) {
    for (const auto& d : parts) tokens = d(std::move(tokens));
    return tokens;
  };
}

// GPT-2's byte-level alphabet back to bytes, read as UTF-8 (bad bytes become U+FFFD).
Decoder BuildByteLevel(const json&, const std::string&) {
  return [](Tokens tokens) {
    std::string bytes;
    for (const std::string& token : tokens) {
      for (const std::string& c : Utf8Characters(token)) {
        const int b = UnicodeToByte(c);
        if (b >= 0)
          bytes.push_back(static_cast<char>(b));
        else
          bytes += c;
      }
    }
    return Tokens{Utf8Lossy(bytes)};
  };
}

Decoder BuildReplace(const json& node, const std::string& where) {
  const json& pattern = Field(node, "pattern", where);
  if (!pattern.contains("String")) Malformed(where, "Replace decoder supports string patterns only");
  const std::string from = StringField(pattern, "String", where), to = StringField(node, "content", where);
  return [from, to](Tokens tokens) {
    for (std::string& t : tokens) ReplaceAll(t, from, to);
    return tokens;
  };
}

// The byte a "<0xAB>" token stands for, if `token` is one.
std::optional<char> ByteToken(const std::string& token) {
  unsigned value = 0;
  if (token.size() == 6 && token.rfind("<0x", 0) == 0 && token[5] == '>' &&
      std::sscanf(token.c_str() + 3, "%2x", &value) == 1) {
    return static_cast<char>(value);
  }
  return std::nullopt;
}

// Runs of "<0xAB>" tokens become the text they spell; a run that is not valid UTF-8 becomes one
// U+FFFD per byte, as tokenizers does.
Decoder BuildByteFallback(const json&, const std::string&) {
  return [](Tokens tokens) {
    Tokens out;
    std::string bytes;
    auto flush = [&] {
      if (bytes.empty()) return;
      if (IsValidUtf8(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t i = 0; i < bytes.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      bytes.clear();
    };
    for (const std::string& t : tokens) {
      if (const auto byte = ByteToken(t)) {
        bytes.push_back(*byte);
      } else {
        flush();
        out.push_back(t);
      }
    }
    flush();
    return out;
  };
}

Decoder BuildFuse(const json&, const std::string&) {
  return [](Tokens tokens) {
    std::string all;
    for (const auto& t : tokens) all += t;
    return Tokens{all};
  };
}

// Removes `content` up to `start` times from each token's front and `stop` times from its back.
Decoder BuildStrip(const json& node, const std::string& where) {
  const std::string content = StringField(node, "content", where);
  // Bounded by the longest token worth stripping from: more would only loop longer doing nothing.
  constexpr int64_t kMaxStrips = 1 << 20;
  const auto start = static_cast<size_t>(CountField(node, "start", 0, kMaxStrips, where));
  const auto stop = static_cast<size_t>(CountField(node, "stop", 0, kMaxStrips, where));
  return [content, start, stop](Tokens tokens) {
    for (std::string& t : tokens) {
      for (size_t k = 0; k < start && t.rfind(content, 0) == 0; ++k) t.erase(0, content.size());
      for (size_t k = 0;
           k < stop && t.size() >= content.size() && t.compare(t.size() - content.size(), content.size(), content) == 0;
           ++k) {
        t.erase(t.size() - content.size());
      }
    }
    return tokens;
  };
}

Decoder BuildMetaspace(const json& node, const std::string& where) {
  const std::string replacement = MetaspaceReplacement(node, where);
  const std::string scheme = MetaspacePrependScheme(node);
  return [replacement, scheme](Tokens tokens) {
    for (size_t i = 0; i < tokens.size(); ++i) {
      ReplaceAll(tokens[i], replacement, " ");
      if (i == 0 && scheme != "never" && !tokens[i].empty() && tokens[i][0] == ' ') tokens[i].erase(0, 1);
    }
    return tokens;
  };
}

// BERT's detokenization cleanup: spaces tokenization put before punctuation and contractions.
void CleanUpTokenization(std::string& text) {
  static const std::vector<std::pair<std::string, std::string>> kRules = {
      {" .", "."},   {" ?", "?"},           {" !", "!"},   {" ,", ","},     {" ' ", "'"},    {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
  };
  for (const auto& [from, to] : kRules) ReplaceAll(text, from, to);
}

Decoder BuildWordPiece(const json& node, const std::string&) {
  const std::string prefix = node.value("prefix", std::string("##"));
  const bool cleanup = node.value("cleanup", true);
  return [prefix, cleanup](Tokens tokens) {
    std::string text;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0 && tokens[i].rfind(prefix, 0) == 0)
        text += tokens[i].substr(prefix.size());
      else
        text += (i > 0 ? " " : "") + tokens[i];
    }
    if (cleanup) CleanUpTokenization(text);
    return Tokens{text};
  };
}

Decoder BuildBpe(const json& node, const std::string&) {
  const std::string suffix = node.value("suffix", std::string("</w>"));
  return [suffix](Tokens tokens) {
    for (size_t i = 0; i < tokens.size(); ++i) ReplaceAll(tokens[i], suffix, i + 1 == tokens.size() ? "" : " ");
    return tokens;
  };
}

}  // namespace

Decoder ParseDecoder(const json& node, const std::string& where) {
  static const Registry<Decoder> registry = {
      {"BPEDecoder", &BuildBpe},      {"ByteFallback", &BuildByteFallback},
      {"ByteLevel", &BuildByteLevel}, {"Fuse", &BuildFuse},
      {"Metaspace", &BuildMetaspace}, {"Replace", &BuildReplace},
      {"Sequence", &BuildSequence},   {"Strip", &BuildStrip},
      {"WordPiece", &BuildWordPiece},
  };
  return ParseOptionalStage(registry, "decoder", node, where);
}

}  // namespace shardtune::hf
