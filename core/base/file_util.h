// File helpers with errors as values. Stateless; thread-safe.
#pragma once

#include <string>

#include "core/base/status.h"

namespace sae {

// Reads a whole file. NotFound if it does not exist, InvalidArgument if it
// is a directory or not a regular file (never throws).
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// OK when `path` is an existing regular file; otherwise the error
// ReadFileToString would give. For readers that stream a file themselves.
absl::Status CheckRegularFile(const std::string& path);

// Writes `contents` to `path` atomically: a temporary file in the same
// directory, fsync, rename over `path`, fsync of the directory. A reader sees
// the old file or the new one, never a torn one.
absl::Status AtomicWriteFile(const std::string& path, const std::string& contents);

// Renames `from` to `to` and fsyncs the parent directory.
absl::Status DurableRename(const std::string& from, const std::string& to);

// Creates a directory and its parents (like mkdir -p).
absl::Status MakeDirs(const std::string& path);

// Removes a file or directory tree; missing paths are fine.
absl::Status RemoveAll(const std::string& path);

bool PathExists(const std::string& path);

// `dir`/`file` with one slash between them; `file` alone when `dir` is empty.
std::string JoinPath(const std::string& dir, const std::string& file);

// Lowercase hex SHA-256 of a file's bytes (streamed) or of a buffer.
absl::StatusOr<std::string> Sha256File(const std::string& path);
std::string Sha256Hex(const void* data, size_t size);

}  // namespace sae
