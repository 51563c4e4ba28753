#pragma once
// Unicode regular expressions (PCRE2 in UTF mode with Unicode properties), for the
// pre-tokenizers' patterns such as GPT-2's "'s|'t|... ?\p{L}+| ?\p{N}+|...".

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardtune {

class Regex {
 public:
  // Throws Error(kInvalidArgument) naming `pattern` and PCRE2's message when it does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Every non-overlapping match, left to right, as [begin, end) byte offsets.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

 private:
  struct Compiled;
  std::unique_ptr<Compiled> compiled_;
};

}  // namespace shardtune
