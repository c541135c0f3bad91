// One task-file reader (chosen at compile time: RP_FUZZ_TASK = piqa, arc, hellaswag, winogrande,
// lambada, wikitext) on arbitrary bytes, with no limit and with a small one, and the helpers the
// evaluation then applies to what it read. PIQA reads two files: the input is split at the first
// "\n--\n" into the rows and the labels.
#include "common/fs.h"
#include "eval/tasks.h"
#include "fuzz/fuzz_common.h"

using namespace rankprune;

#define RP_STR2(x) #x
#define RP_STR(x) RP_STR2(x)

namespace {

void check_mc(const std::vector<eval::McItem>& items) {
  for (const auto& it : items) {
    RP_FUZZ_CHECK(!it.continuations.empty() && it.gold >= 0 &&
                      it.gold < static_cast<int>(it.continuations.size()),
                  "gold ", it.gold, " of ", it.continuations.size());
    (void)eval::utf8_length(it.context);
  }
}

void read_all(const std::string& path, const std::string& labels, long limit) {
  const std::string task = RP_STR(RP_FUZZ_TASK);
  if (task == "piqa") {
    check_mc(eval::read_piqa(path, labels, limit));
  } else if (task == "arc") {
    check_mc(eval::read_arc(path, limit));
  } else if (task == "hellaswag") {
    const auto items = eval::read_hellaswag(path, limit);
    check_mc(items);
    for (const auto& it : items) RP_FUZZ_CHECK(it.continuations.size() == 4, "hellaswag endings");
  } else if (task == "winogrande") {
    for (const auto& it : eval::read_winogrande(path, limit))
      RP_FUZZ_CHECK(it.contexts.size() == 2 && it.gold >= 0 && it.gold < 2, "winogrande item");
  } else if (task == "lambada") {
    for (const auto& it : eval::read_lambada(path, limit))
      RP_FUZZ_CHECK(!it.target.empty() && it.target[0] == ' ', "lambada target");
  } else if (task == "wikitext") {
    for (const auto& d : eval::read_wikitext(path, limit)) {
      RP_FUZZ_CHECK(d.words >= 1 && d.bytes == static_cast<int64_t>(d.page.size()), "wikitext counts");
      (void)eval::python_split_ws_count(d.text);
    }
    const std::string raw = read_file(path);
    (void)eval::wikitext_token_text(raw, limit);
    // Rolling windows over a token count taken from the input, as the perplexity task cuts them.
    const std::size_t n = raw.size() % 97, max_len = 1 + raw.size() % 13;
    std::vector<int> tokens(n);
    for (std::size_t i = 0; i < n; ++i) tokens[i] = static_cast<int>(i);
    std::size_t predicted = 0;
    for (const auto& w : eval::rolling_windows(n, max_len)) {
      const auto t = eval::window_tokens(w, tokens, -1);
      RP_FUZZ_CHECK(t.context.size() + t.continuation.size() <= max_len + 1, "window length");
      predicted += t.continuation.size();
    }
    RP_FUZZ_CHECK(predicted == n, "windows predict every token once");
  } else {
    fuzz::finding("unknown RP_FUZZ_TASK", task.c_str());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) { return 0; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_file("task.txt"), labels = fuzz::scratch_file("labels.lst");
  std::string in(reinterpret_cast<const char*>(data), size), lab = "0\n1\n";
  const std::size_t cut = in.find("\n--\n");
  if (cut != std::string::npos) {
    lab = in.substr(cut + 4);
    in.resize(cut);
  }
  fuzz::put(path, in);
  fuzz::put(labels, lab);
  for (long limit : {0L, 2L}) fuzz::expect_clean([&] { read_all(path, labels, limit); });
  return 0;
}
