#include "launcher/server/sweep_store.h"

#include <fmt/format.h>

#include "common/error.h"
#include "launcher/api_values.h"
#include "launcher/server/page_token.h"
#include "launcher/server/request_error.h"
#include "launcher/server/sqlite_statement.h"

namespace shardtune::server {

namespace {

constexpr const char* kColumns = "sweep, idempotency_key, admin";

SweepRecord FromRow(Statement& q) {
  SweepRecord r;
  if (!r.sweep.ParseFromString(q.Blob(0))) Fail(ErrorCode::kDataLoss, "a sweep row does not parse");
  r.idempotency_key = q.Text(1);
  r.admin = q.Int(2) != 0;
  return r;
}

std::string Blob(const v1::Sweep& sweep) {
  std::string blob;
  sweep.SerializeToString(&blob);
  return blob;
}

}  // namespace

void SweepStore::Insert(const SweepRecord& r) {
  auto db = db_.Lock();
  Statement q(db.db,
              "INSERT INTO sweeps (id, tenant, status, created_ms, idempotency_key, admin, sweep) "
              "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  q.Bind(1, r.sweep.id())
      .Bind(2, r.sweep.tenant())
      .Bind(3, static_cast<int64_t>(r.sweep.status()))
      .Bind(4, api::Ms(r.sweep.create_time()))
      .Bind(5, r.idempotency_key)
      .Bind(6, int64_t{r.admin ? 1 : 0})
      .BindBlob(7, Blob(r.sweep));
  q.Step();
}

void SweepStore::Update(const SweepRecord& r) {
  auto db = db_.Lock();
  Statement q(db.db, "UPDATE sweeps SET status = ?2, sweep = ?3 WHERE id = ?1");
  q.Bind(1, r.sweep.id()).Bind(2, static_cast<int64_t>(r.sweep.status())).BindBlob(3, Blob(r.sweep));
  q.Step();
}

std::optional<SweepRecord> SweepStore::Get(const std::string& id) {
  auto db = db_.Lock();
  Statement q(db.db, fmt::format("SELECT {} FROM sweeps WHERE id = ?1", kColumns));
  q.Bind(1, id);
  if (!q.Step()) return std::nullopt;
  return FromRow(q);
}

std::optional<SweepRecord> SweepStore::FindByIdempotencyKey(const std::string& tenant, const std::string& key) {
  auto db = db_.Lock();
  Statement q(db.db, fmt::format("SELECT {} FROM sweeps WHERE tenant = ?1 AND idempotency_key = ?2", kColumns));
  q.Bind(1, tenant).Bind(2, key);
  if (!q.Step()) return std::nullopt;
  return FromRow(q);
}

std::vector<SweepRecord> SweepStore::Running() {
  auto db = db_.Lock();
  Statement q(db.db, fmt::format("SELECT {} FROM sweeps WHERE status = ?1 ORDER BY created_ms, id", kColumns));
  q.Bind(1, static_cast<int64_t>(v1::SWEEP_STATUS_RUNNING));
  std::vector<SweepRecord> out;
  while (q.Step()) out.push_back(FromRow(q));
  return out;
}

int64_t SweepStore::MaxCreatedMs() {
  auto db = db_.Lock();
  Statement q(db.db, "SELECT COALESCE(MAX(created_ms), 0) FROM sweeps");
  return q.Step() ? q.Int(0) : 0;
}

SweepStore::Page SweepStore::List(const std::string& tenant, v1::SweepStatus status, int64_t page_size,
                                  const std::string& page_token) {
  ListPosition after{INT64_MAX, ""};
  if (!page_token.empty()) {
    const auto position = DecodeSweepPageToken(page_token, tenant, status);
    if (!position) {
      throw RequestError(RequestError::Kind::kInvalidArgument,
                         "page_token is not one this server gave for this listing (a token belongs to the status "
                         "it was given with)");
    }
    after = *position;
  }
  auto db = db_.Lock();
  Statement q(db.db, fmt::format("SELECT {} FROM sweeps WHERE (?1 = '' OR tenant = ?1) AND (?2 = 0 OR status = ?2) "
                                 "AND (created_ms < ?3 OR (created_ms = ?3 AND id < ?4)) "
                                 "ORDER BY created_ms DESC, id DESC LIMIT ?5",
                                 kColumns));
  // No id sorts after "~" among the ids this server makes (sweep-[0-9a-f]+): the first page's bound.
  q.Bind(1, tenant)
      .Bind(2, static_cast<int64_t>(status))
      .Bind(3, after.created_ms)
      .Bind(4, after.id.empty() ? std::string("~") : after.id)
      .Bind(5, page_size + 1);
  Page page;
  while (q.Step()) {
    if (static_cast<int64_t>(page.sweeps.size()) == page_size) {
      const v1::Sweep& last = page.sweeps.back();
      page.next_page_token = EncodeSweepPageToken({api::Ms(last.create_time()), last.id()}, tenant, status);
      break;
    }
    v1::Sweep sweep = FromRow(q).sweep;
    sweep.clear_trials();
    page.sweeps.push_back(std::move(sweep));
  }
  return page;
}

}  // namespace shardtune::server
