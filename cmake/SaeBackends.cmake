# Communicator backends of core/comm: SAE_WITH_MPI, SAE_WITH_GLOO and
# SAE_WITH_NCCL, each auto (the default: built when its dependencies are
# found), ON (required: configure fails, naming what is missing) or OFF (not
# built, even when found). Sets SAE_HAVE_MPI / SAE_HAVE_GLOO / SAE_HAVE_NCCL
# (and SAE_MPIEXEC) for core/comm and the tests. Included from the top-level
# CMakeLists.txt after LibTorch and CUDA are known.

# sae_backend_choice(NAME FOUND WHY): SAE_HAVE_NAME from SAE_WITH_NAME and
# whether the dependencies were FOUND; WHY says what is missing.
function(sae_backend_choice name found why)
  set(choice "${SAE_WITH_${name}}")
  string(TOLOWER "${choice}" lower)
  if(lower STREQUAL "auto")
    set(have ${found})
  elseif(choice)
    if(NOT found)
      message(FATAL_ERROR "SAE_WITH_${name}=${choice}, but ${why} "
                          "(configure with -DSAE_WITH_${name}=auto or OFF to build without it)")
    endif()
    set(have ON)
  else()
    set(have OFF)
  endif()
  if(have)
    set(SAE_HAVE_${name} ON PARENT_SCOPE)
  else()
    set(SAE_HAVE_${name} OFF PARENT_SCOPE)
  endif()
endfunction()

foreach(b MPI GLOO NCCL)
  set(SAE_WITH_${b} "auto" CACHE STRING "Build the ${b} communicator backend: auto, ON or OFF")
  set_property(CACHE SAE_WITH_${b} PROPERTY STRINGS auto ON OFF)
endforeach()

# c10d's TCPStore (libtorch-dev): the rendezvous store of gloo and of nccl
# without mpirun (core/comm/tcp_store.cc).
find_path(SAE_C10D_INCLUDE torch/csrc/distributed/c10d/TCPStore.hpp PATHS ${TORCH_INCLUDE_DIRS})

# MPI: Open MPI (libopenmpi-dev).
set(MPI_CXX_FOUND OFF)
if(SAE_WITH_MPI)  # auto or ON: look for it
  find_package(MPI COMPONENTS CXX QUIET)
endif()
sae_backend_choice(MPI "${MPI_CXX_FOUND}" "MPI (C++) was not found (Debian: libopenmpi-dev)")
set(SAE_MPIEXEC "${MPIEXEC_EXECUTABLE}")

# Gloo through LibTorch's c10d: ProcessGroupGloo.hpp (libtorch-dev) and
# Gloo's own headers (libgloo-dev).
find_path(SAE_GLOO_INCLUDE gloo/algorithm.h)
find_path(SAE_C10D_GLOO_INCLUDE torch/csrc/distributed/c10d/ProcessGroupGloo.hpp PATHS ${TORCH_INCLUDE_DIRS})
set(gloo_found OFF)
if(SAE_GLOO_INCLUDE AND SAE_C10D_GLOO_INCLUDE AND SAE_C10D_INCLUDE)
  set(gloo_found ON)
endif()
sae_backend_choice(GLOO "${gloo_found}"
  "Gloo needs gloo/algorithm.h (libgloo-dev) and LibTorch's c10d headers (ProcessGroupGloo.hpp, TCPStore.hpp)")

# NCCL: a CUDA LibTorch, CUDA's runtime, and nccl.h + libnccl from
# SAE_NCCL_ROOT, NCCL_HOME, the CUDA toolkit, or the nvidia/nccl folder of
# the python that carries LibTorch.
set(nccl_found OFF)
set(nccl_why "NCCL needs CUDA (SAE_HAVE_CUDA is OFF)")
if(SAE_HAVE_CUDA AND SAE_WITH_NCCL)
  find_package(CUDAToolkit QUIET)
  set(nccl_hints ${SAE_NCCL_ROOT} $ENV{NCCL_HOME} ${CUDAToolkit_LIBRARY_ROOT})
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(COMMAND ${Python3_EXECUTABLE} -c "import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])"
      OUTPUT_VARIABLE py_nccl OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    list(APPEND nccl_hints ${py_nccl})
  endif()
  # (CUDAToolkit_LIBRARY_ROOT is often empty: the toolkit's own include and
  # library folders, where NVIDIA's CUDA 13 packages put nccl.h, are hints too.)
  find_path(SAE_NCCL_INCLUDE nccl.h HINTS ${nccl_hints} ${CUDAToolkit_INCLUDE_DIRS} PATH_SUFFIXES include)
  find_library(SAE_NCCL_LIBRARY NAMES nccl libnccl.so.2 HINTS ${nccl_hints} ${CUDAToolkit_LIBRARY_DIR}
    PATH_SUFFIXES lib lib64)
  if(SAE_NCCL_INCLUDE AND SAE_NCCL_LIBRARY AND TARGET CUDA::cudart AND SAE_C10D_INCLUDE)
    set(nccl_found ON)
  else()
    set(nccl_why "NCCL was not found (nccl.h: ${SAE_NCCL_INCLUDE}, library: ${SAE_NCCL_LIBRARY}; set SAE_NCCL_ROOT), or CUDA's runtime (CUDA::cudart) or c10d's TCPStore.hpp is missing")
  endif()
endif()
sae_backend_choice(NCCL "${nccl_found}" "${nccl_why}")

message(STATUS "saeforge: communicator backends: local, MPI ${SAE_HAVE_MPI}, Gloo ${SAE_HAVE_GLOO}, NCCL ${SAE_HAVE_NCCL}")
