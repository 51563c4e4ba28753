#pragma once
// Reading a training checkpoint's weights without an engine: one parameter at a time, straight
// from the rank files. index.json (sharding/checkpoint.h) says where each trainable parameter
// lies in its unit and which range of which unit each rank file's "values" tensor holds at which
// local offset; a parameter is the overlap of its elements with those ranges, pread from each
// file that holds a piece of it. Nothing else is read: no optimizer moments, no other parameter,
// so the memory a read costs is the caller's buffer for that one parameter, whatever the model's
// size or the world size that wrote it. No LibTorch.
//
// Contract: the checkpoint directory is complete and not written while it is read (a committed
// step-N/ never is). One thread per reader.

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace shardtune {

class CheckpointReader {
 public:
  // Reads index.json and the header of every rank file it lists. Throws Error naming the file: an
  // index that is not a shardtune checkpoint of this format version, a missing or truncated rank
  // file, a "values" tensor that is not F32 of the index's element count, a range outside it.
  explicit CheckpointReader(std::filesystem::path dir);

  struct Parameter {
    std::string name;
    std::vector<int64_t> shape;
    int64_t numel = 0;
  };
  // The trainable parameters the checkpoint holds (the frozen base model is not in it).
  const std::map<std::string, Parameter>& parameters() const { return parameters_; }
  // nullptr when the checkpoint does not hold `name`.
  const Parameter* Find(const std::string& name) const;

  // Copies the fp32 values of parameter `name` into `out` (numel floats). Throws Error naming the
  // parameter when the checkpoint does not hold it or its files do not cover all its elements.
  void Read(const std::string& name, float* out) const;

  const std::filesystem::path& dir() const { return dir_; }
  // Bytes pread from rank files so far.
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  struct Located {  // where a parameter lies: its unit (index.json's numbering) and offset there
    int64_t unit = 0;
    int64_t offset = 0;
  };
  struct Piece {  // a range of a unit's elements held by one rank file
    size_t file = 0;
    int64_t begin = 0;  // first element of the unit
    int64_t size = 0;
    uint64_t file_offset = 0;  // byte offset of element `begin` in the file
  };
  void ReadFiles(const nlohmann::json& index);  // index.json's "files": files_ and pieces_

  std::filesystem::path dir_;
  std::vector<std::filesystem::path> files_;
  std::map<std::string, Parameter> parameters_;
  std::map<std::string, Located> located_;
  std::map<int64_t, std::vector<Piece>> pieces_;  // by unit
  mutable uint64_t bytes_read_ = 0;
};

}  // namespace shardtune
