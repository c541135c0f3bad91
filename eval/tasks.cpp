#include "eval/tasks.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <string_view>

#include "common/error.h"
#include "common/fs.h"

namespace rankprune::eval {
namespace {

using nlohmann::json;

std::string read_existing(const std::string& path) {
  RP_CHECK_INPUT(file_exists(path), "task file not found: ", path);
  return read_file(path);
}

// The lines of a text file, one at a time, as views into it (a reader holds the file once, never
// a string per line: a file of blank lines would otherwise cost ~32 bytes per byte). A final
// newline does not make an extra empty line, and a trailing '\r' (CRLF files) is dropped.
class Lines {
 public:
  explicit Lines(const std::string& data) : data_(data) {}
  bool next(std::string_view* line) {
    if (pos_ >= data_.size()) return false;
    std::size_t nl = data_.find('\n', pos_);
    if (nl == std::string::npos) nl = data_.size();
    std::string_view l(data_.data() + pos_, nl - pos_);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    *line = l;
    pos_ = nl + 1;
    return true;
  }
  std::size_t count_rest() {
    std::size_t n = 0;
    std::string_view l;
    while (next(&l)) ++n;
    return n;
  }

 private:
  const std::string& data_;
  std::size_t pos_ = 0;
};

bool want_more(std::size_t have, long limit) { return limit <= 0 || have < static_cast<std::size_t>(limit); }

[[noreturn]] void bad_row(const std::string& path, std::size_t line, const std::string& what) {
  throw InputError(cat(path, ":", line, ": ", what));
}

json parse_row(const std::string& path, std::size_t line_no, std::string_view line) {
  try {
    json j = json::parse(line.begin(), line.end());
    if (!j.is_object()) bad_row(path, line_no, "expected a JSON object");
    return j;
  } catch (const json::exception& e) {
    bad_row(path, line_no, cat("invalid JSON (", e.what(), ")"));
  }
}

std::string get_string(const json& j, const char* key, const std::string& path, std::size_t line) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) bad_row(path, line, cat("missing string field \"", key, "\""));
  return it->get<std::string>();
}

std::vector<std::string> get_strings(const json& j, const char* key, const std::string& path,
                                     std::size_t line) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array() || it->empty())
    bad_row(path, line, cat("missing non-empty array field \"", key, "\""));
  std::vector<std::string> out;
  for (const auto& v : *it) {
    if (!v.is_string()) bad_row(path, line, cat("field \"", key, "\" must hold strings"));
    out.push_back(v.get<std::string>());
  }
  return out;
}

int get_gold(const json& j, std::size_t n_choices, const std::string& path, std::size_t line) {
  auto it = j.find("gold");
  if (it == j.end() || !it->is_number_integer()) bad_row(path, line, "missing integer field \"gold\"");
  const auto g = it->get<long long>();
  if (g < 0 || g >= static_cast<long long>(n_choices))
    bad_row(path, line, cat("gold ", g, " out of range for ", n_choices, " choices"));
  return static_cast<int>(g);
}

// Decodes the code point at s[i]; `len` receives its byte length. Invalid bytes decode as
// themselves (length 1) so that counting never loops or throws.
std::uint32_t decode_at(const std::string& s, std::size_t i, std::size_t& len) {
  const auto b = static_cast<unsigned char>(s[i]);
  std::size_t n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    len = 1;
    return b;
  }
  std::uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (std::size_t k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c >> 6) != 0x2) {
      len = 1;
      return b;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  len = n;
  return cp;
}

// Python's str.isspace(), which is also what re's \s matches in a str pattern.
bool is_py_space(std::uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Python's str.strip() (no arguments).
std::string py_strip(const std::string& s) {
  std::size_t b = 0;
  while (b < s.size()) {
    std::size_t len = 0;
    if (!is_py_space(decode_at(s, b, len))) break;
    b += len;
  }
  // Scan forward to find the end of the last non-space code point (UTF-8 is not reversible
  // byte-wise without care, and texts here are short).
  std::size_t e = b, i = b;
  while (i < s.size()) {
    std::size_t len = 0;
    const bool space = is_py_space(decode_at(s, i, len));
    i += len;
    if (!space) e = i;
  }
  return s.substr(b, e - b);
}

// Python's str.replace(old, new): left to right, non-overlapping.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  std::size_t pos = 0;
  while (true) {
    const std::size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// re.sub(r"O\s*([^C]*?)\s*C", r"O\1C", s) for single-byte delimiters O and C: each O pairs with
// the next C after it (the class cannot cross C), and the text between loses its surrounding
// whitespace. An O with no C after it is left as is, as the regex fails there.
std::string tighten_pairs(const std::string& s, char open, char close) {
  std::string out;
  std::size_t i = 0;
  while (i < s.size()) {
    if (s[i] != open) {
      out += s[i++];
      continue;
    }
    const std::size_t j = s.find(close, i + 1);
    if (j == std::string::npos) {
      out.append(s, i, std::string::npos);
      break;
    }
    out += open;
    out += py_strip(s.substr(i + 1, j - i - 1));
    out += close;
    i = j + 1;
  }
  return out;
}

// lm-eval's hellaswag preprocess(): strip, " [title]" -> ". ", drop [tags] (non-greedy, within
// one pair of brackets), "  " -> " " (one pass, as Python's replace).
std::string hellaswag_preprocess(const std::string& text) {
  std::string s = replace_all(py_strip(text), " [title]", ". ");
  std::string out;
  std::size_t i = 0;
  // The first ']' or '\n' after the last '[' searched from, remembered while it lies ahead: a
  // run of '[' without a ']' would otherwise rescan to the end from every '[' (quadratic).
  std::size_t stop = 0;
  bool have_stop = false;
  while (i < s.size()) {
    if (s[i] == '[') {
      // "\[.*?\]": '.' does not match '\n', so a tag never spans lines.
      if (!have_stop || stop < i + 1) {
        stop = std::min(s.find_first_of("]\n", i + 1), s.size());
        have_stop = true;
      }
      const std::size_t j = stop;
      if (j < s.size() && s[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    out += s[i++];
  }
  return replace_all(out, "  ", " ");
}

}  // namespace

std::size_t utf8_length(const std::string& s) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++n) {
    std::size_t len = 0;
    decode_at(s, i, len);
    i += len;
  }
  return n;
}

std::string python_capitalize(const std::string& s) {
  std::string out = s;
  for (std::size_t i = 0; i < out.size(); ++i) {
    char& c = out[i];
    if (i == 0 && c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (i > 0 && c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::int64_t python_split_ws_count(const std::string& s) {
  // re.split yields one more piece than there are maximal whitespace runs.
  std::int64_t runs = 0;
  bool in_run = false;
  for (std::size_t i = 0; i < s.size();) {
    std::size_t len = 0;
    const bool space = is_py_space(decode_at(s, i, len));
    if (space && !in_run) ++runs;
    in_run = space;
    i += len;
  }
  return runs + 1;
}

std::vector<McItem> read_piqa(const std::string& jsonl_path, const std::string& labels_path,
                              long limit) {
  const std::string rows_text = read_existing(jsonl_path), labels_text = read_existing(labels_path);
  Lines rows(rows_text), labels(labels_text);
  std::vector<McItem> items;
  std::size_t i = 0, n_labels = 0;
  std::string_view row, label_line;
  for (; want_more(items.size(), limit) && rows.next(&row); ++i) {
    const json j = parse_row(jsonl_path, i + 1, row);
    McItem item;
    item.context = "Question: " + get_string(j, "goal", jsonl_path, i + 1) + "\nAnswer:";
    item.continuations = {" " + get_string(j, "sol1", jsonl_path, i + 1),
                          " " + get_string(j, "sol2", jsonl_path, i + 1)};
    if (!labels.next(&label_line))
      bad_row(labels_path, i + 1, cat("missing label for row ", i + 1, " of ", jsonl_path));
    ++n_labels;
    const std::string label = py_strip(std::string(label_line));
    if (label != "0" && label != "1")
      bad_row(labels_path, i + 1, cat("label must be 0 or 1, got '", label_line, "'"));
    item.gold = label == "1" ? 1 : 0;
    items.push_back(std::move(item));
  }
  if (limit <= 0) {
    n_labels += labels.count_rest();
    if (n_labels != i)
      throw InputError(cat(labels_path, ": ", n_labels, " labels for ", i, " rows of ", jsonl_path));
  }
  return items;
}

std::vector<McItem> read_arc(const std::string& jsonl_path, long limit) {
  const std::string text = read_existing(jsonl_path);
  Lines rows(text);
  std::string_view row;
  std::vector<McItem> items;
  const std::string suffix = "\nAnswer:";
  for (std::size_t i = 0; want_more(items.size(), limit) && rows.next(&row); ++i) {
    const json j = parse_row(jsonl_path, i + 1, row);
    McItem item;
    // llm-foundry's query is "Question: {question}" without lm-eval's "\nAnswer:"; add it unless
    // a row already carries it.
    item.context = get_string(j, "query", jsonl_path, i + 1);
    if (item.context.rfind("Question: ", 0) != 0)
      bad_row(jsonl_path, i + 1, "query must start with \"Question: \"");
    if (item.context.size() < suffix.size() ||
        item.context.compare(item.context.size() - suffix.size(), suffix.size(), suffix) != 0)
      item.context += suffix;
    for (const auto& c : get_strings(j, "choices", jsonl_path, i + 1)) item.continuations.push_back(" " + c);
    item.gold = get_gold(j, item.continuations.size(), jsonl_path, i + 1);
    items.push_back(std::move(item));
  }
  return items;
}

// The shipped HellaSwag file stores "activity_label: ctx" with lm-eval's bracket clean-up already
// applied, but ctx = ctx_a + " " + ctx_b with ctx_b left as in the dataset, not capitalised. lm-eval
// builds preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()). We recover ctx_b as
// the fragment after the last sentence end (". ", "! ", "? ") of ctx:
//  - ActivityNet rows: ctx_b is the lower-case start of the last sentence ("he", "the lady"),
//    which is exactly that fragment; capitalize() upper-cases its first character and lower-cases
//    the rest, as Python does.
//  - WikiHow rows: ctx_b is empty and ctx ends with a complete sentence, so the fragment starts
//    with an upper-case letter; we leave it untouched (capitalize("") is "", and the trailing
//    space lm-eval adds is stripped by preprocess).
//  - WikiHow rows whose last sentence follows an abbreviation ("St. ...") or starts with a quote
//    or digit also end in '.', '!' or '?'; an ActivityNet ctx_b is an unfinished sentence and
//    never does.
// So a fragment is treated as ctx_b exactly when its first character is not an upper-case ASCII
// letter and ctx does not end with '.', '!' or '?'. A true ctx_b that starts upper-case and has more capitals inside would be lower-cased by
// lm-eval but not here; the dataset's ctx_b fields are lower-case-initial, so this does not arise
// in the shipped rows as far as this rule can tell.
std::vector<McItem> read_hellaswag(const std::string& txt_path, long limit) {
  const std::string text = read_existing(txt_path);
  Lines reader(text);
  std::vector<McItem> items;
  std::string_view first;
  for (std::size_t i = 0; want_more(items.size(), limit) && reader.next(&first); i += 6) {
    const std::size_t line_no = i + 1;
    std::string lines[6] = {std::string(first)};
    for (std::size_t k = 1; k < 6; ++k) {
      std::string_view l;
      if (!reader.next(&l)) bad_row(txt_path, line_no, "incomplete item: expected 6 lines (context, gold, 4 endings)");
      lines[k] = std::string(l);
    }
    const std::string& head = lines[0];
    const std::size_t colon = head.find(": ");
    if (colon == std::string::npos) bad_row(txt_path, line_no, "expected \"activity_label: context\"");
    const std::size_t ctx_start = colon + 2;
    std::size_t cut = std::string::npos;
    for (const char* end : {". ", "! ", "? "}) {
      const std::size_t p = head.rfind(end);
      if (p != std::string::npos && p >= ctx_start && (cut == std::string::npos || p > cut)) cut = p;
    }
    const std::size_t frag_start = cut == std::string::npos ? ctx_start : cut + 2;
    std::string query = head;
    const char last = head.empty() ? ' ' : head.back();
    if (frag_start < head.size() && !(head[frag_start] >= 'A' && head[frag_start] <= 'Z') &&
        last != '.' && last != '!' && last != '?')
      query = head.substr(0, frag_start) + python_capitalize(head.substr(frag_start));
    McItem item;
    item.context = hellaswag_preprocess(query);
    const std::string gold = py_strip(lines[1]);
    if (gold.size() != 1 || gold[0] < '0' || gold[0] > '3')
      bad_row(txt_path, line_no + 1, cat("gold must be 0..3, got '", lines[1], "'"));
    item.gold = gold[0] - '0';
    for (std::size_t k = 0; k < 4; ++k) item.continuations.push_back(" " + hellaswag_preprocess(lines[2 + k]));
    items.push_back(std::move(item));
  }
  return items;
}

std::vector<PartialItem> read_winogrande(const std::string& jsonl_path, long limit) {
  const std::string text = read_existing(jsonl_path);
  Lines rows(text);
  std::string_view row;
  std::vector<PartialItem> items;
  for (std::size_t i = 0; want_more(items.size(), limit) && rows.next(&row); ++i) {
    const json j = parse_row(jsonl_path, i + 1, row);
    PartialItem item;
    // Each context is sentence[:blank] + option, as lm-eval's doc_to_choice builds it; the shared
    // target is sentence[blank+1:].strip() behind the " " target delimiter.
    item.contexts = get_strings(j, "context_options", jsonl_path, i + 1);
    if (item.contexts.size() != 2) bad_row(jsonl_path, i + 1, "context_options must hold 2 strings");
    item.continuation = " " + py_strip(get_string(j, "continuation", jsonl_path, i + 1));
    item.gold = get_gold(j, item.contexts.size(), jsonl_path, i + 1);
    items.push_back(std::move(item));
  }
  return items;
}

std::vector<LambadaItem> read_lambada(const std::string& jsonl_path, long limit) {
  const std::string file = read_existing(jsonl_path);
  Lines rows(file);
  std::string_view row;
  std::vector<LambadaItem> items;
  for (std::size_t i = 0; want_more(items.size(), limit) && rows.next(&row); ++i) {
    const json j = parse_row(jsonl_path, i + 1, row);
    const std::string text = get_string(j, "text", jsonl_path, i + 1);
    // lm-eval: context = " ".join(text.split(" ")[:-1]), target = " " + text.split(" ")[-1];
    // i.e. a cut at the last literal space (no space: empty context).
    const std::size_t sp = text.rfind(' ');
    LambadaItem item;
    if (sp == std::string::npos) {
      item.target = " " + text;
    } else {
      item.context = text.substr(0, sp);
      item.target = " " + text.substr(sp + 1);
    }
    items.push_back(std::move(item));
  }
  return items;
}

namespace {
// A top-level " = Title = " line: after "= = =" -> "===" and "= =" -> "==" and strip(), it starts
// with "= " and ends with " =".
bool is_page_heading(const std::string& line) {
  const std::string r = py_strip(replace_all(replace_all(line, "= = =", "==="), "= =", "=="));
  return r.size() >= 3 && r.compare(0, 2, "= ") == 0 && r.compare(r.size() - 2, 2, " =") == 0;
}
}  // namespace

std::string wikitext_token_text(const std::string& raw, long limit) {
  std::string out;
  bool first_row = true;
  long pages = 0;
  bool page_has_text = false;  // the current page counts once it holds a non-blank line
  std::size_t start = 0;
  while (start < raw.size()) {
    const std::size_t nl = raw.find('\n', start);
    const std::size_t end = nl == std::string::npos ? raw.size() : nl + 1;
    const std::string row = raw.substr(start, end - start);  // keeps its newline
    start = end;
    const bool blank = py_strip(row).empty();
    if (is_page_heading(row.back() == '\n' ? row.substr(0, row.size() - 1) : row)) {
      if (page_has_text) ++pages;
      page_has_text = false;
      if (limit > 0 && pages >= limit) break;
    }
    if (!blank) page_has_text = true;
    // "\n\n".join(rows), appended as the rows come.
    if (!first_row) out += "\n\n";
    first_row = false;
    if (!blank) out += row;
  }
  return out;
}

std::vector<std::string> split_wikitext_documents(const std::string& raw) {
  // wikitext_document_level: split the file on "\n"; a line that, after "= = =" -> "===" and
  // "= =" -> "==" and strip(), starts with "= " and ends with " =" opens a new page. Pages are the
  // "\n"-joined lines; whitespace-only pages are dropped.
  std::vector<std::string> pages;
  std::string page;
  bool have_lines = false;
  auto flush = [&] {
    if (have_lines && !py_strip(page).empty()) pages.push_back(page);
    page.clear();
    have_lines = false;
  };
  std::size_t start = 0;
  while (true) {
    std::size_t nl = raw.find('\n', start);
    const bool last = nl == std::string::npos;
    const std::string line = raw.substr(start, last ? std::string::npos : nl - start);
    if (is_page_heading(line)) flush();
    if (have_lines) page += '\n';
    page += line;
    have_lines = true;
    if (last) break;
    start = nl + 1;
  }
  flush();
  return pages;
}

std::string wikitext_detokenize(const std::string& page) {
  std::string s = replace_all(page, "s '", "s'");
  // re.sub(r"/' [0-9]/", r"/'[0-9]/", s): the replacement is the literal text "/'[0-9]/".
  {
    std::string out;
    std::size_t i = 0;
    while (i < s.size()) {
      if (i + 5 <= s.size() && s.compare(i, 3, "/' ") == 0 && s[i + 3] >= '0' && s[i + 3] <= '9' && s[i + 4] == '/') {
        out += "/'[0-9]/";
        i += 5;
      } else {
        out += s[i++];
      }
    }
    s = out;
  }
  s = replace_all(s, " @-@ ", "-");
  s = replace_all(s, " @,@ ", ",");
  s = replace_all(s, " @.@ ", ".");
  s = replace_all(s, " : ", ": ");
  s = replace_all(s, " ; ", "; ");
  s = replace_all(s, " . ", ". ");
  s = replace_all(s, " ! ", "! ");
  s = replace_all(s, " ? ", "? ");
  s = replace_all(s, " , ", ", ");
  s = tighten_pairs(s, '(', ')');
  s = tighten_pairs(s, '[', ']');
  s = tighten_pairs(s, '{', '}');
  s = tighten_pairs(s, '"', '"');
  s = tighten_pairs(s, '\'', '\'');
  s = replace_all(s, "= = = =", "====");
  s = replace_all(s, "= = =", "===");
  s = replace_all(s, "= =", "==");
  s = replace_all(s, " \xC2\xB0 ", "\xC2\xB0");  // chr(176), the degree sign
  s = replace_all(s, " \n", "\n");
  s = replace_all(s, "\n ", "\n");
  s = replace_all(s, " N ", " 1 ");
  s = replace_all(s, " 's", "'s");
  return s;
}

std::vector<WikitextDoc> read_wikitext(const std::string& raw_path, long limit) {
  const auto pages = split_wikitext_documents(read_existing(raw_path));
  std::vector<WikitextDoc> docs;
  for (const auto& p : pages) {
    if (!want_more(docs.size(), limit)) break;
    WikitextDoc d;
    d.page = p;
    d.text = wikitext_detokenize(p);
    d.words = python_split_ws_count(p);
    d.bytes = static_cast<std::int64_t>(p.size());
    docs.push_back(std::move(d));
  }
  return docs;
}

std::vector<RollingWindow> rolling_windows(std::size_t n_tokens, std::size_t max_seq_len) {
  RP_CHECK_INPUT(max_seq_len >= 1, "rolling windows need max_seq_len >= 1, got ", max_seq_len);
  std::vector<RollingWindow> out;
  if (n_tokens == 0) return out;
  // First window: [prefix] + tokens[0, first-1) predicts tokens[0, first); made disjoint, its
  // context is the prefix alone.
  const std::size_t first = std::min(max_seq_len, n_tokens);
  out.push_back({true, 0, 0, 0, first});
  std::size_t predicted = first;
  while (predicted < n_tokens) {
    // Input tokens[end-max-1, end-1) predicts tokens[end-len, end); make_disjoint_window keeps
    // the first max - len + 1 input tokens, i.e. tokens[end-max-1, predicted).
    const std::size_t len = std::min(n_tokens - predicted, max_seq_len);
    const std::size_t end = predicted + len;
    out.push_back({false, end - max_seq_len - 1, predicted, predicted, end});
    predicted = end;
  }
  return out;
}

WindowTokens window_tokens(const RollingWindow& w, const std::vector<int>& tokens, int prefix_token) {
  RP_ASSERT(w.context_end <= tokens.size() && w.cont_end <= tokens.size(), "window beyond the tokens");
  WindowTokens t;
  if (w.prefix) t.context.push_back(prefix_token);
  t.context.insert(t.context.end(), tokens.begin() + static_cast<std::ptrdiff_t>(w.context_begin),
                   tokens.begin() + static_cast<std::ptrdiff_t>(w.context_end));
  t.continuation.assign(tokens.begin() + static_cast<std::ptrdiff_t>(w.cont_begin),
                        tokens.begin() + static_cast<std::ptrdiff_t>(w.cont_end));
  return t;
}

}  // namespace rankprune::eval
