#include "launcher/server/page_token.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "launcher/server/server_config.h"  // Sha256Hex

namespace shardtune::server {

namespace {

constexpr char kVersion[] = "p1";
constexpr size_t kMaxTokenSize = 1024;  // a position and a digest: far less

// What a token is bound to: the listing and every part of its filter except the position and
// the page size (a client may change its page size between pages).
std::string JobFilterText(const JobFilter& f) {
  std::string text = fmt::format("jobs\ntenant={}\nstatus={}\nname={}\n", f.tenant, static_cast<int>(f.status), f.name);
  for (const auto& [k, v] : f.labels) text += fmt::format("label={}={}\n", k, v);  // std::map: sorted
  return text;
}

std::string FileFilterText(const std::string& tenant, const std::string& purpose) {
  return fmt::format("files\ntenant={}\npurpose={}\n", tenant, purpose);
}

std::string EventFilterText(const std::string& job_id, int64_t after_seq) {
  return fmt::format("events\njob={}\nafter_seq={}\n", job_id, after_seq);
}

std::string CheckpointFilterText(const std::string& job_id) { return fmt::format("checkpoints\njob={}\n", job_id); }

std::string SweepFilterText(const std::string& tenant, int status) {
  return fmt::format("sweeps\ntenant={}\nstatus={}\n", tenant, status);
}

std::string Base64Url(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  std::replace(out.begin(), out.end(), '+', '-');
  std::replace(out.begin(), out.end(), '/', '_');
  out.erase(out.find_last_not_of('=') + 1);
  return out;
}

std::optional<std::string> FromBase64Url(std::string text) {
  if (text.empty() || text.size() > kMaxTokenSize) return std::nullopt;
  for (char& c : text) {
    if (c == '-')
      c = '+';
    else if (c == '_')
      c = '/';
    else if (!std::isalnum(static_cast<unsigned char>(c)))
      return std::nullopt;
  }
  const size_t padding = (4 - text.size() % 4) % 4;
  if (padding == 3) return std::nullopt;
  text.append(padding, '=');
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  if (n < 0 || static_cast<size_t>(n) < padding) return std::nullopt;
  out.resize(static_cast<size_t>(n) - padding);  // EVP_DecodeBlock counts the padding as zero bytes
  return out;
}

// A token holds VERSION:DIGEST:KEY:ID (the id is last: it is the only part that could hold a
// colon), KEY a non-negative integer and ID non-empty.
std::string Encode(const std::string& filter_text, int64_t key, const std::string& id) {
  return Base64Url(fmt::format("{}:{}:{}:{}", kVersion, Sha256Hex(filter_text).substr(0, 16), key, id));
}

std::optional<ListPosition> Decode(const std::string& token, const std::string& filter_text) {
  const auto text = FromBase64Url(token);
  if (!text) return std::nullopt;
  const std::string prefix = fmt::format("{}:{}:", kVersion, Sha256Hex(filter_text).substr(0, 16));
  if (text->rfind(prefix, 0) != 0) return std::nullopt;
  const size_t colon = text->find(':', prefix.size());
  if (colon == std::string::npos || colon == prefix.size()) return std::nullopt;
  ListPosition position;
  const char* first = text->data() + prefix.size();
  const char* last = text->data() + colon;
  const auto [end, error] = std::from_chars(first, last, position.created_ms);
  if (error != std::errc() || end != last || position.created_ms < 0) return std::nullopt;
  position.id = text->substr(colon + 1);
  if (position.id.empty()) return std::nullopt;
  return position;
}

}  // namespace

std::string EncodePageToken(const ListPosition& after, const JobFilter& filter) {
  return Encode(JobFilterText(filter), after.created_ms, after.id);
}

std::optional<ListPosition> DecodePageToken(const std::string& token, const JobFilter& filter) {
  return Decode(token, JobFilterText(filter));
}

std::string EncodeFilePageToken(int64_t rowid, const std::string& id, const std::string& tenant,
                                const std::string& purpose) {
  return Encode(FileFilterText(tenant, purpose), rowid, id);
}

std::optional<int64_t> DecodeFilePageToken(const std::string& token, const std::string& tenant,
                                           const std::string& purpose) {
  const auto position = Decode(token, FileFilterText(tenant, purpose));
  if (!position) return std::nullopt;
  return position->created_ms;
}

std::string EncodeEventPageToken(int64_t last_seq, const std::string& job_id, int64_t after_seq) {
  return Encode(EventFilterText(job_id, after_seq), last_seq, job_id);
}

std::optional<int64_t> DecodeEventPageToken(const std::string& token, const std::string& job_id, int64_t after_seq) {
  const auto position = Decode(token, EventFilterText(job_id, after_seq));
  if (!position || position->id != job_id) return std::nullopt;
  return position->created_ms;
}

std::string EncodeCheckpointPageToken(int64_t last_step, const std::string& job_id) {
  return Encode(CheckpointFilterText(job_id), last_step, job_id);
}

std::optional<int64_t> DecodeCheckpointPageToken(const std::string& token, const std::string& job_id) {
  const auto position = Decode(token, CheckpointFilterText(job_id));
  if (!position || position->id != job_id) return std::nullopt;
  return position->created_ms;
}

std::string EncodeSweepPageToken(const ListPosition& after, const std::string& tenant, int status) {
  return Encode(SweepFilterText(tenant, status), after.created_ms, after.id);
}

std::optional<ListPosition> DecodeSweepPageToken(const std::string& token, const std::string& tenant, int status) {
  return Decode(token, SweepFilterText(tenant, status));
}

}  // namespace shardtune::server
