// Reading and writing safetensors files (https://github.com/huggingface/safetensors):
// 8-byte little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets}, "__metadata__": {str: str}}, then the raw bytes.
// SafetensorsFile is immutable after Open and safe to read from several
// threads (pread). Every error names the file and, where it applies, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/base/bf16.h"  // BF16ToFloat, FloatToBF16
#include "core/base/status.h"

namespace sae {

enum class DType { kF32, kBF16, kF16, kF64, kI32, kI64, kU8 };

absl::StatusOr<DType> DTypeFromString(const std::string& s);  // "F32", "BF16"...
const char* DTypeName(DType d);                               // "F32"...
size_t DTypeSize(DType d);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Parses and validates the header: length within the file, offsets within
  // the data section, sizes equal to numel * dtype size, no overlaps.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  absl::StatusOr<TensorInfo> Info(const std::string& name) const;

  // Raw bytes of a tensor (or of rows [row_begin, row_end) of its first dim).
  absl::Status ReadRaw(const std::string& name, void* dst, size_t dst_bytes) const;
  absl::Status ReadRows(const std::string& name, int64_t row_begin, int64_t row_end, void* dst, size_t dst_bytes) const;
  // Rows converted to float32 (from F32, BF16, F16 or F64).
  absl::Status ReadRowsAsFloat(const std::string& name, int64_t row_begin, int64_t row_end, float* dst) const;
  absl::StatusOr<std::vector<float>> ReadFloat(const std::string& name) const;

 private:
  struct Fd;  // owns the open file descriptor; shared by copies
  absl::Status PRead(void* dst, size_t bytes, uint64_t offset) const;
  std::string path_;
  std::shared_ptr<const Fd> fd_;
  uint64_t data_start_ = 0;  // absolute file offset of the data section
  uint64_t file_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors in memory and writes them as one safetensors file
// (atomically: temp file + rename). Not thread-safe.
class SafetensorsWriter {
 public:
  void SetMetadata(const std::string& key, const std::string& value);
  // Copies `bytes` (numel * DTypeSize(dtype) bytes) under `name`.
  absl::Status Add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* bytes);
  // float32 data stored as `dtype` (F32, BF16 round-to-nearest-even, F16).
  absl::Status AddFloat(const std::string& name, DType dtype, std::vector<int64_t> shape, const float* data);
  absl::Status Write(const std::string& path) const;

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Scalar conversions used by readers and writers.
float F16ToFloat(uint16_t v);
uint16_t FloatToF16(float f);

}  // namespace sae
