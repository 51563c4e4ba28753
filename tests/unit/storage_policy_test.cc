// The storage sandbox's rule on real files (common/storage_roots.h) and the server's grants
// (launcher/server/storage_policy.h): each refusal names the spec key and the path; a tenant's own
// root and the read-only roots it is granted pass. Also the worker's check at use (from the job's
// environment) and the startup rule (loopback without storage).
#include "launcher/server/storage_policy.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/error.h"
#include "common/storage_roots.h"
#include "common/worker_contract.h"
#include "launcher/server/job_manager.h"
#include "test_util.h"

namespace shardtune::server {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;
using testing::WriteText;

// Two tenants (a, b), a shared read-only root, one only admins read, one nobody is granted.
class StoragePolicyTest : public ::testing::Test {
 protected:
  StoragePolicyTest() : base_(fs::canonical(scratch_.path())) {
    for (const char* dir : {"a", "b", "a-extra", "shared", "admin-only", "outside"})
      fs::create_directories(base_ / dir);
    WriteText(base_ / "a/model/config.json", "{}");
    WriteText(base_ / "a/train.jsonl", "{}\n");
    WriteText(base_ / "b/train.jsonl", "{}\n");
    WriteText(base_ / "shared/model/config.json", "{}");
    WriteText(base_ / "a-extra/val.jsonl", "{}\n");
    WriteText(base_ / "admin-only/model/config.json", "{}");
    WriteText(base_ / "outside/secret.jsonl", "secret\n");
    config_.enabled = true;
    config_.tenants["a"] = {(base_ / "a").string(), {(base_ / "a-extra").string()}};
    config_.tenants["b"] = {(base_ / "b").string(), {}};
    config_.read_only = {(base_ / "shared").string()};
    config_.admin_read_only = {(base_ / "admin-only").string()};
  }

  // A spec of tenant a that passes; each test changes one path of it.
  JobSpec Spec() const {
    JobSpec spec;
    spec.model.path = (base_ / "a/model").string();
    spec.data.train = (base_ / "a/train.jsonl").string();
    spec.output.dir = (base_ / "a/runs/one").string();
    return spec;
  }

  // The message of the PERMISSION_DENIED `spec` gets; fails the test when it passes.
  std::string Refusal(const JobSpec& spec, const std::string& tenant = "a", bool admin = false) const {
    const StoragePolicy policy(config_, {});
    try {
      policy.Require(tenant, admin, spec);
    } catch (const RequestError& e) {
      EXPECT_EQ(e.kind(), RequestError::Kind::kPermissionDenied) << e.what();
      return e.what();
    }
    ADD_FAILURE() << "the spec was admitted";
    return "";
  }

  void ExpectAdmitted(const JobSpec& spec, const std::string& tenant = "a", bool admin = false) const {
    const StoragePolicy policy(config_, {});
    EXPECT_NO_THROW(policy.Require(tenant, admin, spec));
  }

  ScratchDir scratch_;
  fs::path base_;
  StorageConfig config_;
};

// "KEY: PATH" opens the line that refuses it.
void ExpectNames(const std::string& message, const std::string& key, const fs::path& path) {
  EXPECT_NE(message.find(key + ": " + path.string()), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, OwnRootAndGrantedReadOnlyRootsPass) {
  ExpectAdmitted(Spec());
  JobSpec spec = Spec();
  spec.model.path = (base_ / "shared/model").string();            // storage.read_only
  spec.data.validation = (base_ / "a-extra/val.jsonl").string();  // the tenant's own read_only
  spec.data.cache_dir = (base_ / "a/cache").string();
  ExpectAdmitted(spec);
  // A symlink inside the root to a file inside a granted root is where it leads: allowed.
  fs::create_symlink(base_ / "shared/model", base_ / "a/base-model");
  spec.model.path = (base_ / "a/base-model").string();
  ExpectAdmitted(spec);
}

TEST_F(StoragePolicyTest, AnotherTenantsOutputDirIsRefused) {
  JobSpec spec = Spec();
  spec.output.dir = (base_ / "b/runs/stolen").string();
  const std::string message = Refusal(spec);
  ExpectNames(message, "output.dir", base_ / "b/runs/stolen");
  EXPECT_NE(message.find("outside the directories this tenant may write"), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, OutputDirUnderAReadOnlyRootIsRefused) {
  JobSpec spec = Spec();
  spec.output.dir = (base_ / "shared/out").string();
  ExpectNames(Refusal(spec), "output.dir", base_ / "shared/out");
}

TEST_F(StoragePolicyTest, SystemFileAsDataIsRefused) {
  JobSpec spec = Spec();
  spec.data.train = "/etc/passwd";
  const std::string message = Refusal(spec);
  ExpectNames(message, "data.train", "/etc/passwd");
  EXPECT_NE(message.find("outside the directories this tenant may read"), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, AnotherTenantsDataIsRefusedToAUserButNotToAnAdmin) {
  JobSpec spec = Spec();
  spec.data.tasks = {{"t", (base_ / "b/train.jsonl").string(), "", DataFormat::kTokens, 1.0}};
  ExpectNames(Refusal(spec), "data.tasks[0].train", base_ / "b/train.jsonl");
  spec.model.path = (base_ / "admin-only/model").string();
  ExpectAdmitted(spec, "a", /*admin=*/true);
  spec.output.dir = (base_ / "b/out").string();  // an admin still writes only its own root
  ExpectNames(Refusal(spec, "a", true), "output.dir", base_ / "b/out");
}

TEST_F(StoragePolicyTest, SymlinkInsideTheRootPointingOutIsRefused) {
  fs::create_symlink(base_ / "outside/secret.jsonl", base_ / "a/innocent.jsonl");
  JobSpec spec = Spec();
  spec.data.train = (base_ / "a/innocent.jsonl").string();
  const std::string message = Refusal(spec);
  ExpectNames(message, "data.train", base_ / "a/innocent.jsonl");
  EXPECT_NE(message.find((base_ / "outside/secret.jsonl").string()), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, SymlinkInsideAModelDirectoryPointingOutIsRefused) {
  WriteText(base_ / "a/model2/config.json", "{}");
  fs::create_symlink(base_ / "b/train.jsonl", base_ / "a/model2/model.safetensors");
  JobSpec spec = Spec();
  spec.model.path = (base_ / "a/model2").string();
  const std::string message = Refusal(spec);
  ExpectNames(message, "model.path", base_ / "a/model2");
  EXPECT_NE(message.find("model.safetensors"), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, DotDotIsRefusedEvenWhenItStaysInside) {
  JobSpec spec = Spec();
  spec.data.train = (base_ / "a/../b/train.jsonl").string();
  ExpectNames(Refusal(spec), "data.train", base_ / "a/../b/train.jsonl");
  spec.data.train = (base_ / "a/model/../train.jsonl").string();
  const std::string message = Refusal(spec);
  ExpectNames(message, "data.train", base_ / "a/model/../train.jsonl");
  EXPECT_NE(message.find("'..'"), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, HardLinkInTheTenantsRootIsRefused) {
  std::error_code error;
  fs::create_hard_link(base_ / "outside/secret.jsonl", base_ / "a/linked.jsonl", error);
  if (error) GTEST_SKIP() << "no hard links here: " << error.message();
  JobSpec spec = Spec();
  spec.data.train = (base_ / "a/linked.jsonl").string();
  const std::string message = Refusal(spec);
  ExpectNames(message, "data.train", base_ / "a/linked.jsonl");
  EXPECT_NE(message.find("hard link"), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, DanglingSymlinkAsOutputDirIsRefused) {
  fs::create_symlink(base_ / "outside/new", base_ / "a/runs-link");
  JobSpec spec = Spec();
  spec.output.dir = (base_ / "a/runs-link/one").string();
  const std::string message = Refusal(spec);
  ExpectNames(message, "output.dir", base_ / "a/runs-link/one");
  EXPECT_NE(message.find("symlink to a missing target"), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, ControlCharactersInANameAreRefused) {
  JobSpec spec = Spec();
  spec.data.train = (base_ / "a/x\nINFO fake log line.jsonl").string();
  ExpectNames(Refusal(spec), "data.train", base_ / "a/x\nINFO fake log line.jsonl");
}

TEST_F(StoragePolicyTest, TenantWithoutStorageIsRefused) {
  const std::string message = Refusal(Spec(), "c");
  EXPECT_NE(message.find("tenant 'c' has no storage"), std::string::npos) << message;
}

TEST_F(StoragePolicyTest, WithoutStorageEverythingPasses) {
  config_ = {};
  JobSpec spec = Spec();
  spec.data.train = "/etc/passwd";
  ExpectAdmitted(spec, "anyone");
  EXPECT_TRUE(StoragePolicy(config_, {}).Environment("anyone").empty());
}

TEST_F(StoragePolicyTest, WorkerRechecksFromTheJobsEnvironment) {
  const StoragePolicy policy(config_, {});
  const auto environment = policy.Environment("a");
  EXPECT_EQ(environment.at(std::string(contract::kEnvWriteRoots)), (base_ / "a").string());
  for (const auto& [name, value] : environment) ::setenv(name.c_str(), value.c_str(), 1);
  JobSpec spec = Spec();
  EXPECT_NO_THROW(RequireSpecPathsWithinGrantedRoots(spec));
  // Admitted, then swapped for a symlink pointing out: the worker refuses it.
  fs::remove(base_ / "a/train.jsonl");
  fs::create_symlink(base_ / "outside/secret.jsonl", base_ / "a/train.jsonl");
  try {
    RequireSpecPathsWithinGrantedRoots(spec);
    ADD_FAILURE() << "the swapped path passed";
  } catch (const Error& e) {
    EXPECT_EQ(contract::JobErrorKindFor(e.code()), contract::JobErrorKind::kInvalidInput);
    ExpectNames(e.what(), "data.train", base_ / "a/train.jsonl");
  }
  for (const auto& name : contract::kStorageEnvironment) ::unsetenv(std::string(name).c_str());
  EXPECT_NO_THROW(RequireSpecPathsWithinGrantedRoots(spec));  // no roots given: no check
}

TEST(StorageStartupRule, ListensOnLoopbackOnly) {
  for (const char* address : {"127.0.0.1:50551", "127.8.9.1:1", "localhost:50551", "[::1]:50551"})
    EXPECT_TRUE(ListensOnLoopbackOnly(address)) << address;
  for (const char* address : {"0.0.0.0:50551", "[::]:50551", "10.0.0.1:50551", "example.com:50551", "128.0.0.1:1"})
    EXPECT_FALSE(ListensOnLoopbackOnly(address)) << address;
}

TEST(StorageStartupRule, WithoutStorageOnlyLoopbackServes) {
  ServerConfig config;
  config.listen = "127.0.0.1:50551";
  EXPECT_EQ(ExposureWarnings(config, false).size(), 1u);
  config.listen = "0.0.0.0:50551";
  try {
    ExposureWarnings(config, false);
    ADD_FAILURE() << "a server without storage listens on 0.0.0.0";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no `storage:`"), std::string::npos) << e.what();
  }
  config.storage.enabled = true;
  EXPECT_TRUE(ExposureWarnings(config, false).empty());
  EXPECT_THROW(ExposureWarnings(config, /*running_as_root=*/true), Error);  // root without run_as
  config.run_as = "nobody";
  EXPECT_TRUE(ExposureWarnings(config, true).empty());
}

TEST(StorageStartupRule, TheHttpListenerFollowsTheSameRuleAndMetricsListenIsWarnedAbout) {
  ServerConfig config;
  config.listen = "127.0.0.1:50551";
  config.http.listen = "0.0.0.0:8080";
  try {
    ExposureWarnings(config, false);
    ADD_FAILURE() << "a server without storage serves HTTP on 0.0.0.0";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("refusing to listen on 0.0.0.0:8080"), std::string::npos) << e.what();
  }
  config.http.listen = "127.0.0.1:8080";
  const auto warnings = ExposureWarnings(config, false);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("(127.0.0.1:50551 and 127.0.0.1:8080)"), std::string::npos) << warnings[0];
  config.storage.enabled = true;
  config.http.listen = "0.0.0.0:8080";
  config.metrics_listen = "0.0.0.0:9464";  // no key there: served, with a warning
  const auto exposed = ExposureWarnings(config, false);
  ASSERT_EQ(exposed.size(), 1u);
  EXPECT_NE(exposed[0].find("metrics_listen 0.0.0.0:9464 is not loopback"), std::string::npos) << exposed[0];
}

TEST(StorageStartupRule, RunAsRootOrAMissingUserIsRefused) {
  EXPECT_THROW(ResolveJobUser("root", 077), Error);
  EXPECT_THROW(ResolveJobUser("no-such-user-shardtune", 077), Error);
  const JobUser nobody = ResolveJobUser("nobody", 027);
  EXPECT_NE(nobody.uid, 0u);
  EXPECT_EQ(nobody.umask, 027u);
}

}  // namespace
}  // namespace shardtune::server
