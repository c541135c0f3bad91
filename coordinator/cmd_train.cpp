// `rankprune train`: a small DeltaNet / Gated DeltaNet trained from scratch (docs/training.md).
#include <iostream>

#include "common/error.h"
#include "coordinator/cli.h"
#include "model/tokenizer.h"
#include "worker/train.h"

namespace rankprune::cli {
namespace {

void declare_train(po::options_description& d) {
  po::options_description model("Model (as `rankprune init`)");
  add_model_shape_options(model, 0, "vocabulary size (0 = the tokenizer's)");
  po::options_description train("Training");
  train.add_options()
      ("data", po::value<std::vector<std::string>>()->multitoken()->required(),
       "training text (.txt/.tokens/.raw: one document; .jsonl: \"text\" per line) or .npy [N, seq-len + 1] ids")
      ("tokenizer", po::value<std::string>()->required(),
       "SentencePiece .model (copied into --out as tokenizer.model) or 'bytes'")
      ("seq-len", po::value<int64_t>()->required(), "tokens per training sequence (windows hold seq-len + 1)")
      ("steps", po::value<int64_t>()->required(), "optimizer updates in total (a resume continues to this step)")
      ("batch-size", po::value<int64_t>()->default_value(8), "sequences per update")
      ("lr", po::value<double>()->default_value(3e-3), "peak learning rate")
      ("min-lr-ratio", po::value<double>()->default_value(0.1), "final learning rate of the cosine decay / --lr")
      ("warmup", po::value<int64_t>()->default_value(-1), "linear warmup steps (-1 = decay steps / 20)")
      ("decay-steps", po::value<int64_t>()->default_value(0),
       "cosine horizon (0 = --steps); set it to keep a schedule when --steps grows on resume")
      ("weight-decay", po::value<double>()->default_value(0.1), "AdamW decoupled weight decay on matrices")
      ("beta1", po::value<double>()->default_value(0.9), "AdamW beta1")
      ("beta2", po::value<double>()->default_value(0.95), "AdamW beta2")
      ("eps", po::value<double>()->default_value(1e-8), "AdamW epsilon")
      ("grad-clip", po::value<double>()->default_value(1.0), "clip the global gradient norm to this (0 = off)")
      ("seed", po::value<uint64_t>()->default_value(0), "seed of the initialisation and of the batch order")
      ("checkpoint-every", po::value<int64_t>()->default_value(0), "checkpoint every N steps (0 = only at the end)")
      ("log-every", po::value<int64_t>()->default_value(10), "progress line every N steps")
      ("chunk-size", po::value<int64_t>()->default_value(64), "chunk length of the chunked delta rule")
      ("save-dtype", po::value<std::string>()->default_value("f32"), "dtype of model.safetensors: f32 or bf16")
      ("threads", po::value<int>()->default_value(0), "CPU threads for LibTorch (0 = all cores)")
      ("out", po::value<std::string>()->required(),
       "output folder: fla checkpoint + training state (an existing run there is resumed)");
  d.add(model).add(train);
}

int64_t get_i(const po::variables_map& vm, const char* k) { return vm[k].as<int64_t>(); }

int run_train(const po::variables_map& vm) {
  ModelShape s = model_shape_from(vm);

  TrainOptions o;
  o.tokenizer = vm["tokenizer"].as<std::string>();
  if (s.vocab_size < 0) throw UsageError(cat("--vocab-size must be >= 0, got ", s.vocab_size));
  if (s.vocab_size == 0) s.vocab_size = Tokenizer::load(o.tokenizer)->vocab_size();
  o.config = build_model_config(s);
  o.data = vm["data"].as<std::vector<std::string>>();
  o.seq_len = get_i(vm, "seq-len");
  o.steps = get_i(vm, "steps");
  o.batch_size = get_i(vm, "batch-size");
  o.lr = vm["lr"].as<double>();
  o.min_lr_ratio = vm["min-lr-ratio"].as<double>();
  o.warmup = get_i(vm, "warmup");
  if (o.warmup < -1) throw UsageError(cat("--warmup must be >= 0 (or -1 = auto), got ", o.warmup));
  o.decay_steps = get_i(vm, "decay-steps");
  o.weight_decay = vm["weight-decay"].as<double>();
  o.beta1 = vm["beta1"].as<double>();
  o.beta2 = vm["beta2"].as<double>();
  o.eps = vm["eps"].as<double>();
  o.grad_clip = vm["grad-clip"].as<double>();
  o.seed = vm["seed"].as<uint64_t>();
  o.checkpoint_every = get_i(vm, "checkpoint-every");
  o.log_every = get_i(vm, "log-every");
  o.chunk_size = get_i(vm, "chunk-size");
  const std::string sd = vm["save-dtype"].as<std::string>();
  if (sd == "f32")
    o.save_dtype = torch::kFloat32;
  else if (sd == "bf16")
    o.save_dtype = torch::kBFloat16;
  else
    throw UsageError(cat("--save-dtype: expected f32 or bf16, got '", sd, "'"));
  o.out = vm["out"].as<std::string>();
  apply_threads(vm);
  train(o, std::cerr);
  return kExitOk;
}

}  // namespace

void register_train_commands(std::vector<Command>& out) {
  out.push_back({"train", "train a small DeltaNet / Gated DeltaNet from scratch (resumable)",
                 "rankprune train --arch {delta_net,gated_deltanet} [size options] --data FILE... --tokenizer T "
                 "--seq-len L --steps N [--batch-size B --lr --warmup --checkpoint-every N] --out DIR",
                 declare_train, run_train});
}

}  // namespace rankprune::cli
