// Channel selection cost: Gram-form strong RRQR (kernels/rrqr.h) vs the paper's procedure
// (kernels/rrqr_reference.h: LAPACK QRCP of 5000 sampled rows per head, re-QR per swap).
//
//   build/bench/bench_select [--layers 24] [--heads 16] [--dk 128] [--rows 5000] [--rank 32]
//                            [--noise 0.05] [--kahan-heads 0.25] [--kahan-block 48] [--kahan-c 0.3]
//                            [--ref-heads 16] [--seed 1234] [--f 1.5] [--max-swaps 20]
//
// A DeltaNet-1.3B-shaped problem (24 layers x 16 heads, head_k_dim 128). Per head, synthetic
// low-rank activations M = U V + noise ([rows, dk]; U, V Gaussian with inner rank --rank, channel
// scales log-normal, uniform noise of std --noise relative to the signal). Such data is already
// strong under greedy pivoting (no swaps), so in a fraction --kahan-heads of the heads the first
// --kahan-block channels are replaced by a dominant Kahan block (orthonormal rows times a Kahan
// matrix with parameter --kahan-c): the adversarial case for QRCP, which makes the swap path run.
// G = M^T M from the SAME rows, so both methods see identical data and their selections are
// comparable. Forming G is the calibration pass's job and is not timed here.
//   (a) Gram form: one pivoted Cholesky per head + strong RRQR for all 9 ratios 0.1..0.9
//       (k = floor(dk (1 - ratio)), at least 1), every head.
//   (b) the paper's procedure for the same ratios (one dgeqp3 per head shared by the ratios, one
//       dgeqrf per swap), on --ref-heads heads spread over the model, extrapolated to all heads.
// Prints figures only. OpenBLAS threading follows OPENBLAS_NUM_THREADS (both methods share it).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cblas.h>
#include <lapacke.h>

#include "kernels/rrqr.h"
#include "kernels/rrqr_reference.h"

using namespace rankprune;

namespace {

struct Options {
  int64_t layers = 24, heads = 16, dk = 128, rows = 5000, rank = 32, ref_heads = 16;
  double noise = 0.05, f = 1.5, kahan_heads = 0.25, kahan_c = 0.3;
  int64_t kahan_block = 48;
  int max_swaps = 20;
  uint64_t seed = 1234;
};

[[noreturn]] void usage(const char* msg) {
  std::cerr << "bench_select: " << msg << "\n"
            << "usage: bench_select [--layers N] [--heads N] [--dk N] [--rows N] [--rank N] [--noise X]\n"
            << "                    [--kahan-heads X] [--kahan-block N] [--kahan-c X]\n"
            << "                    [--ref-heads N] [--seed N] [--f X] [--max-swaps N]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") usage("help");
    if (i + 1 >= argc) usage(("missing value for " + a).c_str());
    const char* v = argv[++i];
    if (a == "--layers") o.layers = std::atoll(v);
    else if (a == "--heads") o.heads = std::atoll(v);
    else if (a == "--dk") o.dk = std::atoll(v);
    else if (a == "--rows") o.rows = std::atoll(v);
    else if (a == "--rank") o.rank = std::atoll(v);
    else if (a == "--ref-heads") o.ref_heads = std::atoll(v);
    else if (a == "--noise") o.noise = std::atof(v);
    else if (a == "--kahan-heads") o.kahan_heads = std::atof(v);
    else if (a == "--kahan-block") o.kahan_block = std::atoll(v);
    else if (a == "--kahan-c") o.kahan_c = std::atof(v);
    else if (a == "--f") o.f = std::atof(v);
    else if (a == "--max-swaps") o.max_swaps = std::atoi(v);
    else if (a == "--seed") o.seed = std::strtoull(v, nullptr, 10);
    else usage(("unknown option " + a).c_str());
  }
  if (o.layers < 1 || o.heads < 1 || o.dk < 2 || o.rank < 1 || o.rows < o.dk) usage("bad sizes");
  if (o.kahan_block < 1 || o.kahan_block > o.dk || o.kahan_c <= 0 || o.kahan_c >= 1) usage("bad Kahan block");
  o.ref_heads = std::clamp<int64_t>(o.ref_heads, 0, o.layers * o.heads);
  return o;
}

bool is_kahan_head(const Options& o, int64_t h) {
  if (!(o.kahan_heads > 0)) return false;
  return h % std::max<int64_t>(1, std::llround(1 / o.kahan_heads)) == 0;
}

// Head h's activations, [rows, dk] column-major; deterministic in (seed, h).
std::vector<double> head_activations(const Options& o, int64_t h) {
  std::mt19937_64 gen(o.seed * 1000003ULL + static_cast<uint64_t>(h));
  std::normal_distribution<double> nd;
  const int64_t n = o.dk, r = o.rank, rows = o.rows;
  std::vector<double> u(rows * r), v(r * n), m(rows * n);
  for (double& x : u) x = nd(gen);
  for (int64_t c = 0; c < n; ++c) {
    const double scale = std::exp(0.5 * nd(gen)) / std::sqrt(double(r));
    for (int64_t p = 0; p < r; ++p) v[p + c * r] = scale * nd(gen);
  }
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, rows, n, r, 1.0, u.data(), rows, v.data(), r, 0.0,
              m.data(), rows);
  // Uniform noise (cheaper than Gaussian for 640k entries a head) with std o.noise.
  std::uniform_real_distribution<double> ud(-std::sqrt(3.0) * o.noise, std::sqrt(3.0) * o.noise);
  for (double& x : m) x += ud(gen);

  // Every 1/kahan_heads-th head: columns [0, b) <- scale * Z K, Z [rows, b] orthonormal, K the
  // b x b Kahan matrix diag(s^i) (I - c * strict upper ones), columns scaled by (1 - 1e-3)^j so
  // greedy pivoting takes them in order; scale puts the block above the low-rank signal.
  if (is_kahan_head(o, h)) {
    const int64_t b = o.kahan_block;
    const double c = o.kahan_c, s = std::sqrt(1 - c * c), scale = 3 * std::sqrt(double(rows));
    std::vector<double> z(rows * b), tau(b), k(b * b, 0.0);
    for (double& x : z) x = nd(gen);
    LAPACKE_dgeqrf(LAPACK_COL_MAJOR, rows, b, z.data(), rows, tau.data());
    LAPACKE_dorgqr(LAPACK_COL_MAJOR, rows, b, b, z.data(), rows, tau.data());
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = i; j < b; ++j)
        k[i + j * b] = scale * std::pow(s, double(i)) * (i == j ? 1.0 : -c) * std::pow(1 - 1e-3, double(j));
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, rows, b, b, 1.0, z.data(), rows, k.data(), b, 0.0,
                m.data(), rows);
  }
  return m;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const int64_t n_heads = o.layers * o.heads, n = o.dk;
  std::vector<int64_t> ks;
  for (int t = 1; t <= 9; ++t) ks.push_back(std::max<int64_t>(1, int64_t(std::floor(n * (1 - 0.1 * t) + 1e-9))));

  const char* obt = std::getenv("OPENBLAS_NUM_THREADS");
  std::cout << "bench_select: " << o.layers << " layers x " << o.heads << " heads, dk " << n << ", "
            << o.rows << " rows/head (M = U V + noise, inner rank " << o.rank << ", noise " << o.noise
            << "), seed " << o.seed << "\n"
            << "  Kahan block (" << o.kahan_block << " channels, c " << o.kahan_c << ") in a fraction "
            << o.kahan_heads << " of the heads\n"
            << "  G = M^T M from the same " << o.rows << " rows; ratios 0.1..0.9 -> k =";
  for (int64_t k : ks) std::cout << " " << k;
  std::cout << "; f " << o.f << ", max swaps " << o.max_swaps << "\n"
            << "  hardware threads " << std::thread::hardware_concurrency() << ", OPENBLAS_NUM_THREADS "
            << (obt ? obt : "(unset)") << "\n";

  // Data: every head's Gram (untimed), plus M for the reference subset.
  std::vector<int64_t> ref_ids;
  // Spread over the model, with a varying offset so the subset mixes plain and Kahan heads.
  const int64_t stride = o.ref_heads > 0 ? n_heads / o.ref_heads : 1;
  for (int64_t i = 0; i < o.ref_heads; ++i) ref_ids.push_back(i * stride + i % stride);
  std::vector<std::vector<double>> grams(n_heads), ref_m;
  auto t_gen = std::chrono::steady_clock::now();
  for (int64_t h = 0; h < n_heads; ++h) {
    std::vector<double> m = head_activations(o, h);
    std::vector<double>& g = grams[h];
    g.assign(n * n, 0.0);
    // M column-major [rows, n] is row-major [n, rows]: G = M^T M is that times its transpose.
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, n, o.rows, 1.0, m.data(), o.rows, 0.0, g.data(), n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) g[i * n + j] = g[j * n + i];
    if (std::find(ref_ids.begin(), ref_ids.end(), h) != ref_ids.end()) ref_m.push_back(std::move(m));
  }
  std::cout << "  data generation + Grams (untimed): " << std::fixed << std::setprecision(2)
            << seconds_since(t_gen) << " s\n";

  // (a) Gram form, all heads; one warm-up pass, then the best of 3.
  std::vector<std::vector<StrongRrqrResult>> ours(n_heads);
  double t_gram = 1e30;
  for (int rep = 0; rep < 4; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t h = 0; h < n_heads; ++h) ours[h] = strong_rrqr_select_many(grams[h].data(), n, ks, o.f, o.max_swaps);
    if (rep > 0) t_gram = std::min(t_gram, seconds_since(t0));
  }
  int64_t swaps = 0, swapped = 0, at_limit = 0, deficient = 0, small_diag = 0, max_sw = 0;
  for (const auto& hr : ours)
    for (const auto& r : hr) {
      swaps += r.swaps;
      swapped += r.swaps > 0;
      at_limit += r.hit_swap_limit;
      deficient += r.rank_deficient;
      small_diag += r.stopped_small_diag;
      max_sw = std::max<int64_t>(max_sw, r.swaps);
    }
  const int64_t pairs = n_heads * int64_t(ks.size());
  std::cout << std::setprecision(3) << "(a) Gram form, " << n_heads << " heads x " << ks.size()
            << " ratios: " << t_gram << " s (best of 3; " << std::setprecision(1) << 1e6 * t_gram / n_heads
            << " us/head)\n"
            << "    swaps " << swaps << " in total over " << pairs << " (head, ratio); " << swapped
            << " needed swaps, max " << max_sw << "; at swap limit " << at_limit << ", rank-deficient "
            << deficient << ", stopped on small diag " << small_diag << "\n";

  if (ref_ids.empty()) return 0;
  // (b) the paper's procedure on the subset, timed per head; the extrapolation to all heads
  // weights plain and Kahan heads by their counts, since their swap counts differ.
  int64_t agree = 0, agree_swaps = 0, ref_swaps = 0, compared = 0;
  double t_ref_subset = 0, t_cat[2] = {0, 0};
  int64_t n_cat_subset[2] = {0, 0}, n_cat_all[2] = {0, 0};
  for (int64_t h = 0; h < n_heads; ++h) ++n_cat_all[is_kahan_head(o, h)];
  for (size_t i = 0; i < ref_ids.size(); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto ref = strong_rrqr_reference_many(ref_m[i].data(), o.rows, n, ks, o.f, o.max_swaps);
    const double dt = seconds_since(t0);
    const int cat = is_kahan_head(o, ref_ids[i]);
    t_ref_subset += dt;
    t_cat[cat] += dt;
    ++n_cat_subset[cat];
    for (size_t t = 0; t < ks.size(); ++t) {
      const auto& a = ours[ref_ids[i]][t];
      ++compared;
      agree += a.kept == ref[t].kept;
      agree_swaps += a.swaps == ref[t].swaps;
      ref_swaps += ref[t].swaps;
    }
  }
  const double mean_all = t_ref_subset / double(ref_ids.size());
  double t_ref = 0;
  for (int cat = 0; cat < 2; ++cat)
    t_ref += n_cat_all[cat] * (n_cat_subset[cat] > 0 ? t_cat[cat] / n_cat_subset[cat] : mean_all);
  std::cout << std::setprecision(3) << "(b) paper's procedure (dgeqp3 of " << o.rows << " x " << n
            << " per head, dgeqrf per swap): " << t_ref_subset << " s for " << ref_ids.size() << " heads ("
            << n_cat_subset[1] << " with the Kahan block; " << ref_swaps << " swaps)";
  if (int64_t(ref_ids.size()) < n_heads)
    std::cout << " -> " << std::setprecision(1) << t_ref << " s extrapolated to " << n_heads << " heads ("
              << n_cat_all[1] << " with the Kahan block)";
  std::cout << "\n    per head: plain " << std::setprecision(1)
            << (n_cat_subset[0] ? 1e3 * t_cat[0] / n_cat_subset[0] : 0.0) << " ms, Kahan "
            << (n_cat_subset[1] ? 1e3 * t_cat[1] / n_cat_subset[1] : 0.0) << " ms\n";
  std::cout << "speed-up (b)/(a): " << std::setprecision(0) << t_ref / t_gram << "x\n";
  std::cout << "agreement on " << ref_ids.size() << " heads x " << ks.size() << " ratios: identical kept sets "
            << agree << "/" << compared << ", identical swap counts " << agree_swaps << "/" << compared << "\n";
  return 0;
}
