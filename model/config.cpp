#include "model/config.h"

#include <cmath>

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
    if (v.is_number_integer()) {
      *out = v.get<int64_t>();
    } else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) {
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
int64_t py_int_mul(double a, double b) { return static_cast<int64_t>(a * b); }

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
  if (intermediate_size <= 0) {
    // fla/modules/mlp.py: int(hidden * ratio * 2/3) rounded up to a multiple of 256.
    int64_t is = static_cast<int64_t>(static_cast<double>(hidden_size) * hidden_ratio * 2.0 / 3.0);
    intermediate_size = 256 * ((is + 256 - 1) / 256);
  }
  if (arch == Arch::DeltaNet) {
    RP_CHECK_INPUT(qk_norm == "l2" || qk_norm == "sum", src, ": field 'qk_norm' must be \"l2\" or \"sum\", got \"",
                   qk_norm, "\"");
    RP_CHECK_INPUT(qk_activation == "silu" || qk_activation == "relu" || qk_activation == "elu" ||
                       qk_activation == "identity",
                   src, ": field 'qk_activation' must be one of silu, relu, elu, identity; got \"", qk_activation,
                   "\"");
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
    head_v_dim = py_int_mul(static_cast<double>(head_dim), expand_v);
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
  } catch (const json::parse_error& e) {
    throw InputError(cat(path, ": not valid JSON: ", e.what()));
  }
  return from_json(j, path);
}

void ModelConfig::save(const std::string& model_dir) const {
  write_file_atomic(path_join(model_dir, "config.json"), to_json().dump(2) + "\n");
}

int64_t ModelConfig::num_parameters() const {
  const int64_t D = hidden_size;
  int64_t attn = 2 * key_dim * D + value_dim * D + D * value_dim;  // q, k, v, o
  if (use_short_conv) attn += (2 * key_dim + value_dim) * conv_size;
  attn += head_v_dim;                                                  // o_norm
  if (use_gate) attn += value_dim * D;                                 // g_proj
  if (arch == Arch::DeltaNet) {
    if (use_beta) attn += num_heads * D;
  } else {
    attn += 2 * n_v_heads * D + 2 * n_v_heads;  // a_proj, b_proj, A_log, dt_bias
  }
  const int64_t mlp = 3 * intermediate_size * D;
  const int64_t per_layer = attn + mlp + 2 * D;  // + attn_norm, mlp_norm
  int64_t total = num_hidden_layers * per_layer + vocab_size * D + D;
  if (!tie_word_embeddings) total += vocab_size * D;
  return total;
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
