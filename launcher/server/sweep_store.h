#pragma once
// The server's sweeps (sweeps.proto), one row each in the server's database (job_store.h's
// connection and lock, table `sweeps`). A running sweep's trials live in its search journal
// (sweep_manager.h) and its jobs; the row holds the sweep itself, and, once it has ended, its
// trials too, so that a finished sweep is read back without its journal.
//
// Thread-safe. Errors are Error (SQLite's), or RequestError for a bad page token.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "launcher/server/job_store.h"
#include "shardtune/v1/sweeps.pb.h"

namespace shardtune::server {

struct SweepRecord {
  v1::Sweep sweep;
  std::string idempotency_key;
  bool admin = false;  // the creator's role: its trial jobs are created with the same
};

class SweepStore {
 public:
  explicit SweepStore(JobStore& db) : db_(db) {}

  void Insert(const SweepRecord& record);
  void Update(const SweepRecord& record);
  std::optional<SweepRecord> Get(const std::string& id);
  std::optional<SweepRecord> FindByIdempotencyKey(const std::string& tenant, const std::string& key);
  std::vector<SweepRecord> Running();  // oldest first
  int64_t MaxCreatedMs();              // of the newest sweep; 0 when there is none

  struct Page {
    std::vector<v1::Sweep> sweeps;  // newest first (create_time, then id)
    std::string next_page_token;    // empty: the last page
  };
  // The tenant's sweeps (every tenant's when `tenant` is empty) with `status` (UNSPECIFIED: any).
  // `page_token`: empty, or a next_page_token this store gave for the same tenant and status
  // (INVALID_ARGUMENT otherwise). A keyset: sweeps created between pages neither repeat nor skip one.
  Page List(const std::string& tenant, v1::SweepStatus status, int64_t page_size, const std::string& page_token);

 private:
  JobStore& db_;
};

}  // namespace shardtune::server
