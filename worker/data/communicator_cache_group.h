#pragma once
// The ranks of a communicator as a CacheGroup (token_cache.h): a job's ranks build and check its
// token caches together.

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <vector>

#include "sharding/comm/communicator.h"
#include "worker/data/token_cache.h"

namespace shardtune {

class CommunicatorCacheGroup final : public CacheGroup {
 public:
  // `comm` must outlive the group; its collectives run on its device.
  explicit CommunicatorCacheGroup(Communicator& comm) : comm_(comm) {}
  int rank() const override { return comm_.rank(); }
  int size() const override { return comm_.size(); }
  void Barrier(const std::string& what) override { comm_.Barrier(CollectiveTag{what, 0}); }
  void SumInt64(std::vector<int64_t>& values, const std::string& what) override {
    if (values.empty()) return;
    at::Tensor sum = at::tensor(values, at::kLong).to(comm_.device());
    AllReduceSumNow(comm_, sum, CollectiveTag{what, 0});
    const at::Tensor host = sum.cpu();
    std::copy(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel(), values.begin());
  }

 private:
  Communicator& comm_;
};

}  // namespace shardtune
