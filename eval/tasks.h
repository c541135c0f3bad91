// Readers for the zero-shot task files shipped under shared/data/tasks and shared/data/text, each
// producing exactly the requests lm-evaluation-harness builds for the task (docs: method.md §5).
//
// Every reader takes the file path(s) and a `limit`: the first `limit` items in file order, or all
// items when limit <= 0 (callers reject a user-given 0 themselves). A missing file is an
// InputError naming it; a malformed row is an InputError naming the file and its 1-based line.
//
// Strings are UTF-8 bytes; where lm-eval's Python counts characters or whitespace, the helpers
// here decode code points so that the counts agree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rankprune::eval {

// One multiple-choice item scored as log P(continuation | context) per choice.
// Continuations carry lm-eval's target delimiter: " " + choice.
struct McItem {
  std::string context;
  std::vector<std::string> continuations;
  int gold = 0;
};

// Partial scoring (winogrande): one shared continuation after each of several contexts.
struct PartialItem {
  std::vector<std::string> contexts;
  std::string continuation;  // " " + the sentence after the blank, stripped
  int gold = 0;
};

// lambada_openai: `target` is " " + the last space-separated word; `context` the text before it.
struct LambadaItem {
  std::string context;
  std::string target;
};

// One wikitext document (lm-eval's wikitext task over EleutherAI/wikitext_document_level).
struct WikitextDoc {
  std::string page;          // the original page text; words and bytes are counted on it
  std::string text;          // wikitext_detokenizer(page): what the model scores
  std::int64_t words = 0;    // len(re.split(r"\s+", page))
  std::int64_t bytes = 0;    // len(page.encode("utf-8"))
};

// PIQA: valid.jsonl ({"goal","sol1","sol2"}) + valid-labels.lst (one 0/1 per line).
// Context "Question: {goal}\nAnswer:", continuations " " + sol1, " " + sol2.
std::vector<McItem> read_piqa(const std::string& jsonl_path, const std::string& labels_path,
                              long limit = 0);

// ARC easy/challenge in llm-foundry form ({"query":"Question: …","choices":[…],"gold":i}).
// Context "Question: {question}\nAnswer:", continuations " " + choice.
std::vector<McItem> read_arc(const std::string& jsonl_path, long limit = 0);

// HellaSwag, 6 lines per item (see the .cpp for how ctx_b is recovered and capitalised).
std::vector<McItem> read_hellaswag(const std::string& txt_path, long limit = 0);

// Winogrande in llm-foundry form ({"context_options":[2],"continuation":…,"gold":i}).
std::vector<PartialItem> read_winogrande(const std::string& jsonl_path, long limit = 0);

// LAMBADA (OpenAI), {"text": …} per line.
std::vector<LambadaItem> read_lambada(const std::string& jsonl_path, long limit = 0);

// WikiText-2 raw test file, split into documents as wikitext_document_level does.
std::vector<WikitextDoc> read_wikitext(const std::string& raw_path, long limit = 0);

// The document split alone: a new page starts at each top-level heading line (" = Title = ",
// exactly one '=' on each side once "= = =" / "= =" runs are collapsed); empty pages are dropped.
std::vector<std::string> split_wikitext_documents(const std::string& raw);

// The pruning papers' perplexity text: "\n\n".join(rows), rows being the lines of the raw file as
// the HF wikitext-2-raw-v1 split holds them (a whitespace-only line is "", other lines keep their
// "\n"). With limit > 0, only the rows of the first `limit` documents (as read_wikitext counts them).
std::string wikitext_token_text(const std::string& raw, long limit = 0);

// lm-eval's wikitext_detokenizer: its string replacements and regex substitutions, in order.
std::string wikitext_detokenize(const std::string& page);

// len(re.split(r"\s+", s)) with Python's Unicode whitespace; the empty strings produced by
// leading/trailing whitespace count, as they do in lm-eval.
std::int64_t python_split_ws_count(const std::string& s);

// Python's str.capitalize(): first character upper-cased, the rest lower-cased. Only ASCII
// letters change case; other bytes are copied (the shipped task text needs no more).
std::string python_capitalize(const std::string& s);

// Number of Unicode code points (Python's len(str)) of UTF-8 text.
std::size_t utf8_length(const std::string& s);

// One disjoint rolling window of lm-eval's loglikelihood_rolling (get_rolling_token_windows with
// context_len = 1, then make_disjoint_window), as index ranges into the document's tokens.
// Context = (prefix ? [prefix_token] : []) + tokens[context_begin, context_end);
// scored continuation = tokens[cont_begin, cont_end). Only the first window uses the prefix.
struct RollingWindow {
  bool prefix = false;
  std::size_t context_begin = 0, context_end = 0;
  std::size_t cont_begin = 0, cont_end = 0;
};

// Windows for a document of n_tokens tokens: the first predicts min(n, max_seq_len) tokens after
// the prefix; each later one predicts up to max_seq_len further tokens, conditioned on the
// max_seq_len + 1 - (predicted count) tokens before them. InputError if max_seq_len < 1.
std::vector<RollingWindow> rolling_windows(std::size_t n_tokens, std::size_t max_seq_len);

struct WindowTokens {
  std::vector<int> context;
  std::vector<int> continuation;
};
WindowTokens window_tokens(const RollingWindow& w, const std::vector<int>& tokens, int prefix_token);

}  // namespace rankprune::eval
