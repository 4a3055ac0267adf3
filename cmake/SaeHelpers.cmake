# sae_add_library(NAME SRCS ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
# Creates sae_NAME with the alias sae::NAME; the include root is the repository.
function(sae_add_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(sae_${name} STATIC ${ARG_SRCS})
  add_library(sae::${name} ALIAS sae_${name})
  target_include_directories(sae_${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(sae_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  target_compile_options(sae_${name} PRIVATE -Wall -Wextra)
endfunction()

# sae_add_test(NAME SRCS ... DEPS ... [LABELS ...] [TIMEOUT s])
function(sae_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  # blas_kernel_init.cc: the test runs on the BLAS kernel saeforge's binaries choose.
  add_executable(${name} ${ARG_SRCS} ${PROJECT_SOURCE_DIR}/tests/blas_kernel_init.cc)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} sae::base GTest::gtest GTest::gtest_main)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  if(SAE_SANITIZE OR SAE_TSAN)  # sanitized code runs 2-15x slower
    math(EXPR ARG_TIMEOUT "${ARG_TIMEOUT} * 3")
  endif()
  # Scratch files under this build tree (gtest's TempDir() reads TEST_TMPDIR),
  # so test runs of two checkouts on one machine do not share directories.
  set(tmp ${CMAKE_BINARY_DIR}/test-tmp/${name})
  file(MAKE_DIRECTORY ${tmp})
  # SAE_TEST_TIME_SCALE: how much longer tests wait for jobs (deadlines,
  # never assertions) in sanitized builds.
  set(scale 1)
  if(SAE_SANITIZE OR SAE_TSAN)
    set(scale 3)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${ARG_TIMEOUT}
    ENVIRONMENT "SAE_BIN_DIR=${CMAKE_BINARY_DIR}/bin;SAE_SOURCE_DIR=${PROJECT_SOURCE_DIR};TEST_TMPDIR=${tmp};SAE_TEST_TIME_SCALE=${scale}")
  if(ARG_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}")
  endif()
endfunction()
