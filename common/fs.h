// Filesystem helpers: whole-file reads and crash-safe writes.
// Every output of rankprune goes through AtomicFile or write_file_atomic: the bytes land in a
// temporary file beside the target (same filesystem), are fsync'ed, then renamed over the target.
// A crash or error leaves either the old file or no file, never a half-written one.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace rankprune {

std::string read_file(const std::string& path);  // InputError naming the path when unreadable
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);
std::string parent_dir(const std::string& path);
// The extension with its dot, lower-cased ("a/B.NPY" -> ".npy"; "" when there is none).
std::string lower_extension(const std::string& path);

// Writes `data` to `path` atomically (temp file + fsync + rename).
void write_file_atomic(const std::string& path, const std::string& data);

// Streaming atomic writer: write() pieces, then commit(). Destruction without commit() removes
// the temporary file and leaves `path` untouched.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  void commit();
  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
  bool committed_ = false;
};

// A temporary directory beside `final_dir`; commit() renames it to final_dir (which must not
// exist or be an empty directory). Without commit() the directory and its contents are removed.
class AtomicDir {
 public:
  explicit AtomicDir(const std::string& final_dir);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::string& path() const { return tmp_; }
  void commit();

 private:
  std::string final_, tmp_;
  bool committed_ = false;
};

void remove_tree(const std::string& path);

}  // namespace rankprune
