#include "core/data/shard_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_join.h"
#include "core/base/file_util.h"

namespace sae {

absl::StatusOr<ShardWriter> ShardWriter::Create(const std::string& dir, ShardWriterOptions opts) {
  if (opts.d_in <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("shard writer ", dir, ": d_in must be positive, got ", opts.d_in));
  }
  if (opts.rows_per_shard <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard writer ", dir, ": rows_per_shard must be positive, got ", opts.rows_per_shard));
  }
  if (opts.dtype != DType::kF32 && opts.dtype != DType::kBF16 && opts.dtype != DType::kF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard writer ", dir, ": dtype ", DTypeName(opts.dtype), " is not F32, BF16 or F16"));
  }
  const std::string manifest_path = JoinPath(dir, "manifest.json");
  if (PathExists(manifest_path)) {
    return absl::AlreadyExistsError(
        absl::StrCat(manifest_path, ": already exists; refusing to overwrite a finished shard directory"));
  }
  SAE_RETURN_IF_ERROR(MakeDirs(dir));
  ShardWriter w;
  w.dir_ = dir;
  w.opts_ = opts;
  w.manifest_.d_in = opts.d_in;
  w.manifest_.dtype = opts.dtype;
  w.manifest_.source = opts.source;
  return w;
}

absl::Status ShardWriter::Append(const float* rows, int64_t n, const int32_t* tokens) {
  if (finished_) return absl::FailedPreconditionError(absl::StrCat("shard writer ", dir_, ": already finished"));
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("shard writer ", dir_, ": negative row count"));
  if (n == 0) return absl::OkStatus();
  const int64_t buffered = static_cast<int64_t>(buf_.size()) / opts_.d_in;
  if (manifest_.rows == 0 && buffered == 0) {
    has_tokens_ = tokens != nullptr;
  } else if (has_tokens_ != (tokens != nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard writer ", dir_, ": tokens must be given with every Append or with none"));
  }
  const int64_t d = opts_.d_in;
  int64_t done = 0;
  while (done < n) {
    const int64_t have = static_cast<int64_t>(buf_.size()) / d;
    const int64_t take = std::min(n - done, opts_.rows_per_shard - have);
    buf_.insert(buf_.end(), rows + done * d, rows + (done + take) * d);
    if (has_tokens_) tok_buf_.insert(tok_buf_.end(), tokens + done, tokens + done + take);
    done += take;
    if (have + take == opts_.rows_per_shard) SAE_RETURN_IF_ERROR(Flush());
  }
  return absl::OkStatus();
}

absl::Status ShardWriter::Flush() {
  const int64_t n = static_cast<int64_t>(buf_.size()) / opts_.d_in;
  if (n == 0) return absl::OkStatus();
  char name[64];
  std::snprintf(name, sizeof(name), "shard-%05zu.safetensors", manifest_.shards.size());
  const std::string path = JoinPath(dir_, name);
  SafetensorsWriter w;
  SAE_RETURN_IF_ERROR(w.AddFloat("activations", opts_.dtype, {n, opts_.d_in}, buf_.data()));
  if (has_tokens_) SAE_RETURN_IF_ERROR(w.Add("tokens", DType::kI32, {n}, tok_buf_.data()));
  SAE_RETURN_IF_ERROR(Annotate(w.Write(path), absl::StrCat("writing shard ", path)));
  SAE_ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
  manifest_.shards.push_back(ShardEntry{name, n, sha});
  manifest_.rows += n;
  buf_.clear();
  tok_buf_.clear();
  return absl::OkStatus();
}

absl::StatusOr<Manifest> ShardWriter::Finish() {
  if (finished_) return absl::FailedPreconditionError(absl::StrCat("shard writer ", dir_, ": already finished"));
  SAE_RETURN_IF_ERROR(Flush());
  SAE_RETURN_IF_ERROR(SaveManifest(dir_, manifest_));
  finished_ = true;
  return manifest_;
}

// ---------------------------------------------------------------------------
// .npy import.

namespace {

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;
};

// Parses the Python dict literal of a .npy header, e.g.
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class NpyDictParser {
 public:
  NpyDictParser(const std::string& text, const std::string& where) : s_(text), where_(where) {}

  absl::Status Parse(NpyHeader* h) {
    bool have_descr = false, have_order = false, have_shape = false;
    Skip();
    if (!Eat('{')) return Error("header is not a dict");
    while (true) {
      Skip();
      if (Eat('}')) break;
      std::string key;
      SAE_RETURN_IF_ERROR(String(&key));
      Skip();
      if (!Eat(':')) return Error(absl::StrCat("expected ':' after '", key, "'"));
      Skip();
      if (key == "descr") {
        SAE_RETURN_IF_ERROR(String(&h->descr));
        have_descr = true;
      } else if (key == "fortran_order") {
        if (s_.compare(i_, 4, "True") == 0) {
          h->fortran_order = true;
          i_ += 4;
        } else if (s_.compare(i_, 5, "False") == 0) {
          h->fortran_order = false;
          i_ += 5;
        } else {
          return Error("field 'fortran_order' is not True or False");
        }
        have_order = true;
      } else if (key == "shape") {
        SAE_RETURN_IF_ERROR(Tuple(&h->shape));
        have_shape = true;
      } else {
        return Error(absl::StrCat("unexpected field '", key, "'"));
      }
      Skip();
      if (Eat(',')) continue;
      Skip();
      if (Eat('}')) break;
      return Error("expected ',' or '}'");
    }
    if (!have_descr) return Error("missing field 'descr'");
    if (!have_order) return Error("missing field 'fortran_order'");
    if (!have_shape) return Error("missing field 'shape'");
    return absl::OkStatus();
  }

 private:
  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, ": .npy header: ", what));
  }
  void Skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool Eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  absl::Status String(std::string* out) {
    if (i_ >= s_.size() || (s_[i_] != '\'' && s_[i_] != '"')) return Error("expected a string");
    const char q = s_[i_++];
    size_t end = s_.find(q, i_);
    if (end == std::string::npos) return Error("unterminated string");
    *out = s_.substr(i_, end - i_);
    i_ = end + 1;
    return absl::OkStatus();
  }
  absl::Status Tuple(std::vector<int64_t>* out) {
    if (!Eat('(')) return Error("field 'shape' is not a tuple");
    while (true) {
      Skip();
      if (Eat(')')) return absl::OkStatus();
      if (i_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[i_]))) {
        return Error("field 'shape' has a non-integer dimension");
      }
      int64_t v = 0;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) {
        if (v > (int64_t{1} << 50)) return Error("field 'shape' has a dimension too large");
        v = v * 10 + (s_[i_++] - '0');
      }
      if (i_ < s_.size() && s_[i_] == 'L') ++i_;  // Python 2 longs
      out->push_back(v);
      Skip();
      if (Eat(',')) continue;
      Skip();
      if (Eat(')')) return absl::OkStatus();
      return Error("field 'shape' is malformed");
    }
  }

  const std::string& s_;
  const std::string& where_;
  size_t i_ = 0;
};

absl::Status ReadAt(int fd, void* dst, size_t n, uint64_t off, const std::string& path) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat(path, ": read failed: ", std::strerror(errno)));
    }
    if (r == 0) return absl::DataLossError(absl::StrCat(path, ": truncated at offset ", off));
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads the .npy preamble and header dictionary (versions 1 to 3).
absl::StatusOr<NpyHeader> ReadNpyHeader(int fd, uint64_t file_size, const std::string& npy_path) {
  unsigned char pre[12];
  if (file_size < 10) return absl::InvalidArgumentError(absl::StrCat(npy_path, ": too short for a .npy file"));
  SAE_RETURN_IF_ERROR(ReadAt(fd, pre, 10, 0, npy_path));
  if (std::memcmp(pre, "\x93NUMPY", 6) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(npy_path, ": not a .npy file (bad magic)"));
  }
  const int major = pre[6];
  uint64_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = pre[8] | (static_cast<uint64_t>(pre[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (file_size < 12) return absl::InvalidArgumentError(absl::StrCat(npy_path, ": truncated .npy preamble"));
    SAE_RETURN_IF_ERROR(ReadAt(fd, pre, 12, 0, npy_path));
    header_len = pre[8] | (static_cast<uint64_t>(pre[9]) << 8) | (static_cast<uint64_t>(pre[10]) << 16) |
                 (static_cast<uint64_t>(pre[11]) << 24);
    header_start = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(npy_path, ": unsupported .npy version ", major));
  }
  if (header_start + header_len > file_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(npy_path, ": .npy header length ", header_len, " exceeds file size ", file_size));
  }
  std::string text(header_len, '\0');
  SAE_RETURN_IF_ERROR(ReadAt(fd, text.data(), header_len, header_start, npy_path));
  NpyHeader h;
  h.data_offset = header_start + header_len;
  SAE_RETURN_IF_ERROR(NpyDictParser(text, npy_path).Parse(&h));
  return h;
}

// The element type of a .npy array; only little-endian floats are read.
absl::StatusOr<DType> NpyElementType(const NpyHeader& h, const std::string& npy_path) {
  if (h.descr == "<f4") return DType::kF32;
  if (h.descr == "<f2") return DType::kF16;
  if (h.descr == "<f8") return DType::kF64;
  if (!h.descr.empty() && h.descr[0] == '>') {
    return absl::InvalidArgumentError(
        absl::StrCat(npy_path, ": field 'descr' is '", h.descr, "': big-endian data is not supported"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(npy_path, ": field 'descr' is '", h.descr, "'; supported: '<f4', '<f2', '<f8'"));
}

// Widens `numel` stored values (F32, F16 or F64) to float32.
void NpyToFloat(const char* raw, DType src_dtype, int64_t numel, float* f) {
  if (src_dtype == DType::kF32) {
    std::memcpy(f, raw, static_cast<size_t>(numel) * 4);
  } else if (src_dtype == DType::kF16) {
    for (int64_t i = 0; i < numel; ++i) {
      uint16_t v;
      std::memcpy(&v, raw + 2 * i, 2);
      f[i] = F16ToFloat(v);
    }
  } else {
    for (int64_t i = 0; i < numel; ++i) {
      double v;
      std::memcpy(&v, raw + 8 * i, 8);
      f[i] = static_cast<float>(v);
    }
  }
}

}  // namespace

absl::StatusOr<Manifest> ImportNpy(const std::string& npy_path, const std::string& out_dir, DType dtype,
                                   int64_t rows_per_shard) {
  int fd = ::open(npy_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    std::string msg = absl::StrCat(npy_path, ": cannot open: ", std::strerror(errno));
    return errno == ENOENT ? absl::NotFoundError(msg) : absl::InternalError(msg);
  }
  FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::InternalError(absl::StrCat(npy_path, ": fstat failed"));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  SAE_ASSIGN_OR_RETURN(NpyHeader h, ReadNpyHeader(fd, file_size, npy_path));
  SAE_ASSIGN_OR_RETURN(DType src_dtype, NpyElementType(h, npy_path));
  const size_t item = DTypeSize(src_dtype);
  if (h.fortran_order) {
    return absl::InvalidArgumentError(
        absl::StrCat(npy_path, ": field 'fortran_order' is True; only C-order arrays are supported"));
  }
  if (h.shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(npy_path, ": field 'shape' is (", absl::StrJoin(h.shape, ", "), "), expected 2-D (rows, d_in)"));
  }
  const int64_t rows = h.shape[0], d_in = h.shape[1];
  if (d_in <= 0) return absl::InvalidArgumentError(absl::StrCat(npy_path, ": field 'shape' has d_in 0"));
  const uint64_t need = static_cast<uint64_t>(rows) * static_cast<uint64_t>(d_in) * item;
  if (file_size - h.data_offset < need) {
    return absl::DataLossError(absl::StrCat(npy_path, ": truncated: shape (", rows, ", ", d_in, ") needs ", need,
                                            " data bytes, file has ", file_size - h.data_offset));
  }

  ShardWriterOptions opts;
  opts.d_in = d_in;
  opts.dtype = dtype;
  opts.rows_per_shard = rows_per_shard;
  opts.source.corpus = npy_path;
  opts.source.tokens = rows;
  SAE_ASSIGN_OR_RETURN(ShardWriter writer, ShardWriter::Create(out_dir, opts));
  // Convert in chunks of about 16 MB of floats so memory stays bounded.
  const int64_t chunk = std::max<int64_t>(1, (int64_t{4} << 20) / d_in);
  std::vector<char> raw;
  std::vector<float> f;
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t n = std::min(chunk, rows - r);
    const int64_t numel = n * d_in;
    raw.resize(static_cast<size_t>(numel) * item);
    f.resize(static_cast<size_t>(numel));
    SAE_RETURN_IF_ERROR(
        ReadAt(fd, raw.data(), raw.size(), h.data_offset + static_cast<uint64_t>(r) * d_in * item, npy_path));
    NpyToFloat(raw.data(), src_dtype, numel, f.data());
    SAE_RETURN_IF_ERROR(writer.Append(f.data(), n));
  }
  return writer.Finish();
}

}  // namespace sae
