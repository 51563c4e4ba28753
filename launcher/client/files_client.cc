#include "launcher/client/files_client.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "launcher/client/client_common.h"
#include "shardtune/v1/files.grpc.pb.h"

namespace shardtune {

namespace fs = std::filesystem;

namespace {

constexpr size_t kChunkBytes = size_t{4} << 20;  // the most the server takes in one message

struct FileFlags {
  std::string server, token, tls_ca, output = "table";
  std::string path, purpose = "fine-tune", id, job, artifact, out, page_token;
  std::string list_purpose;  // list: only files of this purpose (empty: any)
  int page_size = 0;
};

// A progress bar on stderr, drawn only when stderr is a terminal.
class Progress {
 public:
  Progress(std::string what, int64_t total) : what_(std::move(what)), total_(total), live_(::isatty(STDERR_FILENO)) {}
  ~Progress() {
    if (live_ && drawn_) std::fprintf(stderr, "\n");
  }
  void Update(int64_t done) {
    if (!live_) return;
    drawn_ = true;
    const double fraction = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 0.0;
    if (total_ > 0) {
      std::fprintf(stderr, "\r\033[K%s [%-30s] %5.1f%%  %.1f/%.1f MiB", what_.c_str(),
                   std::string(static_cast<size_t>(30 * fraction), '#').c_str(), 100 * fraction, done / 1048576.0,
                   total_ / 1048576.0);
    } else {
      std::fprintf(stderr, "\r\033[K%s %.1f MiB", what_.c_str(), done / 1048576.0);
    }
  }

 private:
  std::string what_;
  int64_t total_;
  bool live_;
  bool drawn_ = false;
};

std::string Sha256OfFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(ErrorCode::kNotFound, "{}: cannot read", path.string());
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0)
    EVP_DigestUpdate(ctx, buffer.data(), static_cast<size_t>(in.gcount()));
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned size = 0;
  EVP_DigestFinal_ex(ctx, digest, &size);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  for (unsigned i = 0; i < size; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

void PrintFileRow(const v1::File& f) {
  std::printf("%-30s %-24s %-9s %-10s %12lld  %s\n", f.id().c_str(), f.filename().c_str(), f.purpose().c_str(),
              f.status().c_str(), static_cast<long long>(f.bytes()), Time(f.create_time()).c_str());
}

void PrintFile(const v1::File& f) {
  std::printf(
      "id:       %s\ntenant:   %s\nfilename: %s\npurpose:  %s\nbytes:    %lld\nsha256:   %s\ncreated:  %s\nstatus:   "
      "%s\n",
      f.id().c_str(), f.tenant().c_str(), f.filename().c_str(), f.purpose().c_str(), static_cast<long long>(f.bytes()),
      f.sha256().c_str(), Time(f.create_time()).c_str(), f.status().c_str());
  if (!f.status_details().empty()) std::printf("details:\n%s\n", f.status_details().c_str());
}

// One command's calls: its flags, the stub, and a context per RPC carrying the key.
class FileCall {
 public:
  explicit FileCall(const FileFlags& flags)
      : flags(flags),
        json(flags.output == "json"),
        stub(v1::FileService::NewStub(OpenChannel(flags.server, flags.tls_ca))) {}
  std::unique_ptr<grpc::ClientContext> Context() const { return ContextWithKey(flags.token); }
  // The file an RPC answered with, as a table or JSON; or why the server refused.
  int Show(const grpc::Status& status, const v1::File& file) const { return ShowReply(status, file, json, PrintFile); }

  const FileFlags& flags;
  const bool json;
  std::unique_ptr<v1::FileService::Stub> stub;
};

int Upload(FileCall& call) {
  const fs::path path = call.flags.path;
  v1::UploadFileRequest message;
  auto* metadata = message.mutable_metadata();
  metadata->set_filename(path.filename().string());
  metadata->set_purpose(call.flags.purpose);
  metadata->set_bytes(static_cast<int64_t>(fs::file_size(path)));
  metadata->set_sha256(Sha256OfFile(path));
  auto context = call.Context();
  v1::File file;
  auto writer = call.stub->UploadFile(context.get(), &file);
  bool open = writer->Write(message);
  std::ifstream in(path, std::ios::binary);
  std::string chunk(kChunkBytes, '\0');
  Progress progress("uploading " + metadata->filename(), metadata->bytes());
  int64_t sent = 0;
  while (open && (in.read(chunk.data(), static_cast<std::streamsize>(chunk.size())) || in.gcount() > 0)) {
    message.set_chunk(chunk.substr(0, static_cast<size_t>(in.gcount())));
    open = writer->Write(message);
    sent += in.gcount();
    progress.Update(sent);
  }
  writer->WritesDone();
  return call.Show(writer->Finish(), file);
}

int List(FileCall& call) {
  v1::ListFilesRequest request;
  request.set_page_size(call.flags.page_size);
  request.set_page_token(call.flags.page_token);
  request.set_purpose(call.flags.list_purpose);
  v1::ListFilesResponse response;
  auto context = call.Context();
  const grpc::Status status = call.stub->ListFiles(context.get(), request, &response);
  if (!status.ok()) return Refused(status);
  if (call.json) {
    std::printf("%s\n", Json(response).c_str());
    return 0;
  }
  for (const auto& f : response.files()) PrintFileRow(f);
  if (!response.next_page_token().empty())
    std::printf("next page: --page-token %s\n", response.next_page_token().c_str());
  return 0;
}

int Get(FileCall& call) {
  v1::GetFileRequest ref;
  ref.set_id(call.flags.id);
  v1::File file;
  auto context = call.Context();
  return call.Show(call.stub->GetFile(context.get(), ref, &file), file);
}

int Delete(FileCall& call) {
  v1::DeleteFileRequest ref;
  ref.set_id(call.flags.id);
  v1::DeleteFileResponse response;
  auto context = call.Context();
  const grpc::Status status = call.stub->DeleteFile(context.get(), ref, &response);
  if (!status.ok()) return Refused(status);
  std::printf("%s\n", call.json ? Json(response).c_str() : ("deleted " + response.id()).c_str());
  return 0;
}

// The request `download` makes: a file by id, or --job JOB --artifact NAME[:STEP].
v1::DownloadFileRequest DownloadRequest(const FileFlags& f) {
  v1::DownloadFileRequest request;
  if (f.job.empty()) {
    if (f.id.empty()) Fail(ErrorCode::kInvalidArgument, "download: give a file id, or --job and --artifact");
    request.set_file_id(f.id);
    return request;
  }
  request.set_job_id(f.job);
  const size_t colon = f.artifact.find(':');
  request.set_artifact(f.artifact.substr(0, colon));
  if (colon != std::string::npos) {
    try {
      request.set_step(std::stoll(f.artifact.substr(colon + 1)));
    } catch (const std::exception&) {
      Fail(ErrorCode::kInvalidArgument, "--artifact {}: expected checkpoint:STEP with a step number", f.artifact);
    }
  }
  return request;
}

int Download(FileCall& call) {
  const v1::DownloadFileRequest request = DownloadRequest(call.flags);
  const fs::path out = call.flags.out;
  const fs::path temp = out.string() + ".download-" + std::to_string(::getpid());
  auto context = call.Context();
  auto reader = call.stub->DownloadFile(context.get(), request);
  std::ofstream file(temp, std::ios::binary | std::ios::trunc);
  if (!file) Fail(ErrorCode::kInvalidArgument, "-o {}: cannot write {}", out.string(), temp.string());
  Progress progress("downloading", 0);
  v1::FileChunk chunk;
  int64_t received = 0;
  while (reader->Read(&chunk)) {
    file.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
    received += static_cast<int64_t>(chunk.data().size());
    progress.Update(received);
  }
  file.close();
  const grpc::Status status = reader->Finish();
  if (!status.ok()) {
    fs::remove(temp);
    return Refused(status);
  }
  const int fd = ::open(temp.c_str(), O_RDONLY | O_CLOEXEC);
  const bool synced = fd >= 0 && ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  if (!file || !synced) {
    fs::remove(temp);
    std::fprintf(stderr, "error: cannot write %s\n", temp.c_str());
    return 1;
  }
  fs::rename(temp, out);
  FsyncDirectory(fs::absolute(out).parent_path());
  if (!call.json) std::printf("wrote %s (%lld bytes)\n", out.c_str(), static_cast<long long>(received));
  return 0;
}

void IdOption(CLI::App* c, FileFlags& f) { c->add_option("id", f.id, "file id (file-...)")->required(); }

using FileCommandSet = ClientCommandSet<FileFlags, FileCall>;

const std::vector<FileCommandSet::Command>& Commands() {
  static const std::vector<FileCommandSet::Command> commands = {
      {"upload", "upload a file (purpose fine-tune: checked as training data)",
       [](CLI::App* c, FileFlags& f) {
         c->add_option("file", f.path, "the file")->required()->check(CLI::ExistingFile);
         c->add_option("--purpose", f.purpose, "fine-tune (default) or data")
             ->check(CLI::IsMember({"fine-tune", "data"}));
       },
       Upload},
      {"list", "list the tenant's files (newest first)",
       [](CLI::App* c, FileFlags& f) {
         c->add_option("--purpose", f.list_purpose, "only files of this purpose");
         c->add_option("--page-size", f.page_size, "files per page");
         c->add_option("--page-token", f.page_token, "from the previous page");
       },
       List},
      {"get", "show a file", IdOption, Get},
      {"delete", "delete a file (refused while an unfinished job names it)", IdOption, Delete},
      {"download", "download a file, or a job's artifact (final, adapter, checkpoint: tar streams)",
       [](CLI::App* c, FileFlags& f) {
         c->add_option("id", f.id, "file id (file-...)");
         c->add_option("--job", f.job, "a job's artifact instead of a file");
         c->add_option("--artifact", f.artifact, "final, adapter, metrics, checkpoint or checkpoint:STEP");
         c->add_option("-o,--out", f.out, "where to write it")->required();
       },
       Download},
  };
  return commands;
}

}  // namespace

struct FileCommands::State {
  explicit State(CLI::App* files) : files(files), commands(*files, Commands()) {}
  CLI::App* files;
  FileCommandSet commands;
};

FileCommands::FileCommands(CLI::App& app) {
  CLI::App* files = app.add_subcommand("files", "uploaded files and job artifacts on a shardtune-server");
  files->require_subcommand(1);
  state_ = std::make_unique<State>(files);
}

FileCommands::~FileCommands() = default;
bool FileCommands::parsed() const { return state_->files->parsed(); }
int FileCommands::Run() { return state_->commands.Run(); }

}  // namespace shardtune
