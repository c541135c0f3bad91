// Rank diagnostics (method.md §6, `rankprune analyze`):
//  - the stable rank sr(S) = ||S||_F^2 / ||S||_2^2 of each head's delta-rule state S_t [dk, dv] over
//    time, and its rank utilisation sr(S) / min(dk, dv);
//  - the entropy effective rank (Roy & Vetterli) exp(-sum_i p_i log p_i), p_i = s_i / sum s, of the
//    eigenvalue spectrum of each head's Gram statistics, and the share of that spectrum's mass held by
//    the top half of its eigenvalues (1.0: the head lives in half of its channels, and pruning half of
//    them by a rank-revealing selection loses nothing).
// All measures are computed in float64. See docs/analyze.md.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/linear_lm.h"
#include "model/llama2c.h"
#include "worker/calibration.h"

namespace rankprune {

// ------------------------------------------------------------------------------ rank measures

// sr of one matrix (any float dtype; computed in float64). 0 for an all-zero matrix.
double stable_rank(const torch::Tensor& m);
// sr of every matrix of a batch [..., a, b] -> [...] float64.
torch::Tensor stable_ranks(const torch::Tensor& m);
// sr / min(rows, cols): 1 means the state uses its full rank budget evenly.
double rank_utilisation(double stable_rank, int64_t rows, int64_t cols);

// Eigenvalues of a symmetric matrix [n, n] (LAPACK dsyevd on a float64 copy), descending, with the
// tiny negative values that rounding leaves on a PSD matrix clamped to 0.
std::vector<double> gram_spectrum(const torch::Tensor& gram);
// exp(-sum p_i log p_i), p_i = s_i / sum s over a non-negative spectrum (0 log 0 = 0). In [1, n];
// 0 for an all-zero spectrum. InputError for a negative or non-finite value.
double entropy_effective_rank(const std::vector<double>& spectrum);
// Share of sum(s) in the largest max(1, floor(n/2)) values (the channels a 50% prune keeps).
// 0 for an all-zero spectrum.
double top_half_mass(const std::vector<double>& spectrum);

struct SpectrumRank {
  double entropy_rank = 0.0;
  double top_half_mass = 0.0;
};
SpectrumRank spectrum_rank(const torch::Tensor& gram);  // of gram_spectrum(gram)

// ------------------------------------------------------------------------------ state over time

// Runs one sequence `ids` ([T] or [1, T] int64) through the model from an empty state, `every`
// tokens per forward call, and calls on_state(t, state) after each call: t = every, 2*every, ...,
// and T itself when T is not a multiple of `every`. state.layers[l].s is [1, Hv, dk, dv].
using StateVisitor = std::function<void(int64_t tokens, const LmState& state)>;
void for_each_state(const LinearLM& model, const torch::Tensor& ids, int64_t every, const ForwardOptions& opts,
                    const StateVisitor& on_state);

struct StateRankSeries {
  std::vector<int64_t> tokens;  // t of each sample
  torch::Tensor stable_rank;    // [L, Hv, n] float64
  torch::Tensor utilisation;    // [L, Hv, n] float64: stable_rank / min(dk, dv)
};
StateRankSeries state_rank_series(const LinearLM& model, const torch::Tensor& ids, int64_t every,
                                  const ForwardOptions& opts);

// ------------------------------------------------------------------------------ full analysis

struct HeadDiagnostics {
  int64_t head = 0;      // value head (the state's head index)
  int64_t key_head = 0;  // the query/key head it reads (GVA: head / (Hv / H)); the Gram is per key head
  std::vector<double> stable_rank, utilisation;  // one per AnalysisReport::tokens
  double stable_rank_mean = 0, stable_rank_final = 0, utilisation_mean = 0, utilisation_final = 0;
  SpectrumRank gram;     // G = sum q q^T + k k^T (pre-L2-norm; the statistic pruning selects from)
  SpectrumRank keys;     // sum k_hat k_hat^T (L2-normalised keys)
  SpectrumRank queries;  // sum q_hat q_hat^T (L2-normalised queries)
};

struct AnalysisReport {
  std::string model;   // as given on the command line
  int64_t seq_len = 0, every = 0;
  int64_t head_k_dim = 0, head_v_dim = 0;
  int64_t gram_tokens = 0;      // tokens behind the Gram statistics
  std::vector<int64_t> tokens;  // state sample points
  std::vector<std::vector<HeadDiagnostics>> layers;  // [layer][value head]

  nlohmann::json to_json() const;  // shape documented in docs/analyze.md
  std::string table() const;       // one line per (layer, head), fixed columns
};

// The state series of `sequence` ([T] or [1, T]) plus the spectra of `stats` (which must match the
// model's shape).
AnalysisReport analyze_model(const LinearLM& model, const torch::Tensor& sequence, int64_t every,
                             const CalibrationStats& stats, const ForwardOptions& opts);

// ------------------------------------------------------------------------------ Tucker spectra

// Multilinear singular-value spectra of the attention weights (`analyze --tucker`): each of q, k,
// v, o of a layer as a tensor [heads, head_dim, hidden] (prune/tucker.h; k and v by their own head
// count: KV groups under GQA, value heads under GVA; o = W_o^T), the singular values of its three
// unfoldings, and per mode the entropy effective rank of the squared singular values (the
// eigenvalues of the unfolding's Gram, as the Gram spectra above).
struct TuckerProjection {
  std::string name;                            // q, k, v, o
  std::array<int64_t, 3> shape{};              // [heads, head_dim, hidden]
  std::array<std::vector<double>, 3> singular_values;  // per mode, descending
  std::array<double, 3> entropy_rank{};        // per mode
};
struct TuckerAnalysis {
  std::string model;
  std::string layout = "[heads, head_dim, hidden]";
  std::vector<std::vector<TuckerProjection>> layers;  // [layer][q, k, v, o]
  nlohmann::json to_json() const;                     // the "tucker" object of docs/analyze.md
  std::string table() const;                          // one line per (layer, projection)
};
TuckerProjection tucker_projection(const std::string& name, const torch::Tensor& tensor3);
TuckerAnalysis tucker_analysis(const LinearLM& model);    // q_proj, k_proj, v_proj, o_proj
TuckerAnalysis tucker_analysis(const Llama2cModel& model);  // wq, wk, wv, wo

}  // namespace rankprune
