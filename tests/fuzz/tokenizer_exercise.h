#pragma once
// What the tokenizer targets do with a tokenizer that loaded: encode a fixed text that holds every
// kind of character, decode the ids back, and look every id up. A tokenizer that loads must
// handle any text (invalid UTF-8 is read as U+FFFD) and the ids it produced itself.

#include <cstdlib>
#include <string>

#include "worker/data/tokenizer/tokenizer.h"

namespace shardtune::fuzz {

inline void ExerciseTokenizer(const Tokenizer& tokenizer) {
  static const std::string kText =
      "Hello, world!  It's 2024: 3.14 x 10^3 ... caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e "
      "\xf0\x9f\x98\x80 <s> </s> <unk> [CLS] [SEP] <|endoftext|> \t\n\r tab\x01 \xff\xfe bad";
  for (const bool special : {false, true}) {
    const auto ids = tokenizer.Encode(kText, special);
    for (const int64_t id : ids) {
      if (id < 0 || id >= tokenizer.vocab_size()) std::abort();  // an id outside its own vocabulary
      (void)tokenizer.IdToToken(id);
      (void)tokenizer.IsSpecial(id);
    }
    (void)tokenizer.Decode(ids, /*skip_special_tokens=*/special);
  }
  (void)tokenizer.Encode("", true);
  (void)tokenizer.TokenToId("<s>");
}

}  // namespace shardtune::fuzz
