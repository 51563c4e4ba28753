#include "world.h"

#include <unistd.h>

#include <cstring>

namespace shardtune::testing {

std::filesystem::path SharedScratchDir(const std::string& name) {
  // Rank 0 names it, everyone learns the name: a broadcast of its bytes.
  at::Tensor text = at::zeros({512}, at::kLong);
  if (World().rank() == 0) {
    const auto path = std::filesystem::temp_directory_path() / fmt::format("shardtune-{}-{}", name, ::getpid());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
    const std::string s = path.string();
    for (size_t i = 0; i < s.size() && i < 511; ++i) text[static_cast<int64_t>(i)] = static_cast<int64_t>(s[i]);
  }
  World().Broadcast(text, 0, CollectiveTag{"scratch dir"})->Wait();
  std::string path;
  for (int64_t i = 0; i < 512 && text[i].item<int64_t>() != 0; ++i)
    path.push_back(static_cast<char>(text[i].item<int64_t>()));
  return path;
}

}  // namespace shardtune::testing
