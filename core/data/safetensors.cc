#include "core/data/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <utility>

#include "absl/strings/str_join.h"
#include "core/base/file_util.h"

namespace sae {
namespace {

using json = nlohmann::json;

// The reference implementation refuses headers above 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// numel of `shape`, or -1 on a negative dim or overflow past 2^62.
int64_t CheckedNumel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > (int64_t{1} << 62) / d) return -1;
    n *= d;
  }
  return n;
}

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat(path, ": write failed: ", std::strerror(errno)));
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

void ConvertToFloat(DType dtype, const void* src, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); break;
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = BF16ToFloat(s[i]);
      break;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToFloat(s[i]);
      break;
    }
    case DType::kF64: {
      const double* s = static_cast<const double*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      break;
    }
    default: break;
  }
}

}  // namespace

struct SafetensorsFile::Fd {
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int fd;
};

namespace {

// The safetensors names of the dtypes, for both directions.
constexpr std::pair<const char*, DType> kDTypeNames[] = {
    {"F32", DType::kF32}, {"BF16", DType::kBF16}, {"F16", DType::kF16}, {"F64", DType::kF64},
    {"I32", DType::kI32}, {"I64", DType::kI64},   {"U8", DType::kU8}};

}  // namespace

absl::StatusOr<DType> DTypeFromString(const std::string& s) {
  for (const auto& [name, d] : kDTypeNames) {
    if (s == name) return d;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype \"", s, "\""));
}

const char* DTypeName(DType d) {
  for (const auto& [name, value] : kDTypeNames) {
    if (value == d) return name;
  }
  return "?";
}

size_t DTypeSize(DType d) {
  switch (d) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kF64: return 8;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------
// Scalar conversions.

float F16ToFloat(uint16_t v) {
  const uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  const uint32_t exp = (v >> 10) & 0x1fu;
  const uint32_t mant = v & 0x3ffu;
  if (exp == 0) {
    float mag = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal, exact
    return sign ? -mag : mag;
  }
  if (exp == 31) return BitsFloat(sign | 0x7f800000u | (mant << 13));
  return BitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t FloatToF16(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u | ((abs >> 13) & 0x3ffu);  // NaN stays NaN
  if (abs >= 0x47800000u) return sign | 0x7c00u;                          // >= 65536 (and inf) -> inf
  const int exp = static_cast<int>(abs >> 23) - 127;
  uint32_t mant = abs & 0x7fffffu;
  if (exp >= -14) {  // normal half; a carry out of the mantissa bumps the exponent (to inf at most)
    uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  if (exp < -25) return sign;  // below half the smallest subnormal
  // Subnormal half: value / 2^-24 = (1.mant) * 2^(exp + 1).
  mant |= 0x800000u;
  const int shift = -(exp + 1);  // 14..24
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return sign | static_cast<uint16_t>(h);
}

// ---------------------------------------------------------------------------
// SafetensorsFile.

namespace {

// The header's __metadata__: an object of strings.
absl::Status ParseSafetensorsMetadata(const json& v, const std::string& path,
                                      std::map<std::string, std::string>* metadata) {
  if (!v.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": __metadata__ is not an object"));
  }
  for (auto m = v.begin(); m != v.end(); ++m) {
    if (!m.value().is_string()) {
      return absl::DataLossError(absl::StrCat(path, ": __metadata__ value \"", m.key(), "\" is not a string"));
    }
    (*metadata)[m.key()] = m.value().get<std::string>();
  }
  return absl::OkStatus();
}

// One tensor's header entry: dtype, shape and data_offsets, which must lie
// in the data section and match the shape's byte size.
absl::StatusOr<TensorInfo> ParseTensorEntry(const std::string& name, const json& v, const std::string& path,
                                            uint64_t data_size) {
  const std::string where = absl::StrCat(path, ": tensor \"", name, "\"");
  if (!v.is_object()) return absl::DataLossError(absl::StrCat(where, ": entry is not an object"));
  auto dt = v.find("dtype");
  auto sh = v.find("shape");
  auto off = v.find("data_offsets");
  if (dt == v.end() || !dt->is_string()) {
    return absl::DataLossError(absl::StrCat(where, ": missing or non-string dtype"));
  }
  TensorInfo info;
  info.name = name;
  auto dtype = DTypeFromString(dt->get<std::string>());
  if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", dtype.status().message()));
  info.dtype = *dtype;
  if (sh == v.end() || !sh->is_array()) {
    return absl::DataLossError(absl::StrCat(where, ": missing or non-array shape"));
  }
  for (const json& d : *sh) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0) {
      return absl::DataLossError(absl::StrCat(where, ": shape has a non-integer or negative dim"));
    }
    info.shape.push_back(d.get<int64_t>());
  }
  if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    return absl::DataLossError(absl::StrCat(where, ": data_offsets must be two non-negative integers"));
  }
  info.begin = (*off)[0].get<uint64_t>();
  info.end = (*off)[1].get<uint64_t>();
  if (info.begin > info.end || info.end > data_size) {
    return absl::DataLossError(absl::StrCat(where, ": data_offsets [", info.begin, ", ", info.end,
                                            "] out of range of the ", data_size, "-byte data section"));
  }
  const int64_t numel = CheckedNumel(info.shape);
  if (numel < 0 || static_cast<uint64_t>(numel) > data_size ||
      info.end - info.begin != static_cast<uint64_t>(numel) * DTypeSize(info.dtype)) {
    return absl::DataLossError(absl::StrCat(where, ": byte size ", info.end - info.begin, " != numel of shape ",
                                            ShapeString(info.shape), " * ", DTypeSize(info.dtype), " (",
                                            DTypeName(info.dtype), ")"));
  }
  return info;
}

// No two tensors may share bytes.
absl::Status CheckNoOverlap(const std::map<std::string, TensorInfo>& tensors, const std::string& path) {
  std::vector<const TensorInfo*> by_offset;
  for (const auto& [name, info] : tensors) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return absl::DataLossError(
          absl::StrCat(path, ": tensors \"", by_offset[i - 1]->name, "\" and \"", by_offset[i]->name, "\" overlap"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(e));
    if (e == ENOENT) return absl::NotFoundError(msg);
    if (e == EACCES || e == EPERM) return absl::PermissionDeniedError(msg);
    return absl::InternalError(msg);
  }
  file.fd_ = std::make_shared<const Fd>(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat(path, ": fstat failed: ", std::strerror(errno)));
  }
  file.file_size_ = static_cast<uint64_t>(st.st_size);
  if (file.file_size_ < 8) {
    return absl::DataLossError(
        absl::StrCat(path, ": file is ", file.file_size_, " bytes, too short for the 8-byte header length"));
  }
  unsigned char len_bytes[8];
  SAE_RETURN_IF_ERROR(file.PRead(len_bytes, 8, 0));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > file.file_size_ - 8) {
    return absl::DataLossError(
        absl::StrCat(path, ": header length ", header_len, " exceeds file size ", file.file_size_));
  }
  if (header_len > kMaxHeaderBytes) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_len, " exceeds the 100 MB limit"));
  }
  std::string header(header_len, '\0');
  SAE_RETURN_IF_ERROR(file.PRead(header.data(), header_len, 8));
  file.data_start_ = 8 + header_len;
  const uint64_t data_size = file.file_size_ - file.data_start_;

  json j = json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": header is not a valid JSON object"));
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      SAE_RETURN_IF_ERROR(ParseSafetensorsMetadata(it.value(), path, &file.metadata_));
      continue;
    }
    SAE_ASSIGN_OR_RETURN(TensorInfo info, ParseTensorEntry(it.key(), it.value(), path, data_size));
    file.tensors_[it.key()] = std::move(info);
  }
  SAE_RETURN_IF_ERROR(CheckNoOverlap(file.tensors_, path));
  return file;
}

absl::Status SafetensorsFile::PRead(void* dst, size_t bytes, uint64_t offset) const {
  char* p = static_cast<char*>(dst);
  while (bytes > 0) {
    ssize_t n = ::pread(fd_->fd, p, bytes, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat(path_, ": read at offset ", offset, " failed: ", std::strerror(errno)));
    }
    if (n == 0) {
      return absl::DataLossError(absl::StrCat(path_, ": truncated: unexpected end of file at offset ", offset));
    }
    p += n;
    bytes -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorInfo> SafetensorsFile::Info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor \"", name, "\""));
  }
  return it->second;
}

absl::Status SafetensorsFile::ReadRaw(const std::string& name, void* dst, size_t dst_bytes) const {
  SAE_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  const uint64_t bytes = info.end - info.begin;
  if (dst_bytes < bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor \"", name, "\": ", bytes, " bytes do not fit a ", dst_bytes, "-byte buffer"));
  }
  return PRead(dst, bytes, data_start_ + info.begin);
}

absl::Status SafetensorsFile::ReadRows(const std::string& name, int64_t row_begin, int64_t row_end, void* dst,
                                       size_t dst_bytes) const {
  SAE_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  if (info.shape.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", name, "\" is a scalar, has no rows"));
  }
  if (row_begin < 0 || row_begin > row_end || row_end > info.shape[0]) {
    return absl::OutOfRangeError(absl::StrCat(path_, ": tensor \"", name, "\": rows [", row_begin, ", ", row_end,
                                              ") outside [0, ", info.shape[0], ")"));
  }
  const uint64_t row_bytes = info.shape[0] == 0 ? 0 : (info.end - info.begin) / info.shape[0];
  const uint64_t bytes = row_bytes * static_cast<uint64_t>(row_end - row_begin);
  if (dst_bytes < bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor \"", name, "\": ", bytes, " bytes do not fit a ", dst_bytes, "-byte buffer"));
  }
  return PRead(dst, bytes, data_start_ + info.begin + row_bytes * static_cast<uint64_t>(row_begin));
}

absl::Status SafetensorsFile::ReadRowsAsFloat(const std::string& name, int64_t row_begin, int64_t row_end,
                                              float* dst) const {
  SAE_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  if (info.dtype != DType::kF32 && info.dtype != DType::kBF16 && info.dtype != DType::kF16 &&
      info.dtype != DType::kF64) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": tensor \"", name, "\" has dtype ", DTypeName(info.dtype), ", not a float type"));
  }
  if (info.shape.empty() || row_begin < 0 || row_begin > row_end || row_end > info.shape[0]) {
    return ReadRows(name, row_begin, row_end, nullptr, 0);  // produces the range error
  }
  const int64_t row_numel = info.shape[0] == 0 ? 0 : info.numel() / info.shape[0];
  const int64_t n = row_numel * (row_end - row_begin);
  const size_t bytes = static_cast<size_t>(n) * DTypeSize(info.dtype);
  if (info.dtype == DType::kF32) return ReadRows(name, row_begin, row_end, dst, bytes);
  std::vector<char> raw(bytes);
  SAE_RETURN_IF_ERROR(ReadRows(name, row_begin, row_end, raw.data(), bytes));
  ConvertToFloat(info.dtype, raw.data(), n, dst);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadFloat(const std::string& name) const {
  SAE_ASSIGN_OR_RETURN(TensorInfo info, Info(name));
  std::vector<float> out(static_cast<size_t>(info.numel()));
  if (info.shape.empty()) {  // a scalar: read it as one row
    if (info.dtype != DType::kF32 && info.dtype != DType::kBF16 && info.dtype != DType::kF16 &&
        info.dtype != DType::kF64) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": tensor \"", name, "\" has dtype ", DTypeName(info.dtype), ", not a float type"));
    }
    std::vector<char> raw(info.end - info.begin);
    SAE_RETURN_IF_ERROR(ReadRaw(name, raw.data(), raw.size()));
    ConvertToFloat(info.dtype, raw.data(), 1, out.data());
    return out;
  }
  SAE_RETURN_IF_ERROR(ReadRowsAsFloat(name, 0, info.shape[0], out.data()));
  return out;
}

// ---------------------------------------------------------------------------
// SafetensorsWriter.

void SafetensorsWriter::SetMetadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

absl::Status SafetensorsWriter::Add(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                    const void* bytes) {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(absl::StrCat("invalid tensor name \"", name, "\""));
  }
  const int64_t numel = CheckedNumel(shape);
  if (numel < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": invalid shape ", ShapeString(shape)));
  }
  Entry e;
  e.dtype = dtype;
  e.shape = std::move(shape);
  const size_t size = static_cast<size_t>(numel) * DTypeSize(dtype);
  if (size > 0 && bytes == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": null data"));
  }
  e.bytes.assign(static_cast<const char*>(bytes), size);
  entries_[name] = std::move(e);
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddFloat(const std::string& name, DType dtype, std::vector<int64_t> shape,
                                         const float* data) {
  const int64_t numel = CheckedNumel(shape);
  if (numel < 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": invalid shape ", ShapeString(shape)));
  }
  switch (dtype) {
    case DType::kF32: return Add(name, dtype, std::move(shape), data);
    case DType::kBF16:
    case DType::kF16: {
      std::vector<uint16_t> half(static_cast<size_t>(numel));
      for (int64_t i = 0; i < numel; ++i) {
        half[i] = dtype == DType::kBF16 ? FloatToBF16(data[i]) : FloatToF16(data[i]);
      }
      return Add(name, dtype, std::move(shape), half.data());
    }
    case DType::kF64: {
      std::vector<double> wide(data, data + numel);
      return Add(name, dtype, std::move(shape), wide.data());
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\": AddFloat cannot store dtype ", DTypeName(dtype)));
  }
}

absl::Status SafetensorsWriter::Write(const std::string& path) const {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, e] : entries_) {  // std::map: name order
    const uint64_t end = offset + e.bytes.size();
    header[name] = {{"dtype", DTypeName(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len_bytes[8];
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(len >> (8 * i));

  std::random_device rd;
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", rd());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat(tmp, ": cannot create: ", std::strerror(errno)));
  }
  absl::Status s = WriteAll(fd, len_bytes, 8, tmp);
  if (s.ok()) s = WriteAll(fd, text.data(), text.size(), tmp);
  for (const auto& [name, e] : entries_) {
    if (s.ok()) s = WriteAll(fd, e.bytes.data(), e.bytes.size(), tmp);
  }
  if (s.ok() && ::fsync(fd) != 0) {
    s = absl::InternalError(absl::StrCat(tmp, ": fsync failed: ", std::strerror(errno)));
  }
  if (::close(fd) != 0 && s.ok()) {
    s = absl::InternalError(absl::StrCat(tmp, ": close failed: ", std::strerror(errno)));
  }
  if (s.ok()) s = DurableRename(tmp, path);
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

}  // namespace sae
