// shardtune-server's config file (YAML), read from a file as the server reads it.

#include "common/error.h"
#include "launcher/server/server_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = shardtune::fuzz::WriteScratch("server.yaml", shardtune::fuzz::AsText(data, size));
  try {
    const shardtune::server::ServerConfig config = shardtune::server::LoadServerConfig(path);
    (void)config.total_slots();
    for (const auto& [tenant, quota] : config.quotas) (void)config.TenantRoot(tenant);
  } catch (const shardtune::Error&) {
  }
  return 0;
}
