#pragma once
// The error a collective throws when it has not completed within its group's timeout
// (sharding.collective_timeout_s), as distinct from one that failed: the worker reports it to the
// server as TIMEOUT rather than RANK_FAILED. Its message names the rank, the collective and the
// step ("rank 0: all_gather of layer 3 at step 12 did not complete within ...").

#include "sharding/comm/communicator.h"

namespace shardtune {

class CollectiveTimeout : public CollectiveError {
 public:
  using CollectiveError::CollectiveError;
};

}  // namespace shardtune
