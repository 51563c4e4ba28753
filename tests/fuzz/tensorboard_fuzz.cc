// A TensorBoard event file, read back as `shardtune report` reads a run's events.

#include "common/error.h"
#include "common/tensorboard.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = shardtune::fuzz::WriteScratch("events.out.tfevents", shardtune::fuzz::AsText(data, size));
  try {
    (void)shardtune::ReadTensorBoardFile(path);
  } catch (const shardtune::Error&) {
  }
  return 0;
}
