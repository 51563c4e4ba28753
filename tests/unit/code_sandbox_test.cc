// The code sandbox (common/code_sandbox.h): a program that loops, allocates 10 GB, forks without
// end, opens a socket or writes outside its scratch directory fails its own run and nothing else.
#include "common/code_sandbox.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace shardtune {
namespace {

namespace fs = std::filesystem;

bool SandboxAvailable() { return access("/usr/bin/bwrap", X_OK) == 0 && access(kSandboxPython, X_OK) == 0; }

#define SKIP_WITHOUT_SANDBOX() \
  if (!SandboxAvailable()) GTEST_SKIP() << "no /usr/bin/bwrap or " << kSandboxPython << " (scripts/install-deps.sh)"

TEST(CodeSandbox, PassesAndFailsByExitStatus) {
  SKIP_WITHOUT_SANDBOX();
  const SandboxResult ok = RunPythonSandboxed("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')\n");
  EXPECT_TRUE(ok.passed) << ok.outcome << ": " << ok.output;
  EXPECT_EQ(ok.outcome, "passed");
  EXPECT_EQ(ok.output, "ok\n");
  const SandboxResult wrong = RunPythonSandboxed("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n");
  EXPECT_FALSE(wrong.passed);
  EXPECT_EQ(wrong.outcome, "exit status 1");
  EXPECT_NE(wrong.output.find("AssertionError"), std::string::npos) << wrong.output;
  const SandboxResult syntax = RunPythonSandboxed("def broken(:\n");
  EXPECT_FALSE(syntax.passed);
  EXPECT_NE(syntax.output.find("SyntaxError"), std::string::npos) << syntax.output;
}

TEST(CodeSandbox, AnEndlessLoopIsStoppedByTheWallClock) {
  SKIP_WITHOUT_SANDBOX();
  SandboxLimits limits;
  limits.wall_seconds = 2;
  const auto start = std::chrono::steady_clock::now();
  const SandboxResult r = RunPythonSandboxed("import time\nwhile True:\n    time.sleep(0.01)\n", limits);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_FALSE(r.passed);
  EXPECT_EQ(r.outcome, "timed out after 2 s");
  EXPECT_LT(seconds, 8.0);
  // A busy loop meets the CPU limit first.
  limits.wall_seconds = 30;
  limits.cpu_seconds = 1;
  const SandboxResult busy = RunPythonSandboxed("while True:\n    pass\n", limits);
  EXPECT_FALSE(busy.passed);
  EXPECT_NE(busy.outcome, "passed");
  EXPECT_EQ(busy.outcome.find("timed out"), std::string::npos) << busy.outcome;
}

TEST(CodeSandbox, TenGigabytesAreRefused) {
  SKIP_WITHOUT_SANDBOX();
  const SandboxResult r = RunPythonSandboxed("block = bytearray(10 * 1024 ** 3)\nprint(len(block))\n");
  EXPECT_FALSE(r.passed);
  EXPECT_NE(r.output.find("MemoryError"), std::string::npos) << r.outcome << ": " << r.output;
}

TEST(CodeSandbox, AForkBombIsContained) {
  SKIP_WITHOUT_SANDBOX();
  SandboxLimits limits;
  limits.wall_seconds = 3;
  const SandboxResult r = RunPythonSandboxed(
      "import os\nforks = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            forks = 0\n"
      "        forks += 1\nexcept OSError:\n    print('fork refused after', forks, flush=True)\n"
      "    import time\n    time.sleep(60)\n",
      limits);
  EXPECT_FALSE(r.passed);
  EXPECT_NE(r.output.find("fork refused"), std::string::npos) << r.outcome << ": " << r.output;
  // Nothing of it is left, and the next program runs.
  const SandboxResult after = RunPythonSandboxed("print('still here')\n");
  EXPECT_TRUE(after.passed) << after.outcome << ": " << after.output;
}

TEST(CodeSandbox, HasNoNetwork) {
  SKIP_WITHOUT_SANDBOX();
  const SandboxResult r = RunPythonSandboxed(
      "import socket\ns = socket.create_connection(('93.184.216.34', 80), timeout=2)\nprint('connected')\n");
  EXPECT_FALSE(r.passed);
  EXPECT_EQ(r.output.find("connected"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Error"), std::string::npos) << r.output;
}

TEST(CodeSandbox, WritesOnlyItsScratchDirectory) {
  SKIP_WITHOUT_SANDBOX();
  const fs::path outside = fs::temp_directory_path() / ("sandbox-escape-" + std::to_string(getpid()));
  fs::remove(outside);
  const SandboxResult r = RunPythonSandboxed("open('" + outside.string() + "', 'w').write('escaped')\n");
  EXPECT_FALSE(r.passed);
  EXPECT_FALSE(fs::exists(outside));
  EXPECT_FALSE(RunPythonSandboxed("open('/usr/escaped', 'w').write('x')\n").passed);
  EXPECT_FALSE(fs::exists("/usr/escaped"));
  // The host's files are not even visible, besides /usr.
  EXPECT_FALSE(RunPythonSandboxed("open('/etc/passwd').read()\n").passed);
  const SandboxResult scratch =
      RunPythonSandboxed("open('notes.txt', 'w').write('kept')\nassert open('notes.txt').read() == 'kept'\n");
  EXPECT_TRUE(scratch.passed) << scratch.outcome << ": " << scratch.output;
}

// A process with many files open (a trainer's sockets and caches) still gets a sandbox: none of
// them goes in, so the sandbox's own limit on open files is not spent before it starts.
TEST(CodeSandbox, NoneOfThisProcesssFilesGoesIn) {
  SKIP_WITHOUT_SANDBOX();
  std::vector<int> open_files;
  for (int i = 0; i < 100; ++i) open_files.push_back(open("/dev/null", O_RDONLY));
  const SandboxResult r = RunPythonSandboxed("import os\nprint(len(os.listdir('/proc/self/fd')))\n");
  for (int fd : open_files) close(fd);
  EXPECT_TRUE(r.passed) << r.outcome << ": " << r.output;
  EXPECT_LT(std::stoi(r.output.empty() ? "0" : r.output), 10) << r.output;
}

}  // namespace
}  // namespace shardtune
