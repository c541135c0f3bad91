# The fuzz targets, listed once: fuzz/CMakeLists.txt builds them as libFuzzer binaries
# (-DRANKPRUNE_BUILD_FUZZ=ON), tests/CMakeLists.txt compiles the same sources into the normal
# suite's replay of the regression corpus (tests/fuzz_regress). `fn` is called as
#   fn(NAME SOURCES src... LIBS lib... [DEFS def...])   (sources relative to the source root).
macro(rp_fuzz_target_list fn)
  cmake_language(CALL ${fn} fuzz_safetensors SOURCES fuzz/fuzz_safetensors.cpp LIBS rp_model)
  cmake_language(CALL ${fn} fuzz_safetensors_index SOURCES fuzz/fuzz_safetensors_index.cpp LIBS rp_model)
  cmake_language(CALL ${fn} fuzz_config SOURCES fuzz/fuzz_config.cpp LIBS rp_model)
  cmake_language(CALL ${fn} fuzz_npy SOURCES fuzz/fuzz_npy.cpp LIBS rp_model)
  cmake_language(CALL ${fn} fuzz_rwkv7 SOURCES fuzz/fuzz_rwkv7.cpp LIBS rp_model)
  cmake_language(CALL ${fn} fuzz_llama2c SOURCES fuzz/fuzz_llama2c.cpp LIBS rp_model)
  cmake_language(CALL ${fn} fuzz_sp_model SOURCES fuzz/fuzz_sp_model.cpp LIBS rp_tokenizer)
  cmake_language(CALL ${fn} fuzz_bpe SOURCES fuzz/fuzz_bpe.cpp LIBS rp_tokenizer)
  foreach(_rp_task piqa arc hellaswag winogrande lambada wikitext)
    cmake_language(CALL ${fn} fuzz_task_${_rp_task} SOURCES fuzz/fuzz_task.cpp LIBS rp_eval DEFS RP_FUZZ_TASK=${_rp_task})
  endforeach()
  cmake_language(CALL ${fn} fuzz_db SOURCES fuzz/fuzz_db.cpp LIBS rp_storage)
  # The sweep's option registry lives in the CLI sources (not a library): compiled in.
  cmake_language(CALL ${fn} fuzz_sweep_ini
                 SOURCES fuzz/fuzz_sweep_ini.cpp coordinator/cli.cpp coordinator/cmd_sweep.cpp coordinator/cmd_eval.cpp
                 LIBS rp_coordinator rp_prune rp_worker rp_eval_engine rp_storage rp_model Boost::program_options)
endmacro()
