// The OpenAI-compatible files routes (docs/openai-api.md, "Files"): the Files API's store
// (file_store.h) as OpenAI's /v1/files, with the route helpers every /v1 route shares.
#include <fstream>
#include <memory>

#include "launcher/server/openai_routes.h"

namespace shardtune::server {

namespace fs = std::filesystem;

void MountOpenAi(HttpServer& http, JobManager& manager, const ApiKeyTable& keys) {
  openai::MountFiles(http, manager, keys);
  openai::MountJobs(http, manager, keys);
}

namespace openai {

HttpServer::Handler Route(const ApiKeyTable& keys, HttpServer::CallerHandler handler) {
  return WithCaller(keys, [handler = std::move(handler)](const Caller& caller, const httplib::Request& request,
                                                         httplib::Response& response) {
    try {
      handler(caller, request, response);
    } catch (const ApiError& e) {
      WriteHttpError(response, e.status(), e.what(), e.status() >= 500 ? "server_error" : "invalid_request_error",
                     e.code(), e.param());
    }
  });
}

void WriteJson(httplib::Response& response, const Json& body) {
  response.status = 200;
  response.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace), "application/json");
}

int64_t LimitParam(const httplib::Request& request, int64_t fallback, int64_t most) {
  if (!request.has_param("limit")) return fallback;
  const std::string text = request.get_param_value("limit");
  int64_t limit = 0;
  const bool digits = !text.empty() && text.size() <= 9 &&
                      std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); });
  if (digits) limit = std::stoll(text);
  if (limit < 1 || limit > most)
    throw ApiError(400, fmt::format("limit '{}': expected an integer from 1 to {}", text, most), "limit",
                   "invalid_value");
  return limit;
}

namespace {

// The caller's tenant's file (any tenant's for an admin); another tenant's does not exist for it.
v1::File OwnedFile(JobManager& manager, const Caller& caller, const std::string& id) {
  auto file = manager.files().Get(caller.visible_tenant(), id);
  if (!file) throw ApiError(404, fmt::format("no file '{}'", id), "id", "file_not_found");
  return *file;
}

// POST /v1/files: multipart `file` and `purpose` (fine-tune: checked as training data, as the
// gRPC upload does; a file with problems is stored with status error and its problems).
void Upload(JobManager& manager, const Caller& caller, const httplib::Request& request, httplib::Response& response) {
  if (!request.is_multipart_form_data())
    throw ApiError(400, "expected a multipart/form-data body with 'file' and 'purpose'", "file", "invalid_value");
  if (!request.has_file("purpose"))
    throw ApiError(400, "missing required parameter: 'purpose'", "purpose", "missing_required_parameter");
  const std::string purpose = request.get_file_value("purpose").content;
  if (purpose != kPurposeFineTune)
    throw ApiError(400,
                   fmt::format("purpose '{}': this server stores files for fine-tuning only ('fine-tune')", purpose),
                   "purpose", "invalid_value");
  const httplib::MultipartFormData file = request.get_file_value("file");
  const std::string filename = fs::path(file.filename).filename().string();
  if (!request.has_file("file") || filename.empty())
    throw ApiError(400, "missing required parameter: 'file' (a file part with a filename)", "file",
                   "missing_required_parameter");
  v1::UploadFileRequest::Metadata metadata;
  metadata.set_filename(filename);
  metadata.set_purpose(purpose);
  metadata.set_bytes(static_cast<int64_t>(file.content.size()));
  metadata.set_sha256(Sha256Hex(file.content));
  const auto upload = manager.BeginUpload(caller, metadata);
  for (size_t at = 0; at < file.content.size(); at += kMaxFileChunkBytes)
    upload->Write(file.content.substr(at, kMaxFileChunkBytes));
  const v1::File stored =
      upload->Commit([&](const fs::path& path) { return manager.CheckUploadedFile(path, filename); });
  WriteJson(response, FileObject(stored));
}

// GET /v1/files: `purpose`, `order` (desc, the default, or asc by creation), `after` (a file id:
// those after it in that order), `limit` (default and at most 10000).
void List(JobManager& manager, const Caller& caller, const httplib::Request& request, httplib::Response& response) {
  const std::string purpose = request.get_param_value("purpose");
  const std::string order = request.has_param("order") ? request.get_param_value("order") : "desc";
  if (order != "asc" && order != "desc")
    throw ApiError(400, fmt::format("order '{}': expected asc or desc", order), "order", "invalid_value");
  const int64_t limit = LimitParam(request, 10000, 10000);
  std::vector<v1::File> files;  // newest first; a tenant's files are few (quotas)
  std::string token;
  do {
    FileStore::Page page = manager.files().List(caller.visible_tenant(), purpose, 500, token);
    for (auto& f : page.files) files.push_back(std::move(f));
    token = page.next_page_token;
  } while (!token.empty());
  if (order == "asc") std::reverse(files.begin(), files.end());
  size_t start = 0;
  if (request.has_param("after")) {
    const std::string after = request.get_param_value("after");
    const auto it = std::find_if(files.begin(), files.end(), [&](const v1::File& f) { return f.id() == after; });
    if (it == files.end()) throw ApiError(400, fmt::format("after: no file '{}'", after), "after", "invalid_value");
    start = static_cast<size_t>(it - files.begin()) + 1;
  }
  Json data = Json::array();
  for (size_t i = start; i < files.size() && static_cast<int64_t>(data.size()) < limit; ++i)
    data.push_back(FileObject(files[i]));
  const bool has_more = start + data.size() < files.size();
  Json body = ListObject(data, has_more);
  body["first_id"] = data.empty() ? Json() : data.front()["id"];
  body["last_id"] = data.empty() ? Json() : data.back()["id"];
  WriteJson(response, body);
}

// GET /v1/files/{id}/content: the bytes as uploaded, streamed from the file.
void Content(JobManager& manager, const Caller& caller, const httplib::Request& request, httplib::Response& response) {
  const v1::File file = OwnedFile(manager, caller, request.matches[1]);
  auto in = std::make_shared<std::ifstream>(manager.files().PathOf(file), std::ios::binary);
  if (!*in) throw ApiError(404, fmt::format("file '{}': its bytes are gone", file.id()), "id", "file_not_found");
  const auto size = static_cast<size_t>(fs::file_size(manager.files().PathOf(file)));
  std::string name = file.filename();  // the client's own name: nothing in it may end the header's quoted string
  for (char& c : name)
    if (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) c = '_';
  response.set_header("Content-Disposition", fmt::format("attachment; filename=\"{}\"", name));
  response.set_content_provider(size, "application/octet-stream",
                                [in](size_t offset, size_t length, httplib::DataSink& sink) {
                                  std::string piece(std::min<size_t>(length, size_t{1} << 20), '\0');
                                  in->seekg(static_cast<std::streamoff>(offset));
                                  in->read(piece.data(), static_cast<std::streamsize>(piece.size()));
                                  if (in->gcount() <= 0) return false;
                                  return sink.write(piece.data(), static_cast<size_t>(in->gcount()));
                                });
}

}  // namespace

void MountFiles(HttpServer& http, JobManager& manager, const ApiKeyTable& keys) {
  http.Post("/v1/files",
            Route(keys, [&manager](const Caller& caller, const httplib::Request& request, httplib::Response& response) {
              Upload(manager, caller, request, response);
            }));
  http.Get("/v1/files",
           Route(keys, [&manager](const Caller& caller, const httplib::Request& request, httplib::Response& response) {
             List(manager, caller, request, response);
           }));
  http.Get("/v1/files/{id}",
           Route(keys, [&manager](const Caller& caller, const httplib::Request& request, httplib::Response& response) {
             WriteJson(response, FileObject(OwnedFile(manager, caller, request.matches[1])));
           }));
  http.Delete("/v1/files/{id}", Route(keys, [&manager](const Caller& caller, const httplib::Request& request,
                                                       httplib::Response& response) {
                const std::string id = request.matches[1];
                OwnedFile(manager, caller, id);  // 404 in OpenAI's words before the manager's checks
                manager.DeleteFile(caller, id);
                WriteJson(response, Json{{"id", id}, {"object", "file"}, {"deleted", true}});
              }));
  http.Get("/v1/files/{id}/content",
           Route(keys, [&manager](const Caller& caller, const httplib::Request& request, httplib::Response& response) {
             Content(manager, caller, request, response);
           }));
}

}  // namespace openai

}  // namespace shardtune::server
