#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "common/error.h"
#include "common/fs.h"

namespace rankprune {

using nlohmann::json;

const char* arch_name(Arch a) { return a == Arch::DeltaNet ? "delta_net" : "gated_deltanet"; }

namespace {

// Typed field readers: absent or null keeps the default; a wrong type names the field.
struct Reader {
  const json& j;
  const std::string& src;

  bool present(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  void integer(const char* key, int64_t* out, int64_t min_value) const {
    if (!present(key)) return;
    const json& v = j.at(key);
    // HF writes integers; accept floats that are whole numbers (some tools write 2048.0).
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      throw InputError(cat(src, ": field '", key, "' = ", v.dump(), " is beyond the 64-bit range"));
    } else if (v.is_number_integer()) {
      *out = v.get<int64_t>();
    } else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) {
      // Whole floats only within the range where the cast is defined (sizes are capped far lower).
      RP_CHECK_INPUT(std::fabs(v.get<double>()) < 9.2e18, src, ": field '", key, "' = ", v.dump(),
                     " is beyond the 64-bit range");
      *out = static_cast<int64_t>(v.get<double>());
    } else {
      throw InputError(cat(src, ": field '", key, "' must be an integer, got ", v.dump()));
    }
    RP_CHECK_INPUT(*out >= min_value, src, ": field '", key, "' must be >= ", min_value, ", got ", *out);
  }
  void number(const char* key, double* out, bool positive) const {
    if (!present(key)) return;
    const json& v = j.at(key);
    RP_CHECK_INPUT(v.is_number(), src, ": field '", key, "' must be a number, got ", v.dump());
    *out = v.get<double>();
    RP_CHECK_INPUT(std::isfinite(*out) && (!positive || *out > 0), src, ": field '", key,
                   "' must be a positive finite number, got ", v.dump());
  }
  void boolean(const char* key, bool* out) const {
    if (!present(key)) return;
    const json& v = j.at(key);
    RP_CHECK_INPUT(v.is_boolean(), src, ": field '", key, "' must be true or false, got ", v.dump());
    *out = v.get<bool>();
  }
  void string(const char* key, std::string* out) const {
    if (!present(key)) return;
    const json& v = j.at(key);
    RP_CHECK_INPUT(v.is_string(), src, ": field '", key, "' must be a string, got ", v.dump());
    *out = v.get<std::string>();
  }
};

// Python's int(a * b) for the float products fla uses (IEEE double, truncation toward zero).
// Callers make sure the product fits (fits_int below); a cast of a larger double is undefined.
int64_t py_int_mul(double a, double b) { return static_cast<int64_t>(a * b); }

// Sizes a config may declare: far above any real model (2^40 channels), yet small enough that
// the products of a few of them never leave 64 bits unnoticed (the checked ops below).
constexpr double kMaxSize = 1099511627776.0;  // 2^40
bool fits_int(double v) { return std::isfinite(v) && v >= 0 && v <= kMaxSize; }

// a * b and a + b on non-negative counts, saturating at INT64_MAX (which no file can back).
int64_t sat_mul(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}
int64_t sat_add(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

}  // namespace

double fla_ratio(int64_t base, int64_t target) {
  double r = static_cast<double>(target) / static_cast<double>(base);
  while (py_int_mul(static_cast<double>(base), r) < target) r = std::nextafter(r, 1e300);
  return r;
}

ModelConfig ModelConfig::with_head_k_dim(int64_t k) const {
  RP_ASSERT(k >= 1 && k <= head_k_dim, "k = ", k, ", head_k_dim = ", head_k_dim);
  ModelConfig c = *this;
  c.raw = to_json();
  if (arch == Arch::DeltaNet) {
    c.expand_k = fla_ratio(hidden_size, num_heads * k);
  } else {
    c.head_dim = k;
    c.expand_v = fla_ratio(k, head_v_dim);
  }
  c.finalize("pruned config");
  RP_ASSERT(c.head_k_dim == k && c.head_v_dim == head_v_dim && c.value_dim == value_dim, "pruned config sizes");
  c.raw = c.to_json();
  return c;
}

ModelConfig ModelConfig::defaults(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  if (arch == Arch::GatedDeltaNet) {
    // fla's GatedDeltaNetConfig defaults differ from DeltaNet's.
    c.num_hidden_layers = 21;
    c.num_heads = 6;
    c.use_gate = true;
    c.expand_v = 2.0;
    c.head_dim = 256;
  }
  c.raw = json::object();
  c.finalize();
  return c;
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  RP_CHECK_INPUT(j.is_object(), source, ": expected a JSON object");
  RP_CHECK_INPUT(j.contains("model_type") && j.at("model_type").is_string(), source,
                 ": field 'model_type' is missing (expected \"delta_net\" or \"gated_deltanet\")");
  const std::string mt = j.at("model_type").get<std::string>();
  Arch arch;
  if (mt == "delta_net")
    arch = Arch::DeltaNet;
  else if (mt == "gated_deltanet")
    arch = Arch::GatedDeltaNet;
  else
    throw InputError(cat(source, ": field 'model_type' is \"", mt,
                         "\"; rankprune supports \"delta_net\" and \"gated_deltanet\""));

  ModelConfig c = defaults(arch);
  c.raw = j;
  Reader r{j, source};
  r.integer("hidden_size", &c.hidden_size, 1);
  r.integer("num_hidden_layers", &c.num_hidden_layers, 1);
  r.integer("num_heads", &c.num_heads, 1);
  r.integer("vocab_size", &c.vocab_size, 1);
  r.integer("conv_size", &c.conv_size, 1);
  r.boolean("use_short_conv", &c.use_short_conv);
  r.boolean("use_gate", &c.use_gate);
  r.boolean("allow_neg_eigval", &c.allow_neg_eigval);
  r.boolean("tie_word_embeddings", &c.tie_word_embeddings);
  r.number("norm_eps", &c.norm_eps, true);
  r.number("initializer_range", &c.initializer_range, true);
  r.integer("hidden_ratio", &c.hidden_ratio, 1);
  c.intermediate_size = 0;
  r.integer("intermediate_size", &c.intermediate_size, 1);
  r.string("hidden_act", &c.hidden_act);
  r.integer("bos_token_id", &c.bos_token_id, 0);
  r.integer("eos_token_id", &c.eos_token_id, 0);
  if (arch == Arch::DeltaNet) {
    r.number("expand_k", &c.expand_k, true);
    r.number("expand_v", &c.expand_v, true);
    r.boolean("use_beta", &c.use_beta);
    r.string("qk_norm", &c.qk_norm);
    r.string("qk_activation", &c.qk_activation);
  } else {
    r.number("expand_v", &c.expand_v, true);
    r.integer("head_dim", &c.head_dim, 1);
    c.num_v_heads = 0;
    r.integer("num_v_heads", &c.num_v_heads, 1);
  }
  // Features of fla's model classes that rankprune does not implement: refuse, never guess.
  RP_CHECK_INPUT(!r.present("attn"), source,
                 ": field 'attn' configures hybrid softmax-attention layers, which rankprune does not support");
  if (r.present("attnres_block_size")) {
    throw InputError(cat(source, ": field 'attnres_block_size' (attention residuals) is not supported"));
  }
  c.finalize(source);
  return c;
}

void ModelConfig::finalize(const std::string& src) {
  RP_CHECK_INPUT(hidden_act == "swish", src, ": field 'hidden_act' is \"", hidden_act,
                 "\"; rankprune implements fla's SwiGLU MLP (\"swish\")");
  // Every size is bounded before it is multiplied: a config is read before the tensors that must
  // back it, and a huge value must fail here, naming the field, not later as an allocation.
  auto bounded = [&](const char* field, double v) {
    RP_CHECK_INPUT(fits_int(v), src, ": field '", field, "' gives a size of ", v, ", above the limit of 2^40");
  };
  for (const auto& [field, v] : {std::pair<const char*, int64_t>{"hidden_size", hidden_size},
                                 {"num_hidden_layers", num_hidden_layers},
                                 {"num_heads", num_heads},
                                 {"vocab_size", vocab_size},
                                 {"conv_size", conv_size},
                                 {"hidden_ratio", hidden_ratio},
                                 {"intermediate_size", intermediate_size},
                                 {"head_dim", head_dim},
                                 {"num_v_heads", num_v_heads}})
    bounded(field, static_cast<double>(v));
  if (intermediate_size <= 0) {
    // fla/modules/mlp.py: int(hidden * ratio * 2/3) rounded up to a multiple of 256.
    const double is_f = static_cast<double>(hidden_size) * static_cast<double>(hidden_ratio) * 2.0 / 3.0;
    bounded("hidden_ratio", is_f);
    const auto is = static_cast<int64_t>(is_f);
    intermediate_size = 256 * ((is + 256 - 1) / 256);
  }
  if (arch == Arch::DeltaNet) {
    RP_CHECK_INPUT(qk_norm == "l2" || qk_norm == "sum", src, ": field 'qk_norm' must be \"l2\" or \"sum\", got \"",
                   qk_norm, "\"");
    RP_CHECK_INPUT(qk_activation == "silu" || qk_activation == "relu" || qk_activation == "elu" ||
                       qk_activation == "identity",
                   src, ": field 'qk_activation' must be one of silu, relu, elu, identity; got \"", qk_activation,
                   "\"");
    bounded("expand_k", static_cast<double>(hidden_size) * expand_k);
    bounded("expand_v", static_cast<double>(hidden_size) * expand_v);
    key_dim = py_int_mul(static_cast<double>(hidden_size), expand_k);
    value_dim = py_int_mul(static_cast<double>(hidden_size), expand_v);
    RP_CHECK_INPUT(key_dim > 0 && key_dim % num_heads == 0, src, ": key_dim = int(hidden_size * expand_k) = ", key_dim,
                   " must be a positive multiple of num_heads = ", num_heads, " (field 'expand_k')");
    RP_CHECK_INPUT(value_dim > 0 && value_dim % num_heads == 0, src,
                   ": value_dim = int(hidden_size * expand_v) = ", value_dim,
                   " must be a positive multiple of num_heads = ", num_heads, " (field 'expand_v')");
    head_k_dim = key_dim / num_heads;
    head_v_dim = value_dim / num_heads;
    n_v_heads = num_heads;
  } else {
    n_v_heads = num_v_heads > 0 ? num_v_heads : num_heads;
    head_k_dim = head_dim;
    bounded("expand_v", static_cast<double>(head_dim) * expand_v);
    head_v_dim = py_int_mul(static_cast<double>(head_dim), expand_v);
    bounded("head_dim", static_cast<double>(num_heads) * static_cast<double>(head_k_dim));
    bounded("num_v_heads", static_cast<double>(n_v_heads) * static_cast<double>(head_v_dim));
    key_dim = num_heads * head_k_dim;
    value_dim = n_v_heads * head_v_dim;
    RP_CHECK_INPUT(std::fabs(head_dim * expand_v - static_cast<double>(head_v_dim)) <=
                       1e-5 * std::fabs(static_cast<double>(head_v_dim)),
                   src, ": head_dim * expand_v = ", head_dim * expand_v,
                   " is not an integer (fields 'head_dim', 'expand_v')");
    RP_CHECK_INPUT(head_v_dim > 0, src, ": head_dim * expand_v must be >= 1 (fields 'head_dim', 'expand_v')");
    RP_CHECK_INPUT(n_v_heads >= num_heads && n_v_heads % num_heads == 0, src, ": num_v_heads = ", n_v_heads,
                   " must be a multiple of num_heads = ", num_heads, " (field 'num_v_heads')");
  }
}

json ModelConfig::to_json() const {
  json j = raw.is_object() ? raw : json::object();
  j["model_type"] = arch_name(arch);
  if (!j.contains("architectures"))
    j["architectures"] = {arch == Arch::DeltaNet ? "DeltaNetForCausalLM" : "GatedDeltaNetForCausalLM"};
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_heads"] = num_heads;
  j["vocab_size"] = vocab_size;
  j["conv_size"] = conv_size;
  j["use_short_conv"] = use_short_conv;
  j["use_gate"] = use_gate;
  j["allow_neg_eigval"] = allow_neg_eigval;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["norm_eps"] = norm_eps;
  j["initializer_range"] = initializer_range;
  j["hidden_ratio"] = hidden_ratio;
  // Keep null when the file had null: fla derives the same value.
  if (!(raw.is_object() && raw.contains("intermediate_size") && raw["intermediate_size"].is_null()))
    j["intermediate_size"] = intermediate_size;
  j["hidden_act"] = hidden_act;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  if (!j.contains("attn")) j["attn"] = nullptr;
  if (!j.contains("attn_mode")) j["attn_mode"] = "chunk";
  if (!j.contains("fuse_norm")) j["fuse_norm"] = true;
  if (!j.contains("fuse_swiglu")) j["fuse_swiglu"] = true;
  if (!j.contains("fuse_cross_entropy")) j["fuse_cross_entropy"] = true;
  if (!j.contains("max_position_embeddings")) j["max_position_embeddings"] = 2048;
  if (!j.contains("use_cache")) j["use_cache"] = true;
  if (arch == Arch::DeltaNet) {
    j["expand_k"] = expand_k;
    j["expand_v"] = expand_v;
    j["use_beta"] = use_beta;
    j["qk_norm"] = qk_norm;
    j["qk_activation"] = qk_activation;
    if (!j.contains("use_output_norm")) j["use_output_norm"] = true;
  } else {
    j["expand_v"] = expand_v;
    j["head_dim"] = head_dim;
    if (num_v_heads > 0)
      j["num_v_heads"] = num_v_heads;
    else if (!j.contains("num_v_heads"))
      j["num_v_heads"] = nullptr;
  }
  return j;
}

ModelConfig ModelConfig::load(const std::string& model_dir) {
  const std::string path = is_directory(model_dir) ? path_join(model_dir, "config.json") : model_dir;
  RP_CHECK_INPUT(file_exists(path), "no config.json in '", model_dir,
                 "' (expected an fla checkpoint folder: config.json + model.safetensors)");
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers past double
    throw InputError(cat(path, ": not valid JSON: ", e.what()));
  }
  return from_json(j, path);
}

void ModelConfig::save(const std::string& model_dir) const {
  write_file_atomic(path_join(model_dir, "config.json"), to_json().dump(2) + "\n");
}

namespace {

// Parameters of one block (attention, MLP, two norms), saturating at INT64_MAX.
int64_t layer_parameters(const ModelConfig& c) {
  const int64_t D = c.hidden_size;
  const int64_t qk = sat_mul(c.key_dim, D), v = sat_mul(c.value_dim, D);
  int64_t attn = sat_add(sat_add(sat_mul(2, qk), v), v);  // q, k, v, o
  if (c.use_short_conv) attn = sat_add(attn, sat_mul(sat_add(sat_mul(2, c.key_dim), c.value_dim), c.conv_size));
  attn = sat_add(attn, c.head_v_dim);                      // o_norm
  if (c.use_gate) attn = sat_add(attn, v);                 // g_proj
  if (c.arch == Arch::DeltaNet) {
    if (c.use_beta) attn = sat_add(attn, sat_mul(c.num_heads, D));
  } else {
    attn = sat_add(attn, sat_add(sat_mul(sat_mul(2, c.n_v_heads), D), sat_mul(2, c.n_v_heads)));  // a, b, A_log, dt_bias
  }
  const int64_t mlp = sat_mul(3, sat_mul(c.intermediate_size, D));
  return sat_add(sat_add(attn, mlp), sat_mul(2, D));  // + attn_norm, mlp_norm
}

}  // namespace

int64_t ModelConfig::num_parameters() const {
  const int64_t emb = sat_mul(vocab_size, hidden_size);
  int64_t total = sat_add(sat_add(sat_mul(num_hidden_layers, layer_parameters(*this)), emb), hidden_size);
  if (!tie_word_embeddings) total = sat_add(total, emb);
  return total;
}

int64_t ModelConfig::state_elements_per_layer() const {
  return sat_mul(sat_mul(n_v_heads, head_k_dim), head_v_dim);
}

int64_t ModelConfig::tensors_per_layer() const {
  // attn_norm, q/k/v/o_proj, o_norm, mlp_norm, gate/up/down_proj; then the optional ones.
  int64_t n = 10;
  if (arch == Arch::GatedDeltaNet) n += 4;  // a_proj, b_proj, A_log, dt_bias
  else if (use_beta) n += 1;                // b_proj
  if (use_short_conv) n += 3;
  if (use_gate) n += 1;
  return n;
}

int64_t ModelConfig::num_tensors() const {
  // embeddings, final norm, lm_head (unless tied) around the layers.
  return sat_add(sat_mul(num_hidden_layers, tensors_per_layer()), tie_word_embeddings ? 2 : 3);
}

void ModelConfig::check_backed_by(const std::string& config_path, const std::string& checkpoint,
                                  uint64_t n_tensors, uint64_t tensor_bytes) const {
  // 1 and 2 are coarse on purpose (2x + slack): they stop configs that no file could back
  // before anything is sized from them, and leave a near miss (a missing tensor, a wrong width)
  // to LinearLM::load's tensor-by-tensor check, whose message names the tensor.
  // 1. Tensor count: each layer is a fixed number of tensors, so the layer count is believed only
  //    as far as the checkpoint holds about that many.
  const auto have = static_cast<int64_t>(std::min<uint64_t>(n_tensors, INT64_MAX / 4));
  RP_CHECK_INPUT(num_tensors() <= 2 * have + 64, config_path, ": field 'num_hidden_layers' = ", num_hidden_layers,
                 " implies ", num_tensors(), " tensors (", tensors_per_layer(), " per layer), but checkpoint '",
                 checkpoint, "' holds ", n_tensors, " (config.json does not belong to these weights)");
  // 2. Bytes: every weight has a float dtype of at least 2 bytes (BF16/F16).
  const int64_t params = num_parameters();
  const int64_t need = sat_mul(params, 2);
  const uint64_t room = std::min<uint64_t>(tensor_bytes, UINT64_MAX / 4) * 2 + (uint64_t{1} << 20);
  RP_CHECK_INPUT(static_cast<uint64_t>(need) <= room, config_path, ": its sizes (hidden_size ", hidden_size,
                 ", num_hidden_layers ", num_hidden_layers, ", key_dim ", key_dim, ", value_dim ", value_dim,
                 ", intermediate_size ", intermediate_size, ", vocab_size ", vocab_size, ") imply ",
                 params == INT64_MAX ? std::string("more than 2^63") : std::to_string(params),
                 " parameters, at least ", need == INT64_MAX ? std::string("2^63") : std::to_string(need),
                 " bytes at 2 bytes each, but checkpoint '", checkpoint, "' holds ", tensor_bytes,
                 " bytes of tensors (config.json does not belong to these weights)");
  // 3. Working memory sized by the config rather than by a tensor: the recurrent state of a layer
  //    (Hv x dk x dv) and its calibration Grams (3 x H x dk x dk). Real models keep these far below
  //    the layer's weights (DeltaNet-1.3B: 0.5% and 1.5%); a config whose head dims imply more
  //    than kWorkPerWeight times its layer's weights is refused, so no forward or calibration can
  //    be driven to allocate beyond a small multiple of the file.
  constexpr int64_t kWorkPerWeight = 4;
  const int64_t per_layer = layer_parameters(*this);
  const int64_t state = state_elements_per_layer();
  const int64_t grams = sat_mul(3, sat_mul(sat_mul(num_heads, head_k_dim), head_k_dim));
  RP_CHECK_INPUT(state <= sat_mul(kWorkPerWeight, per_layer) && grams <= sat_mul(kWorkPerWeight, per_layer),
                 config_path, ": head dimensions head_k_dim ", head_k_dim, ", head_v_dim ", head_v_dim,
                 " with hidden_size ", hidden_size, " imply a per-layer state of ", state, " and statistics of ", grams,
                 " elements, more than ", kWorkPerWeight, "x the layer's ", per_layer,
                 " weights (fields 'expand_k', 'expand_v', 'head_dim')");
}

ModelConfig build_model_config(const ModelShape& s) {
  auto positive = [](const char* opt, int64_t v) {
    if (v < 1) throw UsageError(cat("--", opt, " must be >= 1, got ", v));
    return v;
  };
  ModelConfig c = ModelConfig::defaults(s.arch);
  c.hidden_size = positive("hidden-size", s.hidden_size);
  c.num_hidden_layers = positive("num-layers", s.num_layers);
  c.num_heads = positive("num-heads", s.num_heads);
  c.vocab_size = positive("vocab-size", s.vocab_size);
  c.conv_size = positive("conv-size", s.conv_size);
  const int64_t dk = positive("head-k-dim", s.head_k_dim), dv = positive("head-v-dim", s.head_v_dim);
  if (s.intermediate_size < 0) throw UsageError("--intermediate-size must be >= 0");
  c.intermediate_size = s.intermediate_size;
  if (!(s.init_std > 0)) throw UsageError("--init-std must be > 0");
  c.initializer_range = s.init_std;
  if (s.use_gate >= 0) c.use_gate = s.use_gate != 0;
  c.allow_neg_eigval = s.allow_neg_eigval;
  c.tie_word_embeddings = s.tie_embeddings;
  if (s.arch == Arch::DeltaNet) {
    if (s.num_v_heads != 0 && s.num_v_heads != c.num_heads) throw UsageError("--num-v-heads is only for gated_deltanet");
    c.expand_k = fla_ratio(c.hidden_size, c.num_heads * dk);
    c.expand_v = fla_ratio(c.hidden_size, c.num_heads * dv);
  } else {
    if (s.num_v_heads < 0) throw UsageError("--num-v-heads must be >= 0");
    c.head_dim = dk;
    c.expand_v = fla_ratio(dk, dv);
    c.num_v_heads = s.num_v_heads;
  }
  c.raw = nlohmann::json::object();
  c.finalize("--arch/size options");
  if (c.head_k_dim != dk || c.head_v_dim != dv)
    throw UsageError(cat("--head-v-dim ", dv, " is not representable with head_dim ", dk,
                         " (fla: head_v_dim = int(head_dim * expand_v))"));
  return c;
}

}  // namespace rankprune
