#include "common/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "common/error.h"

namespace rankprune {
namespace fs = std::filesystem;

namespace {
std::string unique_suffix() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^ static_cast<uint64_t>(::getpid()));
  std::ostringstream os;
  os << ".tmp." << ::getpid() << "." << std::hex << rng();
  return os.str();
}
}  // namespace

std::string read_file(const std::string& path) {
  // A regular file is read into a string of its size (one copy of the bytes in memory; a
  // stringstream would peak at ~3x while growing); anything else (a pipe, /dev/stdin) streams.
  {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    RP_CHECK_INPUT(fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
      std::string out(static_cast<std::size_t>(st.st_size), '\0');
      std::size_t got = 0;
      while (got < out.size()) {
        const ssize_t n = ::read(fd, out.data() + got, out.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
          const int err = errno;
          ::close(fd);
          throw InputError(cat("error reading '", path, "': ", std::strerror(err)));
        }
        if (n == 0) break;  // the file shrank while being read
        got += static_cast<std::size_t>(n);
      }
      out.resize(got);
      // A file that grew meanwhile: take the rest too.
      char buf[65536];
      for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
      ::close(fd);
      return out;
    }
    ::close(fd);
  }
  std::ifstream in(path, std::ios::binary);
  RP_CHECK_INPUT(in.good(), "cannot open '", path, "': ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  RP_CHECK_INPUT(!in.bad(), "error reading '", path, "'");
  return ss.str();
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

std::string path_join(const std::string& a, const std::string& b) {
  return (fs::path(a) / b).string();
}

std::string parent_dir(const std::string& path) {
  auto p = fs::path(path).parent_path();
  return p.empty() ? std::string(".") : p.string();
}

std::string lower_extension(const std::string& path) {
  std::string e = fs::path(path).extension().string();
  for (auto& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return e;
}

void write_file_atomic(const std::string& path, const std::string& data) {
  AtomicFile f(path);
  f.write(data);
  f.commit();
}

AtomicFile::AtomicFile(const std::string& path) : path_(path), tmp_(path + unique_suffix()) {
  f_ = std::fopen(tmp_.c_str(), "wb");
  RP_CHECK_INPUT(f_ != nullptr, "cannot create '", tmp_, "' (for '", path_, "'): ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) std::remove(tmp_.c_str());
}

// Write errors name the file the user asked for and the reason; the temporary file is removed
// by the destructor the exception runs, so the message says so.
void AtomicFile::write(const void* data, std::size_t n) {
  RP_ASSERT(f_ != nullptr && !committed_);
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n) {
    const int err = errno;
    throw InputError(cat("writing '", path_, "' failed: ", std::strerror(err), " (nothing was written to '", path_,
                         "'; its temporary file is removed)"));
  }
}

void AtomicFile::commit() {
  RP_ASSERT(f_ != nullptr && !committed_);
  // The first failure's errno is the reason (a later call may overwrite errno).
  int err = 0;
  const char* step = nullptr;
  if (std::fflush(f_) != 0) err = errno, step = "writing";
  else if (::fsync(::fileno(f_)) != 0) err = errno, step = "syncing";
  if (std::fclose(f_) != 0 && err == 0) err = errno, step = "closing";
  f_ = nullptr;
  if (step)
    throw InputError(cat(step, " '", path_, "' failed: ", std::strerror(err), " (nothing was written to '", path_,
                         "'; its temporary file is removed)"));
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
    err = errno;
    throw InputError(cat("renaming '", tmp_, "' to '", path_, "' failed: ", std::strerror(err)));
  }
  committed_ = true;
}

AtomicDir::AtomicDir(const std::string& final_dir) : final_(final_dir) {
  std::string clean = fs::path(final_dir).lexically_normal().string();
  while (clean.size() > 1 && clean.back() == '/') clean.pop_back();
  final_ = clean;
  tmp_ = clean + unique_suffix();
  std::error_code ec;
  fs::create_directories(tmp_, ec);
  RP_CHECK_INPUT(!ec, "cannot create directory '", tmp_, "' (for '", final_, "'): ", ec.message());
}

AtomicDir::~AtomicDir() {
  if (!committed_) remove_tree(tmp_);
}

void AtomicDir::commit() {
  RP_ASSERT(!committed_);
  std::error_code ec;
  if (fs::exists(final_, ec)) {
    RP_CHECK_INPUT(fs::is_directory(final_, ec) && fs::is_empty(final_, ec), "output directory '", final_,
                   "' already exists and is not empty; choose another --out or remove it");
    fs::remove(final_, ec);
  }
  fs::rename(tmp_, final_, ec);
  RP_CHECK_INPUT(!ec, "renaming '", tmp_, "' to '", final_, "' failed: ", ec.message());
  committed_ = true;
}

void remove_tree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

}  // namespace rankprune
