// The Files API's storage without a server: FileStore (uploads whole or not at all, quotas,
// tenants, paging, restart) on a real SQLite file and real directories, and TarWriter's streams
// read back by Python's tarfile.
#include "launcher/server/file_store.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>

#include "common/atomic_file.h"
#include "launcher/server/request_error.h"
#include "launcher/server/tar_writer.h"
#include "test_util.h"

namespace shardtune::server {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;

std::string Sha256(const std::string& bytes) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest);
  std::string hex;
  for (unsigned char c : digest) hex += fmt::format("{:02x}", c);
  return hex;
}

v1::UploadFileRequest::Metadata Metadata(const std::string& name, const std::string& bytes,
                                         const std::string& purpose = kPurposeData) {
  v1::UploadFileRequest::Metadata m;
  m.set_filename(name);
  m.set_purpose(purpose);
  m.set_bytes(static_cast<int64_t>(bytes.size()));
  m.set_sha256(Sha256(bytes));
  return m;
}

// The kind of RequestError `body` throws (fails the test when it throws none).
template <typename F>
RequestError::Kind Refusal(F&& body) {
  try {
    body();
  } catch (const RequestError& e) {
    return e.kind();
  }
  ADD_FAILURE() << "expected a RequestError";
  return RequestError::Kind::kInvalidArgument;
}

// The names in the tenant's files/ directory (what an upload left visible or not).
std::vector<std::string> FilesIn(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

class FileStoreTest : public ::testing::Test {
 protected:
  FileStoreTest() {
    config_.data_dir = (dir_ / "data").string();
    config_.api_keys = {{"a", "team-a", "user"}, {"b", "team-b", "user"}};
    config_.quotas["team-a"].max_file_bytes = 100;
    config_.quotas["team-a"].max_files = 3;
    Open();
  }
  void Open() {
    files_.reset();
    jobs_.reset();
    jobs_ = std::make_unique<JobStore>(dir_ / "jobs.db");
    files_ = std::make_unique<FileStore>(*jobs_, config_);
  }
  v1::File Upload(const std::string& tenant, const std::string& name, const std::string& bytes) {
    auto upload = files_->BeginUpload(tenant, Metadata(name, bytes));
    upload->Write(bytes);
    return upload->Commit([](const fs::path&) { return FileCheck{}; });
  }
  fs::path FilesDir(const std::string& tenant) { return config_.TenantRoot(tenant) / "files"; }

  ScratchDir dir_;
  ServerConfig config_;
  std::unique_ptr<JobStore> jobs_;
  std::unique_ptr<FileStore> files_;
};

TEST_F(FileStoreTest, AnUploadIsStoredUnderItsIdAndKeptAcrossReopening) {
  const v1::File file = Upload("team-a", "train.jsonl", "{\"text\": \"hi\"}\n");
  EXPECT_EQ(file.id().rfind("file-", 0), 0u);
  EXPECT_EQ(file.id().size(), 29u);
  EXPECT_EQ(file.bytes(), 15);
  EXPECT_EQ(file.status(), "processed");
  EXPECT_EQ(FilesIn(FilesDir("team-a")), std::vector<std::string>{file.id()});
  EXPECT_EQ(ReadFile(files_->PathOf(file)), "{\"text\": \"hi\"}\n");
  Open();
  const auto again = files_->Get("team-a", file.id());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->filename(), "train.jsonl");
  EXPECT_EQ(again->sha256(), file.sha256());
  EXPECT_FALSE(files_->Get("team-b", file.id()).has_value()) << "another tenant's file must not exist for team-b";
}

TEST_F(FileStoreTest, ADigestOrSizeMismatchLeavesNothing) {
  auto meta = Metadata("x.jsonl", "hello");
  meta.set_sha256(Sha256("other"));
  {
    auto upload = files_->BeginUpload("team-a", meta);
    upload->Write("hello");
    EXPECT_EQ(Refusal([&] { upload->Commit([](const fs::path&) { return FileCheck{}; }); }),
              RequestError::Kind::kInvalidArgument);
  }
  {
    auto upload = files_->BeginUpload("team-a", Metadata("x.jsonl", "hello"));
    EXPECT_EQ(Refusal([&] { upload->Write("hello, and more"); }), RequestError::Kind::kInvalidArgument);
  }
  EXPECT_TRUE(FilesIn(FilesDir("team-a")).empty());
  EXPECT_TRUE(files_->List("team-a", "", 10, "").files.empty());
}

TEST_F(FileStoreTest, AnInterruptedUploadLeavesNothingAndALeftoverIsRemovedAtStart) {
  {
    auto upload = files_->BeginUpload("team-a", Metadata("x.jsonl", "0123456789"));
    upload->Write("01234");
    ASSERT_EQ(FilesIn(FilesDir("team-a")).size(), 1u);
    EXPECT_EQ(FilesIn(FilesDir("team-a"))[0].rfind(".upload-", 0), 0u);
  }  // the RPC ended without a commit
  EXPECT_TRUE(FilesIn(FilesDir("team-a")).empty());
  testing::WriteText(FilesDir("team-b") / ".upload-0123456789abcdef", "half");  // a server killed mid-upload
  Open();
  EXPECT_TRUE(FilesIn(FilesDir("team-b")).empty());
}

TEST_F(FileStoreTest, QuotasCountStoredFilesAndUploadsInProgress) {
  Upload("team-a", "a", std::string(60, 'a'));
  EXPECT_EQ(Refusal([&] { files_->BeginUpload("team-a", Metadata("b", std::string(41, 'b'))); }),
            RequestError::Kind::kResourceExhausted);
  auto in_progress = files_->BeginUpload("team-a", Metadata("b", std::string(30, 'b')));
  EXPECT_EQ(Refusal([&] { files_->BeginUpload("team-a", Metadata("c", std::string(20, 'c'))); }),
            RequestError::Kind::kResourceExhausted)
      << "60 stored + 30 uploading + 20 passes 100";
  in_progress.reset();
  Upload("team-a", "c", std::string(20, 'c'));
  Upload("team-a", "d", "d");
  EXPECT_EQ(Refusal([&] { files_->BeginUpload("team-a", Metadata("e", "e")); }), RequestError::Kind::kResourceExhausted)
      << "max_files 3";
  for (int i = 0; i < 5; ++i) Upload("team-b", fmt::format("f{}", i), std::string(100, 'f'));  // no quota
}

TEST_F(FileStoreTest, ListPagesNewestFirstWithoutRepeatsAndDeleteRemovesTheBytes) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(Upload("team-b", fmt::format("f{}", i), "x").id());
  std::vector<std::string> seen;
  std::string token;
  do {
    FileStore::Page page = files_->List("team-b", "", 2, token);
    EXPECT_LE(page.files.size(), 2u);
    for (const auto& f : page.files) seen.push_back(f.filename());
    token = page.next_page_token;
  } while (!token.empty());
  EXPECT_EQ(seen, (std::vector<std::string>{"f4", "f3", "f2", "f1", "f0"}));
  EXPECT_EQ(Refusal([&] { files_->List("team-b", "", 2, "not-a-token"); }), RequestError::Kind::kInvalidArgument);
  EXPECT_TRUE(files_->List("team-a", "", 10, "").files.empty());
  // A token is bound to the listing it came from: another tenant, purpose or listing refuses it.
  const std::string next = files_->List("team-b", "", 2, "").next_page_token;
  ASSERT_FALSE(next.empty());
  EXPECT_EQ(files_->List("team-b", "", 3, next).files.size(), 3u);  // the page size may change
  EXPECT_EQ(Refusal([&] { files_->List("team-a", "", 2, next); }), RequestError::Kind::kInvalidArgument);
  EXPECT_EQ(Refusal([&] { files_->List("team-b", "data", 2, next); }), RequestError::Kind::kInvalidArgument);
  // An admin's listing (no tenant) sees every tenant's files, and gets any of them by id.
  Upload("team-a", "a0", "y");
  EXPECT_EQ(files_->List("", "", 100, "").files.size(), 6u);
  EXPECT_TRUE(files_->Get("", ids[1]).has_value());
  EXPECT_FALSE(files_->Get("team-a", ids[1]).has_value());
  const auto file = files_->Get("team-b", ids[0]);
  files_->Delete(*file);
  EXPECT_FALSE(fs::exists(files_->PathOf(*file)));
  EXPECT_FALSE(files_->Get("team-b", ids[0]).has_value());
}

TEST_F(FileStoreTest, TheCheckDecidesTheStatusOfAFineTuneFile) {
  const std::string bytes = "not json\n";
  auto upload = files_->BeginUpload("team-b", Metadata("bad.jsonl", bytes, kPurposeFineTune));
  upload->Write(bytes);
  fs::path checked;
  const v1::File file = upload->Commit([&](const fs::path& path) {
    checked = path;
    return FileCheck{false, "bad.jsonl:1: [invalid_json] ..."};
  });
  EXPECT_EQ(ReadFile(files_->PathOf(file)), bytes);
  EXPECT_EQ(checked.parent_path(), FilesDir("team-b")) << "checked before it is renamed into place";
  EXPECT_EQ(file.status(), "error");
  EXPECT_EQ(files_->Get("team-b", file.id())->status_details(), "bad.jsonl:1: [invalid_json] ...");
  // The upload's answer carries its creation time, as the stored row does.
  EXPECT_GT(file.create_time().seconds(), 0);
  EXPECT_EQ(files_->Get("team-b", file.id())->create_time().seconds(), file.create_time().seconds());
}

// A tar stream of `dir` written by TarWriter in pieces of `piece` bytes, to `out`.
void WriteTar(const fs::path& dir, const fs::path& out, size_t piece) {
  std::ofstream file(out, std::ios::binary);
  TarWriter tar(
      [&](const std::string& bytes) {
        EXPECT_LE(bytes.size(), piece);
        file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        return true;
      },
      piece);
  ASSERT_TRUE(tar.AddTree(dir, "final"));
  ASSERT_TRUE(tar.Finish());
}

TEST(TarWriter, PythonsTarfileReadsWhatItWrites) {
  ScratchDir dir;
  testing::WriteText(dir / "final/config.json", "{\"a\": 1}");
  testing::WriteText(dir / "final/empty", "");
  testing::WriteText(dir / "final/block", std::string(512, 'b'));
  std::string big(300000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 % 251);
  testing::WriteText(dir / "final/model.safetensors", big);
  const std::string deep = std::string(90, 'd') + "/" + std::string(90, 'e');  // past ustar's 100-byte name
  testing::WriteText(dir / "final" / deep / "x.txt", "deep");
  fs::create_symlink("/etc/passwd", dir / "final/link");  // never followed, never stored
  WriteTar(dir / "final", dir / "out.tar", 4096);
  const std::string script = fmt::format(
      "import tarfile, hashlib\n"
      "t = tarfile.open('{}')\n"
      "names = sorted(m.name for m in t.getmembers())\n"
      "assert 'final/link' not in names, names\n"
      "assert t.extractfile('final/config.json').read() == b'{{\"a\": 1}}'\n"
      "assert t.extractfile('final/empty').read() == b''\n"
      "assert t.extractfile('final/block').read() == b'b' * 512\n"
      "assert hashlib.sha256(t.extractfile('final/model.safetensors').read()).hexdigest() == '{}'\n"
      "assert t.extractfile('final/{}/x.txt').read() == b'deep'\n"
      "assert t.getmember('final').isdir()\n"
      "print(len(names))\n",
      (dir / "out.tar").string(), Sha256(big), deep);
  testing::WriteText(dir / "check.py", script);
  const std::string command = "/usr/bin/python3 " + (dir / "check.py").string() + " > " + (dir / "n").string();
  ASSERT_EQ(std::system(command.c_str()), 0) << script;
  EXPECT_EQ(ReadFile(dir / "n"), "8\n");  // final, 4 files, 2 directories of the deep path, x.txt
}

TEST(TarWriter, StopsWhenTheReaderIsGone) {
  ScratchDir dir;
  testing::WriteText(dir / "final/big", std::string(100000, 'x'));
  int pieces = 0;
  TarWriter tar([&](const std::string&) { return ++pieces < 3; }, 1024);
  EXPECT_FALSE(tar.AddTree(dir / "final", "final"));
  EXPECT_EQ(pieces, 3);
}

}  // namespace
}  // namespace shardtune::server
