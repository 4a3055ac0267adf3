# sae_add_library(NAME SRCS ... [HEADERS ...] [INTERNAL_HEADERS ...] [EXCLUDE_HEADERS ...]
#                 [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
# Creates sae_NAME with the alias sae::NAME.
#
# Include paths: every library exposes only its own headers. HEADERS (default:
# the *.h files of this directory that are not INTERNAL_HEADERS or
# EXCLUDE_HEADERS, those of another library in the same folder) are linked,
# at their repository paths, into build/include/NAME, its PUBLIC include
# directory; INTERNAL_HEADERS into build/include-internal/NAME, seen by its own
# sources only. `#include "core/base/config.h"` keeps its spelling, and a
# target that includes a header of a library it does not link (directly or
# through PUBLIC_DEPS) fails to compile. Dependencies whose headers appear in
# this library's public headers go in PUBLIC_DEPS, the others in PRIVATE_DEPS.
function(sae_add_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;HEADERS;INTERNAL_HEADERS;EXCLUDE_HEADERS;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  if(NOT ARG_HEADERS)
    file(GLOB ARG_HEADERS CONFIGURE_DEPENDS RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR}/*.h)
    if(ARG_INTERNAL_HEADERS OR ARG_EXCLUDE_HEADERS)
      list(REMOVE_ITEM ARG_HEADERS ${ARG_INTERNAL_HEADERS} ${ARG_EXCLUDE_HEADERS})
    endif()
  endif()
  add_library(sae_${name} STATIC ${ARG_SRCS})
  add_library(sae::${name} ALIAS sae_${name})
  sae_expose_headers(sae_${name} PUBLIC ${CMAKE_BINARY_DIR}/include/${name} ${ARG_HEADERS})
  if(ARG_INTERNAL_HEADERS)
    sae_expose_headers(sae_${name} PRIVATE ${CMAKE_BINARY_DIR}/include-internal/${name} ${ARG_INTERNAL_HEADERS})
  endif()
  target_link_libraries(sae_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  target_compile_options(sae_${name} PRIVATE -Wall -Wextra)
endfunction()

# sae_expose_headers(TARGET PUBLIC|PRIVATE|INTERFACE DIR HEADER...): a fresh DIR
# holding a symbolic link per header (paths relative to this source
# directory) at its path in the repository, added to TARGET's include path.
# Links, not copies: an edited header is seen at once; the folder is rebuilt
# at every configure, so a header moved to another library leaves no trace.
function(sae_expose_headers target scope dir)
  file(REMOVE_RECURSE ${dir})
  foreach(h ${ARGN})
    get_filename_component(abs ${h} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    if(NOT EXISTS ${abs})
      message(FATAL_ERROR "${target}: header ${h} not found in ${CMAKE_CURRENT_SOURCE_DIR}")
    endif()
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${abs})
    get_filename_component(sub ${dir}/${rel} DIRECTORY)
    file(MAKE_DIRECTORY ${sub})
    file(CREATE_LINK ${abs} ${dir}/${rel} SYMBOLIC)
  endforeach()
  file(MAKE_DIRECTORY ${dir})
  target_include_directories(${target} ${scope} ${dir})
endfunction()

# sae_add_test(NAME SRCS ... DEPS ... [TORCH] [LABELS ...] [TIMEOUT s]
#              [ENVIRONMENT VAR=VALUE ...])
# A GoogleTest binary in build/tests and its ctest entry. Its sources see the
# headers of DEPS and of sae::testing (tests/testing/ and the test folders'
# helper headers), which every test links. Precompiled (sae_use_exe_pch):
# gtest, nlohmann/json and the standard headers tests use; with TORCH, ATen
# too, for the tests whose files use tensors or that link a LibTorch library
# (its -D_GLIBCXX_USE_CXX11_ABI must match the PCH's). The test's own files
# compile at SAE_TEST_OPTIMIZE (-O0): they run once per test, while the
# libraries they link keep the build type's flags. ENVIRONMENT is added to
# the variables every test gets (SAE_BIN_DIR, SAE_SOURCE_DIR, TEST_TMPDIR);
# for more later, sae_test_environment, which appends too.
function(sae_add_test name)
  cmake_parse_arguments(ARG "TORCH" "TIMEOUT" "SRCS;DEPS;LABELS;ENVIRONMENT" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  # sae_blas_kernel_init (tests/testing): the test runs on the BLAS kernel
  # saeforge's binaries choose.
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} sae::testing sae_blas_kernel_init GTest::gtest GTest::gtest_main)
  target_compile_options(${name} PRIVATE ${SAE_TEST_OPTIMIZE})
  if(ARG_TORCH)
    sae_use_exe_pch(${name} TORCH)
  else()
    sae_use_exe_pch(${name})
  endif()
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  sae_test_properties(${name} ${ARG_TIMEOUT} "${ARG_LABELS}" ${ARG_ENVIRONMENT})
endfunction()

# sae_add_test_part(BINARY PART FILTER [TIMEOUT s] [LABELS ...]): one more
# ctest entry, BINARY_PART, that runs the gtest binary BINARY (made by
# sae_add_test) on the tests GTEST_FILTER selects: a slow binary split into
# groups, each with its own timeout.
function(sae_add_test_part binary part filter)
  cmake_parse_arguments(ARG "" "TIMEOUT" "LABELS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  add_test(NAME ${binary}_${part} COMMAND ${binary})
  sae_test_properties(${binary}_${part} ${ARG_TIMEOUT} "${ARG_LABELS}" GTEST_FILTER=${filter})
endfunction()

# The timeout (tripled in sanitized builds: sanitized code runs 2-15x
# slower), labels and environment of a ctest entry.
function(sae_test_properties test timeout labels)
  if(SAE_SANITIZE OR SAE_TSAN)
    math(EXPR timeout "${timeout} * 3")
  endif()
  set_tests_properties(${test} PROPERTIES TIMEOUT ${timeout})
  sae_test_environment(${test} ${ARGN})
  if(labels)
    set_tests_properties(${test} PROPERTIES LABELS "${labels}")
  endif()
endfunction()

# sae_test_environment(TEST [VAR=VALUE ...]): appends to TEST's ENVIRONMENT the
# variables every saeforge test gets, then the given ones (a later value of
# the same variable wins). Scratch files go under this build tree (gtest's
# TempDir() reads TEST_TMPDIR), so test runs of two checkouts on one machine
# do not share directories. For add_test entries of their own, too.
function(sae_test_environment test)
  set(tmp ${CMAKE_BINARY_DIR}/test-tmp/${test})
  file(MAKE_DIRECTORY ${tmp})
  # SAE_TEST_TIME_SCALE: how much longer tests wait for jobs (deadlines,
  # never assertions) in sanitized builds.
  set(scale 1)
  if(SAE_SANITIZE OR SAE_TSAN)
    set(scale 3)
  endif()
  set_property(TEST ${test} APPEND PROPERTY ENVIRONMENT
    "SAE_BIN_DIR=${CMAKE_BINARY_DIR}/bin" "SAE_SOURCE_DIR=${PROJECT_SOURCE_DIR}" "TEST_TMPDIR=${tmp}"
    "SAE_TEST_TIME_SCALE=${scale}" ${ARGN})
endfunction()

# sae_exe_pch(NAME HEADERS ... [DEPS ...] [OPTIONS ...]): a precompiled header
# for executables (tests, benchmarks) to share with
# target_precompile_headers(EXE REUSE_FROM NAME). Executables compile with
# -fPIE and the libraries with -fPIC, and GCC refuses a PCH made with the
# other, so the libraries' ATen PCH (core/sae) cannot serve them. NAME is an
# object library of one empty file, compiled as executables are; DEPS give it
# their compile definitions (a PCH is used only when they match).
#
# OPTIONS: compile options the executables using it also have (a PCH made at
# another -O is ignored).
function(sae_exe_pch name)
  cmake_parse_arguments(ARG "" "" "HEADERS;DEPS;OPTIONS" ${ARGN})
  set(src ${CMAKE_BINARY_DIR}/pch/${name}.cc)
  if(NOT EXISTS ${src})
    file(WRITE ${src} "// The translation unit that carries ${name}'s precompiled header.\n")
  endif()
  add_library(${name} OBJECT ${src})
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE OFF)
  target_compile_options(${name} PRIVATE ${CMAKE_CXX_COMPILE_OPTIONS_PIE} ${ARG_OPTIONS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  target_precompile_headers(${name} PRIVATE ${ARG_HEADERS})
endfunction()

# sae_exe_pchs(): the two precompiled headers that every test and benchmark
# shares (sae_use_exe_pch), made once at the top level: sae_exe_pch_torch
# (ATen, then the rest) and sae_exe_pch (the rest: nlohmann/json, the
# standard headers the tests and benchmarks use and, when tests are built,
# gtest). Both are made with what every user compiles with too
# (SAE_EXE_PCH_OPTIONS): SAE_TEST_OPTIMIZE, -pthread (gRPC's targets add it,
# and GCC refuses a PCH made without the _REENTRANT it defines) and gtest's
# -DGTEST_HAS_PTHREAD=1 (the benchmarks do not link gtest).
macro(sae_exe_pchs)
  set(_pch_headers <nlohmann/json.hpp> <algorithm> <cstdio> <filesystem> <fstream> <map> <memory> <sstream>
      <string> <vector>)
  set(_pch_deps nlohmann_json::nlohmann_json)
  set(SAE_EXE_PCH_OPTIONS ${SAE_TEST_OPTIMIZE} -pthread)
  if(SAE_BUILD_TESTS)
    list(PREPEND _pch_headers <gtest/gtest.h>)
    list(APPEND _pch_deps GTest::gtest)
    list(APPEND SAE_EXE_PCH_OPTIONS $<TARGET_PROPERTY:GTest::gtest,INTERFACE_COMPILE_OPTIONS>)
  endif()
  sae_exe_pch(sae_exe_pch HEADERS ${_pch_headers} DEPS ${_pch_deps} OPTIONS ${SAE_EXE_PCH_OPTIONS})
  sae_exe_pch(sae_exe_pch_torch HEADERS <ATen/ATen.h> ${_pch_headers} DEPS ${_pch_deps} sae::sae
              OPTIONS ${SAE_EXE_PCH_OPTIONS})
endmacro()

# sae_use_exe_pch(TARGET [TORCH]): TARGET, a test or benchmark, compiles with
# sae_exe_pch (TORCH: sae_exe_pch_torch, for the executables that link a
# LibTorch library, whose -D_GLIBCXX_USE_CXX11_ABI must match) and with the
# options it was made with. CMake passes -Winvalid-pch: a PCH that GCC
# cannot use is reported, not silently parsed again.
function(sae_use_exe_pch target)
  cmake_parse_arguments(ARG "TORCH" "" "" ${ARGN})
  target_compile_options(${target} PRIVATE ${SAE_EXE_PCH_OPTIONS})
  if(ARG_TORCH)
    target_precompile_headers(${target} REUSE_FROM sae_exe_pch_torch)
  else()
    target_precompile_headers(${target} REUSE_FROM sae_exe_pch)
  endif()
endfunction()
