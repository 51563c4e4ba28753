#pragma once
// Helpers shared by the unit tests: scratch directories and the shared fixtures.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <random>
#include <string>

namespace shardtune::testing {

// A fresh directory under the system temp dir, removed when the test ends.
class ScratchDir {
 public:
  ScratchDir() {
    std::random_device device;
    path_ = std::filesystem::temp_directory_path() /
            ("shardtune-test-" + std::to_string(device()) + std::to_string(device()));
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void WriteText(const std::filesystem::path& path, const std::string& text) {
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// Runs `load`, which must throw; the exception's message must hold every one of `fragments`.
template <class Load>
void ExpectRefusedWith(Load&& load, std::initializer_list<const char*> fragments) {
  try {
    load();
    ADD_FAILURE() << "accepted";
  } catch (const std::exception& e) {
    const std::string what = e.what();
    for (const char* fragment : fragments)
      EXPECT_NE(what.find(fragment), std::string::npos) << fragment << " in " << what;
  }
}

// ../shared/fixtures, found from the source tree (SHARDTUNE_SOURCE_DIR is set by CMake).
inline std::filesystem::path FixturesDir() {
  return std::filesystem::path(SHARDTUNE_SOURCE_DIR).parent_path() / "shared" / "fixtures";
}

}  // namespace shardtune::testing

// Skips the test, visibly, when a fixture is not there (CI always has ../shared).
#define SKIP_WITHOUT_FIXTURE(path)                                                                \
  do {                                                                                            \
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "fixture not found: " << (path).string(); \
  } while (0)
