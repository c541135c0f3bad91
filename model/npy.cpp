#include "model/npy.h"

#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "common/error.h"
#include "common/fs.h"

// .npy data is written and read as raw memory; the descr strings below say little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "rankprune assumes a little-endian host");

namespace rankprune {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;
constexpr std::size_t kAlign = 64;           // NumPy's ARRAY_ALIGN
constexpr std::size_t kGrowthDigits = 21;    // NumPy's GROWTH_AXIS_MAX_DIGITS

struct NpyType {
  torch::ScalarType type;
  char kind;  // NumPy kind letter: f, i, u, b
  std::size_t size;
};

constexpr NpyType kTypes[] = {
    {torch::kFloat, 'f', 4}, {torch::kDouble, 'f', 8}, {torch::kHalf, 'f', 2}, {torch::kInt, 'i', 4},
    {torch::kLong, 'i', 8},  {torch::kByte, 'u', 1},   {torch::kBool, 'b', 1},
};

std::string descr_of(torch::ScalarType t, const std::string& path) {
  for (const auto& r : kTypes) {
    if (r.type == t) {
      // NumPy marks single-byte types as byte-order-free ('|'), wider ones little-endian ('<').
      return cat(r.size == 1 ? '|' : '<', r.kind, r.size);
    }
  }
  throw InputError(cat("writing '", path, "': dtype ", c10::toString(t),
                       " cannot be written as .npy (supported: float32 float64 float16 int32 int64 uint8 bool)"));
}

// The header NumPy itself writes for the same array, byte for byte: a Python dict literal
// with sorted keys, spare spaces after it so the shape can grow in place, then padding so the
// data starts at a multiple of 64 bytes, ending in '\n'.
std::string npy_header(const std::string& descr, const std::vector<int64_t>& shape) {
  std::string shape_repr = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) shape_repr += ", ";
    shape_repr += std::to_string(shape[i]);
  }
  if (shape.size() == 1) shape_repr += ",";  // Python's one-element tuple
  shape_repr += ")";
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_repr + ", }";
  if (!shape.empty()) dict.append(kGrowthDigits - std::to_string(shape[0]).size(), ' ');

  auto wrap = [&](int major) {
    const std::size_t prefix = kMagicLen + 2 + (major == 1 ? 2 : 4);
    const std::size_t hlen = dict.size() + 1;  // + '\n'
    // As NumPy: a header that is already aligned still gets a full block of padding.
    const std::size_t pad = kAlign - (prefix + hlen) % kAlign;
    std::string body = dict;
    body.append(pad, ' ');
    body.push_back('\n');
    std::string out(kMagic, kMagicLen);
    out.push_back(static_cast<char>(major));
    out.push_back('\0');
    const std::size_t n = body.size();
    const int len_bytes = major == 1 ? 2 : 4;
    for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
    return std::make_pair(out + body, n);
  };
  auto v1 = wrap(1);
  if (v1.second <= 0xffff) return v1.first;
  return wrap(2).first;  // header length does not fit format 1.0's 16-bit field
}

// --- a tiny parser for the Python dict literal of the header ------------------------------------

struct PyValue {
  enum Kind { kString, kBool, kTuple } kind;
  std::string str;
  bool flag = false;
  std::vector<int64_t> ints;
};

class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  std::vector<std::pair<std::string, PyValue>> parse_dict() {
    std::vector<std::pair<std::string, PyValue>> out;
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      std::string key = parse_string();
      expect(':');
      out.emplace_back(std::move(key), parse_value());
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      break;
    }
    expect('}');
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the header dict");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError(cat("npy file '", path_, "': malformed header (", what, " at byte ", pos_, "): ", s_));
  }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void expect(char c) {
    skip_ws();
    if (peek() != c) fail(cat("expected '", c, "'"));
    ++pos_;
  }
  std::string parse_string() {
    skip_ws();
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    const std::size_t end = s_.find(q, pos_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string v = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return v;
  }
  PyValue parse_value() {
    skip_ws();
    PyValue v;
    const char c = peek();
    if (c == '\'' || c == '"') {
      v.kind = PyValue::kString;
      v.str = parse_string();
    } else if (s_.compare(pos_, 4, "True") == 0) {
      v.kind = PyValue::kBool;
      v.flag = true;
      pos_ += 4;
    } else if (s_.compare(pos_, 5, "False") == 0) {
      v.kind = PyValue::kBool;
      pos_ += 5;
    } else if (c == '(') {
      v.kind = PyValue::kTuple;
      ++pos_;
      while (true) {
        skip_ws();
        if (peek() == ')') break;
        v.ints.push_back(parse_int());
        skip_ws();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() != ')') fail("expected ',' or ')' in shape");
      }
      ++pos_;
    } else {
      fail("expected a string, True, False or a tuple");
    }
    return v;
  }
  int64_t parse_int() {
    skip_ws();
    if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("expected a non-negative integer");
    uint64_t v = 0;
    while (std::isdigit(static_cast<unsigned char>(peek()))) {
      if (v > (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - 9) / 10) fail("integer too large");
      v = v * 10 + static_cast<uint64_t>(s_[pos_++] - '0');
    }
    if (peek() == 'L') ++pos_;  // Python 2 long suffix, found in old files
    return static_cast<int64_t>(v);
  }

  const std::string& s_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

std::optional<torch::ScalarType> type_of_descr(const std::string& d) {
  if (d.size() < 3) return std::nullopt;
  const char order = d[0];
  const std::string rest = d.substr(1);
  for (const auto& r : kTypes) {
    if (rest != cat(r.kind, r.size)) continue;
    // Byte order is meaningless for one-byte types, so any marker is accepted there.
    if (r.size == 1 ? (order == '|' || order == '<' || order == '>' || order == '=') : (order == '<' || order == '='))
      return r.type;
  }
  return std::nullopt;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

void write_npy(const std::string& path, const torch::Tensor& t) {
  RP_CHECK_INPUT(t.defined(), "writing '", path, "': tensor is undefined");
  const std::string descr = descr_of(t.scalar_type(), path);
  const torch::Tensor c = t.to(torch::kCPU).contiguous();
  const std::string header = npy_header(descr, c.sizes().vec());
  AtomicFile f(path);
  f.write(header);
  f.write(c.data_ptr(), static_cast<std::size_t>(c.numel()) * c.element_size());
  f.commit();
}

torch::Tensor read_npy(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  RP_CHECK_INPUT(f != nullptr, "cannot open npy file '", path, "': ", std::strerror(errno));
  struct stat st;
  RP_CHECK_INPUT(::fstat(::fileno(f.get()), &st) == 0 && S_ISREG(st.st_mode), "npy file '", path,
                 "' is not a readable regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  unsigned char pre[8];
  RP_CHECK_INPUT(file_size >= 10 && std::fread(pre, 1, 8, f.get()) == 8 && std::memcmp(pre, kMagic, kMagicLen) == 0,
                 "npy file '", path, "' does not start with the .npy magic \"\\x93NUMPY\" (not a .npy file)");
  const int major = pre[6], minor = pre[7];
  RP_CHECK_INPUT((major == 1 || major == 2 || major == 3) && minor == 0, "npy file '", path,
                 "': unsupported format version ", major, ".", minor, " (expected 1.0, 2.0 or 3.0)");
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  unsigned char len_buf[4] = {0, 0, 0, 0};
  RP_CHECK_INPUT(std::fread(len_buf, 1, len_bytes, f.get()) == len_bytes, "npy file '", path,
                 "' is truncated inside its header length");
  uint64_t hlen = 0;
  for (std::size_t i = 0; i < len_bytes; ++i) hlen |= static_cast<uint64_t>(len_buf[i]) << (8 * i);
  const uint64_t prefix = kMagicLen + 2 + len_bytes;
  RP_CHECK_INPUT(hlen <= file_size - prefix, "npy file '", path, "': header length ", hlen,
                 " extends past the end of the file (", file_size, " bytes)");
  std::string header(hlen, '\0');
  RP_CHECK_INPUT(std::fread(header.data(), 1, hlen, f.get()) == hlen, "npy file '", path, "': cannot read header");

  std::optional<std::string> descr;
  std::optional<bool> fortran;
  std::optional<std::vector<int64_t>> shape;
  std::set<std::string> seen;
  for (auto& [key, value] : HeaderParser(header, path).parse_dict()) {
    RP_CHECK_INPUT(seen.insert(key).second, "npy file '", path, "': header repeats key '", key, "'");
    if (key == "descr") {
      RP_CHECK_INPUT(value.kind == PyValue::kString, "npy file '", path,
                     "': 'descr' must be a dtype string such as '<f4' (structured dtypes are not supported)");
      descr = value.str;
    } else if (key == "fortran_order") {
      RP_CHECK_INPUT(value.kind == PyValue::kBool, "npy file '", path, "': 'fortran_order' must be True or False");
      fortran = value.flag;
    } else if (key == "shape") {
      RP_CHECK_INPUT(value.kind == PyValue::kTuple, "npy file '", path, "': 'shape' must be a tuple of integers");
      shape = value.ints;
    } else {
      throw InputError(cat("npy file '", path, "': unexpected header key '", key,
                           "' (expected exactly descr, fortran_order, shape)"));
    }
  }
  RP_CHECK_INPUT(descr && fortran && shape, "npy file '", path,
                 "': header must contain 'descr', 'fortran_order' and 'shape': ", header);
  RP_CHECK_INPUT(!*fortran, "npy file '", path,
                 "': fortran_order is True; only C-order arrays are supported (save with np.ascontiguousarray)");
  const auto type = type_of_descr(*descr);
  if (!type) {
    RP_CHECK_INPUT(descr->empty() || (*descr)[0] != '>', "npy file '", path, "': dtype '", *descr,
                   "' is big-endian; only little-endian data is supported");
    throw InputError(cat("npy file '", path, "': unsupported dtype '", *descr,
                         "' (expected one of <f4 <f8 <f2 <i4 <i8 |u1 |b1)"));
  }

  const auto options = torch::TensorOptions().dtype(*type);
  // The element count must fit in int64 even when a zero dimension makes the array empty
  // ((0, 2^62, 2^62) holds no bytes, but LibTorch refuses such sizes), so the non-zero
  // dimensions are multiplied on their own.
  uint64_t nbytes = c10::elementSize(*type), nonzero = 1;
  for (int64_t d : *shape)
    RP_CHECK_INPUT(!__builtin_mul_overflow(nbytes, static_cast<uint64_t>(d), &nbytes) &&
                       (d == 0 || (!__builtin_mul_overflow(nonzero, static_cast<uint64_t>(d), &nonzero) &&
                                   nonzero <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))),
                   "npy file '", path, "': shape has more elements than fit in 64 bits: ", header);
  const uint64_t available = file_size - prefix - hlen;
  RP_CHECK_INPUT(available == nbytes, "npy file '", path, "': shape and dtype '", *descr, "' need ", nbytes,
                 " data bytes but the file holds ", available, available < nbytes ? " (truncated)" : " (trailing bytes)");

  torch::Tensor out = torch::empty(*shape, options);
  RP_CHECK_INPUT(nbytes == 0 || std::fread(out.data_ptr(), 1, nbytes, f.get()) == nbytes, "npy file '", path,
                 "': cannot read ", nbytes, " data bytes");
  if (*type == torch::kBool) {
    // torch assumes bool bytes are 0 or 1; anything else is undefined behaviour downstream.
    const auto* p = static_cast<const unsigned char*>(out.data_ptr());
    for (uint64_t i = 0; i < nbytes; ++i)
      RP_CHECK_INPUT(p[i] <= 1, "npy file '", path, "': bool byte ", static_cast<int>(p[i]), " at element ", i,
                     " is not 0 or 1");
  }
  return out;
}

}  // namespace rankprune
