// FileService (proto/shardtune/v1/files.proto): the Files API over JobManager's FileStore, with
// JobService's authentication. Uploads stream into FileStore::Upload; downloads stream files and
// job artifacts (tar streams of directories, TarWriter) in messages of at most 1 MiB.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/run_dir.h"
#include "launcher/server/service_util.h"
#include "launcher/server/services.h"
#include "launcher/server/tar_writer.h"
#include "shardtune/v1/files.grpc.pb.h"

namespace shardtune::server {

namespace fs = std::filesystem;
using grpc::ServerContext;

namespace {

constexpr size_t kDownloadPiece = size_t{1} << 20;

[[noreturn]] void Refuse(RequestError::Kind kind, const std::string& message) { throw RequestError(kind, message); }

// Sends pieces of one download, naming it in the first message.
class ChunkWriter {
 public:
  ChunkWriter(grpc::ServerWriter<v1::FileChunk>* writer, std::string name, bool tar)
      : writer_(writer), name_(std::move(name)), tar_(tar) {}
  bool Send(const std::string& piece) {
    v1::FileChunk chunk;
    if (first_) {
      chunk.set_name(name_);
      chunk.set_tar(tar_);
      first_ = false;
    }
    chunk.set_data(piece);
    return writer_->Write(chunk);
  }

 private:
  grpc::ServerWriter<v1::FileChunk>* writer_;
  std::string name_;
  bool tar_;
  bool first_ = true;
};

// Streams one regular file as it is (not following a symbolic link).
void StreamFile(const fs::path& path, const std::string& name, grpc::ServerWriter<v1::FileChunk>* writer) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) Refuse(RequestError::Kind::kNotFound, fmt::format("{}: {}", name, std::strerror(errno)));
  ChunkWriter out(writer, name, /*tar=*/false);
  std::string piece(kDownloadPiece, '\0');
  bool sent = false;
  while (true) {
    const ssize_t n = ::read(fd, piece.data(), piece.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      Fail(ErrorCode::kInternal, "{}: read failed: {}", path.string(), std::strerror(error));
    }
    if (n == 0 && sent) break;
    sent = true;
    if (!out.Send(piece.substr(0, static_cast<size_t>(n))) || n == 0) break;
  }
  ::close(fd);
}

// Streams directory trees (each ARCHIVE_NAME -> DIR) or files as one tar stream named NAME.tar.
void StreamTar(const std::string& name, const std::vector<std::pair<std::string, fs::path>>& entries,
               grpc::ServerWriter<v1::FileChunk>* writer) {
  ChunkWriter out(writer, name + ".tar", /*tar=*/true);
  TarWriter tar([&](const std::string& piece) { return out.Send(piece); }, kDownloadPiece);
  for (const auto& [archive_name, path] : entries) {
    const bool ok = fs::is_directory(path) ? tar.AddTree(path, archive_name) : tar.AddFile(path, archive_name);
    if (!ok) return;  // the client is gone
  }
  tar.Finish();
}

// A job's artifact (DownloadFileRequest.artifact) as a download.
void StreamArtifact(const v1::Job& job, const v1::DownloadFileRequest& request,
                    grpc::ServerWriter<v1::FileChunk>* writer) {
  const RunDir run(job.output_dir());
  const std::string& artifact = request.artifact();
  const auto missing = [&](const std::string& what) {
    Refuse(RequestError::Kind::kNotFound, fmt::format("job {} has no {} (in {})", job.id(), what, run.root().string()));
  };
  if (artifact == "metrics") {
    if (!fs::is_regular_file(run.Metrics())) missing("metrics.jsonl yet");
    return StreamFile(run.Metrics(), "metrics.jsonl", writer);
  }
  if (artifact == "final" || artifact == "adapter") {
    if (!fs::is_directory(run.Final())) missing("final/ (it has not finished)");
    if (artifact == "final") return StreamTar("final", {{"final", run.Final()}}, writer);
    // A PEFT method's final/ holds the adapter in Hugging Face PEFT's files.
    std::vector<std::pair<std::string, fs::path>> files;
    for (const char* name : {"adapter_config.json", "adapter_model.safetensors"})
      if (fs::is_regular_file(run.Final() / name))
        files.emplace_back(std::string("adapter/") + name, run.Final() / name);
    if (files.empty()) missing("adapter in final/ (a full fine-tune, or one exported as hf only)");
    return StreamTar("adapter", files, writer);
  }
  if (artifact == "checkpoint") {
    std::optional<StepCheckpoint> checkpoint;
    if (request.step() > 0 && fs::is_directory(run.Checkpoint(request.step()).path()))
      checkpoint = StepCheckpoint{request.step(), run.Checkpoint(request.step())};
    if (request.step() <= 0) checkpoint = run.LatestCheckpoint();
    if (!checkpoint) missing(request.step() > 0 ? fmt::format("checkpoint at step {}", request.step()) : "checkpoint");
    const std::string name = checkpoint->dir.path().filename().string();
    return StreamTar(name, {{name, checkpoint->dir.path()}}, writer);
  }
  Refuse(RequestError::Kind::kInvalidArgument,
         fmt::format("artifact '{}': expected final, adapter, metrics or checkpoint", artifact));
}

class FileServiceImpl final : public v1::FileService::Service {
 public:
  explicit FileServiceImpl(JobManager& manager) : manager_(manager), keys_(manager.config()) {}

  Status UploadFile(ServerContext* context, grpc::ServerReader<v1::UploadFileRequest>* reader,
                    v1::File* file) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      v1::UploadFileRequest message;
      if (!reader->Read(&message) || message.part_case() != v1::UploadFileRequest::kMetadata)
        Refuse(RequestError::Kind::kInvalidArgument, "the upload's first message must be its metadata");
      v1::UploadFileRequest::Metadata metadata = message.metadata();
      if (metadata.purpose().empty()) metadata.set_purpose(kPurposeFineTune);
      const auto upload = manager_.BeginUpload(caller, metadata);
      while (reader->Read(&message)) {
        if (message.part_case() != v1::UploadFileRequest::kChunk)
          Refuse(RequestError::Kind::kInvalidArgument, "after the metadata, an upload sends only chunks");
        upload->Write(message.chunk());
      }
      // A client that cancels ends the stream too: what it sent is not the file.
      if (context->IsCancelled()) return Status(StatusCode::CANCELLED, "the upload was cancelled; nothing was stored");
      *file =
          upload->Commit([&](const fs::path& path) { return manager_.CheckUploadedFile(path, metadata.filename()); });
      return Status::OK;
    });
  }

  Status ListFiles(ServerContext* context, const v1::ListFilesRequest* request,
                   v1::ListFilesResponse* response) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      const int64_t page_size = request->page_size() > 0 ? std::min(request->page_size(), 500) : 50;
      FileStore::Page page =
          manager_.files().List(caller.visible_tenant(), request->purpose(), page_size, request->page_token());
      for (auto& f : page.files) *response->add_files() = std::move(f);
      response->set_next_page_token(page.next_page_token);
      return Status::OK;
    });
  }

  Status GetFile(ServerContext* context, const v1::GetFileRequest* request, v1::File* file) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      *file = Owned(caller, request->id());
      return Status::OK;
    });
  }

  Status DeleteFile(ServerContext* context, const v1::DeleteFileRequest* request,
                    v1::DeleteFileResponse* response) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      manager_.DeleteFile(caller, request->id());
      response->set_id(request->id());
      response->set_deleted(true);
      return Status::OK;
    });
  }

  Status DownloadFile(ServerContext* context, const v1::DownloadFileRequest* request,
                      grpc::ServerWriter<v1::FileChunk>* writer) override {
    return keys_.Authenticated(context, [&](const Caller& caller) {
      if (!request->file_id().empty()) {
        const v1::File file = Owned(caller, request->file_id());
        StreamFile(manager_.files().PathOf(file), file.filename(), writer);
      } else if (!request->job_id().empty()) {
        StreamArtifact(manager_.Get(caller, request->job_id()), *request, writer);  // NOT_FOUND: another tenant's
      } else {
        Refuse(RequestError::Kind::kInvalidArgument, "give file_id, or job_id and artifact");
      }
      return Status::OK;
    });
  }

 private:
  // The caller's tenant's file (any tenant's, for an admin); another tenant's does not exist for it.
  v1::File Owned(const Caller& caller, const std::string& id) {
    auto file = manager_.files().Get(caller.visible_tenant(), id);
    if (!file) Refuse(RequestError::Kind::kNotFound, fmt::format("no file '{}'", id));
    return *file;
  }

  JobManager& manager_;
  ApiKeys keys_;
};

}  // namespace

std::unique_ptr<v1::FileService::Service> MakeFileService(JobManager& manager) {
  return std::make_unique<FileServiceImpl>(manager);
}

}  // namespace shardtune::server
