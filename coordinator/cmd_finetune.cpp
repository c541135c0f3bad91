// `rankprune finetune`: LoRA + distillation recovery fine-tuning of a pruned model
// (docs/finetune.md).
#include <iostream>

#include "common/error.h"
#include "coordinator/cli.h"
#include "worker/finetune.h"

namespace rankprune::cli {
namespace {

void declare_finetune(po::options_description& d) {
  po::options_description models("Models");
  models.add_options()
      ("model", po::value<std::string>()->required(), "pruned student: fla checkpoint folder (rankprune prune --out)")
      ("teacher", po::value<std::string>()->required(),
       "unpruned teacher: the fla folder the student was pruned from (same vocabulary and hidden size)");
  po::options_description lora("LoRA and distillation");
  lora.add_options()
      ("lora-rank", po::value<int64_t>()->default_value(32), "LoRA rank r (>= 1)")
      ("lora-alpha", po::value<double>()->default_value(64), "LoRA alpha: the update is (alpha / r) B A")
      ("targets", po::value<std::string>()->default_value("q,k,v"),
       "projections with adapters: comma-separated subset of q,k,v,o")
      ("distill-temperature", po::value<double>()->default_value(2.0), "softmax temperature T of the KL term")
      ("distill-weight", po::value<double>()->default_value(1.0),
       "weight of T^2 KL(teacher || student) added to the cross entropy (0 = cross entropy only)");
  po::options_description train("Training");
  train.add_options()
      ("data", po::value<std::vector<std::string>>()->multitoken()->required(),
       "training text (.txt/.tokens/.raw: one document; .jsonl: \"text\" per line) or .npy [N, seq-len + 1] ids")
      ("tokenizer", po::value<std::string>()->default_value(""),
       "SentencePiece .model or 'bytes' (default: <model>/tokenizer.model)")
      ("seq-len", po::value<int64_t>()->required(), "tokens per training sequence")
      ("steps", po::value<int64_t>()->required(), "optimizer updates")
      ("batch-size", po::value<int64_t>()->default_value(8), "sequences per update")
      ("lr", po::value<double>()->default_value(1e-3), "peak learning rate of A and B")
      ("min-lr-ratio", po::value<double>()->default_value(0.1, "0.1"), "final learning rate of the cosine decay / --lr")
      ("warmup", po::value<int64_t>()->default_value(-1), "linear warmup steps (-1 = steps / 20)")
      ("weight-decay", po::value<double>()->default_value(0.0), "AdamW decoupled weight decay on A and B")
      ("grad-clip", po::value<double>()->default_value(1.0), "clip the global gradient norm to this (0 = off)")
      ("seed", po::value<uint64_t>()->default_value(0), "seed of the A initialisation and of the batch order")
      ("log-every", po::value<int64_t>()->default_value(10), "progress line every N steps")
      ("chunk-size", po::value<int64_t>()->default_value(64), "chunk length of the chunked delta rule")
      ("threads", po::value<int>()->default_value(0), "CPU threads for LibTorch (0 = all cores)")
      ("out", po::value<std::string>()->required(),
       "output folder (new or empty): the merged fla checkpoint, lora_adapter.safetensors, finetune_log.jsonl");
  d.add(models).add(lora).add(train);
}

int64_t get_i(const po::variables_map& vm, const char* k) { return vm[k].as<int64_t>(); }

int run_finetune(const po::variables_map& vm) {
  FinetuneOptions o;
  o.model = vm["model"].as<std::string>();
  o.teacher = vm["teacher"].as<std::string>();
  o.lora.rank = get_i(vm, "lora-rank");
  o.lora.alpha = vm["lora-alpha"].as<double>();
  o.lora.targets = split_list(vm["targets"].as<std::string>());
  o.lora.targets = parse_lora_targets(o.lora.targets);
  o.temperature = vm["distill-temperature"].as<double>();
  o.distill_weight = vm["distill-weight"].as<double>();
  o.data = vm["data"].as<std::vector<std::string>>();
  o.tokenizer = vm["tokenizer"].as<std::string>();
  o.seq_len = get_i(vm, "seq-len");
  o.steps = get_i(vm, "steps");
  o.batch_size = get_i(vm, "batch-size");
  o.lr = vm["lr"].as<double>();
  o.min_lr_ratio = vm["min-lr-ratio"].as<double>();
  o.warmup = get_i(vm, "warmup");
  o.weight_decay = vm["weight-decay"].as<double>();
  o.grad_clip = vm["grad-clip"].as<double>();
  o.seed = vm["seed"].as<uint64_t>();
  o.log_every = get_i(vm, "log-every");
  o.chunk_size = get_i(vm, "chunk-size");
  o.out = vm["out"].as<std::string>();
  apply_threads(vm);
  finetune(o, std::cerr);
  return kExitOk;
}

}  // namespace

void register_finetune_commands(std::vector<Command>& out) {
  out.push_back({"finetune", "recover a pruned model: LoRA fine-tuning with distillation from the unpruned teacher",
                 "rankprune finetune --model PRUNED --teacher BASE --data FILE... [--tokenizer T] --seq-len L "
                 "--steps N [--lora-rank 32 --lora-alpha 64 --targets q,k,v --distill-temperature 2 "
                 "--distill-weight 1 --batch-size --lr --warmup --weight-decay --grad-clip --seed --log-every "
                 "--threads] --out DIR",
                 declare_finetune, run_finetune});
}

}  // namespace rankprune::cli
