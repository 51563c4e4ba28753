#pragma once
// ListJobs' page tokens: opaque to clients, a keyset position inside (the last row of the page:
// created_ms and id, JobStore::List continues after it) bound to the filter that produced it.
// A token given back with another filter (status, name, labels, or another tenant's key) is
// refused rather than silently paging a different listing from a position that means nothing
// there. Not a secret: the position is only base64url-encoded; what a caller may see is decided
// by the filter, never by the token.

#include <optional>
#include <string>

#include "launcher/server/job_store.h"

namespace shardtune::server {

std::string EncodePageToken(const ListPosition& after, const JobFilter& filter);

// The position `token` holds; nullopt when it is not a token this server gave for `filter`.
std::optional<ListPosition> DecodePageToken(const std::string& token, const JobFilter& filter);

}  // namespace shardtune::server
