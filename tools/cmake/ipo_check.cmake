# Included by ./build.sh into MLX's top-level project (CMAKE_PROJECT_mlx_INCLUDE).
#
# MLX builds its Python extension with nanobind's LTO option. Some toolchains
# cannot link LTO objects (e.g. a GCC installed without lto-wrapper, as on the
# CUDA machine this project is tested on: "could not run lto-wrapper"). Where
# CMake finds that interprocedural optimization does not work, turn it off for
# the extension once all targets exist; elsewhere nothing changes.
include(CheckIPOSupported)
check_ipo_supported(RESULT _tq_ipo_ok OUTPUT _tq_ipo_output LANGUAGES CXX)
if(NOT _tq_ipo_ok)
  message(STATUS "TurboQuant build: LTO not supported here, building the "
                 "Python extension without it")
  function(_tq_disable_ipo)
    foreach(_t core nanobind-static)
      if(TARGET ${_t})
        set_target_properties(
          ${_t} PROPERTIES INTERPROCEDURAL_OPTIMIZATION OFF
                           INTERPROCEDURAL_OPTIMIZATION_RELEASE OFF
                           INTERPROCEDURAL_OPTIMIZATION_MINSIZEREL OFF)
      endif()
    endforeach()
  endfunction()
  cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL _tq_disable_ipo)
endif()
