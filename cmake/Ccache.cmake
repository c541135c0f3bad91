# Use ccache when present. PCH-compatible sloppiness so the precompiled header is cached too.
find_program(RANKPRUNE_CCACHE ccache)
if(RANKPRUNE_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
      ${RANKPRUNE_CCACHE})
  message(STATUS "rankprune: using ccache (${RANKPRUNE_CCACHE})")
endif()
