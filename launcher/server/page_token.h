#pragma once
// The page tokens of every List RPC (ListJobs, ListFiles, ListJobEvents, ListCheckpoints, ListSweeps): opaque to
// clients, a keyset position inside (the last row of the page, which the next page continues after) bound to the
// listing and the filter that produced it. A token given back with another filter (status, name, labels, purpose, job,
// after_seq, or another tenant's key) or to another listing is refused rather than silently paging a different listing
// from a position that means nothing there. Not a secret: the position is only base64url-encoded; what a caller may see
// is decided by the filter, never by the token.

#include <optional>
#include <string>

#include "launcher/server/job_store.h"

namespace shardtune::server {

// ListJobs: the position is the last job's (create_time in Unix milliseconds, id).
std::string EncodePageToken(const ListPosition& after, const JobFilter& filter);

// The position `token` holds; nullopt when it is not a token this server gave for `filter`.
std::optional<ListPosition> DecodePageToken(const std::string& token, const JobFilter& filter);

// ListFiles: the position is the last file's row number (insertion order) and id; the filter its
// tenant (empty: every tenant, for admins) and purpose.
std::string EncodeFilePageToken(int64_t rowid, const std::string& id, const std::string& tenant,
                                const std::string& purpose);

// The row number `token` holds; nullopt when it is not a token this server gave for that filter.
std::optional<int64_t> DecodeFilePageToken(const std::string& token, const std::string& tenant,
                                           const std::string& purpose);

// ListJobEvents: the position is the last event's seq; the filter the job and the request's after_seq.
std::string EncodeEventPageToken(int64_t last_seq, const std::string& job_id, int64_t after_seq);
std::optional<int64_t> DecodeEventPageToken(const std::string& token, const std::string& job_id, int64_t after_seq);

// ListCheckpoints: the position is the last checkpoint's step; the filter the job.
std::string EncodeCheckpointPageToken(int64_t last_step, const std::string& job_id);
std::optional<int64_t> DecodeCheckpointPageToken(const std::string& token, const std::string& job_id);

// ListSweeps: the position is the last sweep's (create_time in Unix milliseconds, id); the filter its
// tenant (empty: every tenant, for admins) and status (SweepStatus's number).
std::string EncodeSweepPageToken(const ListPosition& after, const std::string& tenant, int status);
std::optional<ListPosition> DecodeSweepPageToken(const std::string& token, const std::string& tenant, int status);

}  // namespace shardtune::server
