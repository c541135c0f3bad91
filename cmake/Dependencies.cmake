# Finds every dependency and exposes each as an imported/interface target named rp_deps_*.
# Missing required dependencies stop configuration with the Debian package that provides them.

macro(rp_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "rankprune: ${what} not found. On Debian: apt-get install ${package} "
                        "(or run scripts/setup.sh, which installs everything).")
  endif()
endmacro()

# --- LibTorch (Debian's 1.13 CPU build here; a CUDA LibTorch via CMAKE_PREFIX_PATH elsewhere)
find_package(Torch QUIET)
rp_require(Torch_FOUND "LibTorch" libtorch-dev)
add_library(rp_deps_torch INTERFACE)
target_link_libraries(rp_deps_torch INTERFACE ${TORCH_LIBRARIES})
# TORCH_CXX_FLAGS carries the ABI define; split it into compile options.
separate_arguments(_rp_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(rp_deps_torch INTERFACE ${_rp_torch_flags})
# A CUDA LibTorch (the one inside an installed PyTorch on a GPU node) brings torch_cuda: models can
# then run with --device cuda. Debian's libtorch-dev is CPU-only, and --device cuda says so.
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
  set(RANKPRUNE_TORCH_CUDA ON)
  target_compile_definitions(rp_deps_torch INTERFACE RANKPRUNE_TORCH_CUDA=1)
else()
  set(RANKPRUNE_TORCH_CUDA OFF)
endif()
target_compile_definitions(rp_deps_torch INTERFACE RANKPRUNE_TORCH_VERSION="${Torch_VERSION}")
message(STATUS "rankprune: LibTorch ${Torch_VERSION} (CUDA ${RANKPRUNE_TORCH_CUDA})")

# --- nlohmann_json
find_package(nlohmann_json 3.9 QUIET)
rp_require(nlohmann_json_FOUND "nlohmann_json" nlohmann-json3-dev)

# --- Boost.Program_options
find_package(Boost 1.70 QUIET COMPONENTS program_options)
rp_require(Boost_FOUND "Boost.Program_options" libboost-program-options-dev)

# --- SQLite3
find_package(SQLite3 QUIET)
rp_require(SQLite3_FOUND "SQLite3" libsqlite3-dev)

# --- pkg-config: LAPACKE (+ LAPACK) and sentencepiece
find_package(PkgConfig QUIET)
rp_require(PKG_CONFIG_FOUND "pkg-config" pkg-config)
pkg_check_modules(RP_LAPACKE QUIET IMPORTED_TARGET lapacke)
rp_require(RP_LAPACKE_FOUND "LAPACKE" liblapacke-dev)
pkg_check_modules(RP_SPM QUIET IMPORTED_TARGET sentencepiece)
rp_require(RP_SPM_FOUND "sentencepiece" libsentencepiece-dev)
find_package(LAPACK QUIET)
rp_require(LAPACK_FOUND "LAPACK" liblapack-dev)
add_library(rp_deps_lapack INTERFACE)
target_link_libraries(rp_deps_lapack INTERFACE PkgConfig::RP_LAPACKE ${LAPACK_LIBRARIES})
add_library(rp_deps_spm INTERFACE)
target_link_libraries(rp_deps_spm INTERFACE PkgConfig::RP_SPM)

# --- GoogleTest
if(RANKPRUNE_BUILD_TESTS)
  find_package(GTest QUIET)
  rp_require(GTest_FOUND "GoogleTest" libgtest-dev)
endif()

# --- MPI (optional: single-process fallback)
set(RANKPRUNE_HAVE_MPI OFF)
if(RANKPRUNE_WITH_MPI)
  find_package(MPI QUIET COMPONENTS CXX)
  if(MPI_CXX_FOUND)
    set(RANKPRUNE_HAVE_MPI ON)
  else()
    message(STATUS "rankprune: MPI not found; building the single-process communicator only")
  endif()
endif()
message(STATUS "rankprune: MPI ${RANKPRUNE_HAVE_MPI}")

# --- CUDA + NCCL (optional: on when nvcc is found; kernels compile without a GPU)
set(RANKPRUNE_HAVE_CUDA OFF)
if(RANKPRUNE_WITH_CUDA)
  find_program(RP_NVCC nvcc HINTS /usr/local/cuda/bin ENV CUDA_HOME PATH_SUFFIXES bin)
  if(RP_NVCC)
    set(CMAKE_CUDA_COMPILER ${RP_NVCC})
    include(CheckLanguage)
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      # Default: the H200 of the device machine (sm_90); one architecture keeps CI's build short.
      set(RANKPRUNE_CUDA_ARCHITECTURES "90" CACHE STRING "CUDA architectures of the kernels in kernels/cuda")
      set(CMAKE_CUDA_ARCHITECTURES ${RANKPRUNE_CUDA_ARCHITECTURES})
      enable_language(CUDA)
      find_package(CUDAToolkit QUIET)
      if(CUDAToolkit_FOUND)
        set(RANKPRUNE_HAVE_CUDA ON)
      endif()
    endif()
  endif()
endif()
if(RANKPRUNE_HAVE_CUDA)
  # NCCL ships inside the toolkit here (no package, no CMake config): import it by hand.
  find_path(RP_NCCL_INCLUDE nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV NCCL_HOME PATH_SUFFIXES include)
  find_library(RP_NCCL_LIB nccl HINTS ${CUDAToolkit_LIBRARY_DIR} ENV NCCL_HOME PATH_SUFFIXES lib lib64)
  if(RP_NCCL_INCLUDE AND RP_NCCL_LIB)
    add_library(rp_nccl SHARED IMPORTED)
    set_target_properties(rp_nccl PROPERTIES IMPORTED_LOCATION ${RP_NCCL_LIB}
                          INTERFACE_INCLUDE_DIRECTORIES ${RP_NCCL_INCLUDE})
    set(RANKPRUNE_HAVE_NCCL ON)
  else()
    set(RANKPRUNE_HAVE_NCCL OFF)
  endif()
  message(STATUS "rankprune: CUDA ${CUDAToolkit_VERSION} (nvcc ${RP_NVCC}), NCCL ${RANKPRUNE_HAVE_NCCL}")
else()
  message(STATUS "rankprune: CUDA off (no nvcc); GPU entry points are stubs")
endif()
