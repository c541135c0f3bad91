// LD_PRELOAD shim for the write-fault matrix (tests/cli/test_write_faults.cpp,
// docs/reliability.md): counts the write operations a process makes on regular files opened for
// writing and fails the Nth one with a chosen errno, as a full disk or a failing device would.
//
//   RP_FAULT_AT=N        fail the Nth counted operation (1-based); 0 or unset: fail none
//   RP_FAULT_ERRNO=E     ENOSPC (default), EIO, EFBIG, EDQUOT or a number
//   RP_FAULT_LOG=FILE    append "N op path" for every counted operation (the write points)
//
// Counted: write, pwrite, pwrite64, writev, fsync, fdatasync (file descriptors: SQLite and
// libstdc++ streams), and fwrite, fflush, fclose (stdio: AtomicFile). glibc's stdio reaches the
// kernel through internal calls no shim sees, so stdio is failed at its own entry points. Only
// descriptors > 2 of regular files not opened read-only count; the log is written with raw
// syscalls and never counts itself.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

std::atomic<long> g_count{0};
long g_fail_at = -1;  // -1: not yet read from the environment
int g_errno = ENOSPC;
int g_log = -1;

void init() {
  if (g_fail_at >= 0) return;
  const char* at = std::getenv("RP_FAULT_AT");
  long n = at ? std::atol(at) : 0;
  const char* e = std::getenv("RP_FAULT_ERRNO");
  if (e && *e) {
    if (!std::strcmp(e, "ENOSPC")) g_errno = ENOSPC;
    else if (!std::strcmp(e, "EIO")) g_errno = EIO;
    else if (!std::strcmp(e, "EFBIG")) g_errno = EFBIG;
    else if (!std::strcmp(e, "EDQUOT")) g_errno = EDQUOT;
    else g_errno = std::atoi(e);
  }
  if (const char* log = std::getenv("RP_FAULT_LOG"); log && *log)
    g_log = static_cast<int>(syscall(SYS_open, log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  g_fail_at = n;
}

// Whether `fd` is one we count: a regular file, not stdin/out/err, not opened read-only.
bool counted(int fd) {
  if (fd <= 2 || fd == g_log) return false;
  struct stat st;
  if (syscall(SYS_fstat, fd, &st) != 0 || !S_ISREG(st.st_mode)) return false;
  const long fl = syscall(SYS_fcntl, fd, F_GETFL);
  return fl >= 0 && (fl & O_ACCMODE) != O_RDONLY;
}

// Counts one operation on `fd`; true when this one must fail (errno is then set).
bool fault(int fd, const char* op) {
  init();
  if (!counted(fd)) return false;
  const long n = ++g_count;
  if (g_log >= 0) {
    char path[512] = "?", proc[64], line[700];
    std::snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    const long len = syscall(SYS_readlink, proc, path, sizeof path - 1);
    if (len > 0) path[len] = '\0';
    const int k = std::snprintf(line, sizeof line, "%ld %s %s\n", n, op, path);
    if (k > 0) syscall(SYS_write, g_log, line, static_cast<size_t>(k));
  }
  if (n != g_fail_at) return false;
  errno = g_errno;
  return true;
}

template <typename F>
F real(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

ssize_t write(int fd, const void* buf, size_t n) {
  static auto f = real<ssize_t (*)(int, const void*, size_t)>("write");
  if (fault(fd, "write")) return -1;
  return f(fd, buf, n);
}

ssize_t pwrite(int fd, const void* buf, size_t n, off_t off) {
  static auto f = real<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  if (fault(fd, "pwrite")) return -1;
  return f(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void* buf, size_t n, off64_t off) {
  static auto f = real<ssize_t (*)(int, const void*, size_t, off64_t)>("pwrite64");
  if (fault(fd, "pwrite")) return -1;
  return f(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec* iov, int cnt) {
  static auto f = real<ssize_t (*)(int, const struct iovec*, int)>("writev");
  if (fault(fd, "writev")) return -1;
  return f(fd, iov, cnt);
}

int fsync(int fd) {
  static auto f = real<int (*)(int)>("fsync");
  if (fault(fd, "fsync")) return -1;
  return f(fd);
}

int fdatasync(int fd) {
  static auto f = real<int (*)(int)>("fdatasync");
  if (fault(fd, "fdatasync")) return -1;
  return f(fd);
}

size_t fwrite(const void* p, size_t size, size_t n, FILE* s) {
  static auto f = real<size_t (*)(const void*, size_t, size_t, FILE*)>("fwrite");
  if (s && fault(fileno(s), "fwrite")) return 0;
  return f(p, size, n, s);
}

int fflush(FILE* s) {
  static auto f = real<int (*)(FILE*)>("fflush");
  if (s && fault(fileno(s), "fflush")) return EOF;
  return f(s);
}

int fclose(FILE* s) {
  static auto f = real<int (*)(FILE*)>("fclose");
  if (s && fault(fileno(s), "fclose")) {
    const int e = errno;
    f(s);  // the stream is gone either way, as after a real failed close
    errno = e;
    return EOF;
  }
  return f(s);
}

}  // extern "C"
