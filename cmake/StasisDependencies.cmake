# Finds the Debian packages named in DEVELOPERS.md. Required ones fail loudly with the
# package to install; optional ones (CUDA, libtorch, liburing) follow the AUTO rule.
find_package(PkgConfig REQUIRED)

macro(stasis_require_pkg var module debpkg)
  pkg_check_modules(${var} IMPORTED_TARGET ${module})
  if(NOT ${var}_FOUND)
    message(FATAL_ERROR "${module} not found: apt-get install ${debpkg} (or run scripts/setup)")
  endif()
endmacro()

stasis_require_pkg(ZSTD libzstd libzstd-dev)
stasis_require_pkg(XXHASH libxxhash libxxhash-dev)
stasis_require_pkg(HTTPLIB cpp-httplib libcpp-httplib-dev)  # the clients of tests and benches
stasis_require_pkg(CURL libcurl libcurl4-openssl-dev)       # http:// inputs of `stasis serve`
find_package(ZLIB REQUIRED)                                 # gzip/deflate request bodies
# Boost.Beast and Asio (header-only): the HTTP server of `stasis serve`.
find_package(Boost 1.74 QUIET)
if(NOT Boost_FOUND)
  message(FATAL_ERROR "Boost >= 1.74 headers not found: apt-get install libboost1.74-dev (or run scripts/setup)")
endif()
find_package(Threads REQUIRED)
find_package(spdlog REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 REQUIRED)

# Optional: liburing.
set(STASIS_URING_FOUND OFF)
if(NOT STASIS_WITH_URING STREQUAL "OFF")
  pkg_check_modules(URING IMPORTED_TARGET liburing)
  if(URING_FOUND)
    set(STASIS_URING_FOUND ON)
  elseif(STASIS_WITH_URING STREQUAL "ON")
    message(FATAL_ERROR "STASIS_WITH_URING=ON but liburing was not found (apt-get install liburing-dev)")
  else()
    message(STATUS "liburing not found: io_uring reader disabled (pread pool only)")
  endif()
endif()

# Optional: CUDA toolkit headers (driver API only; the driver is dlopen'ed at run time).
set(STASIS_CUDA_FOUND OFF)
if(NOT STASIS_WITH_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(STASIS_CUDA_FOUND ON)
  elseif(STASIS_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "STASIS_WITH_CUDA=ON but the CUDA toolkit was not found")
  else()
    message(STATUS "CUDA toolkit not found: cuda backend disabled")
  endif()
endif()

# Optional: libtorch (the adapter in torch_adapter/: libstasis_torch.so).
set(STASIS_TORCH_FOUND OFF)
if(NOT STASIS_WITH_TORCH STREQUAL "OFF")
  # A CUDA build of PyTorch (the pip wheels, the H200 machine's 2.11) enables the CUDA
  # language in its config and try_runs a GPU probe. stasis compiles no CUDA sources,
  # so pin what that probe would pick: without this, CUDA inherits our C++20, which
  # CMake 3.25 cannot map onto nvcc ("requires the language dialect CUDA20"), and the
  # whole configure fails.
  if(NOT DEFINED CMAKE_CUDA_STANDARD)
    set(CMAKE_CUDA_STANDARD 17)
  endif()
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(TORCH_CUDA_ARCH_LIST "9.0")
  endif()
  find_package(Torch QUIET)
  if(Torch_FOUND)
    # TorchConfig finds its Caffe2 half with find_package, which can land in another
    # installation (Debian's libtorch under /usr when Torch_DIR names a pip wheel): the
    # headers of one and the libraries of the other then fail at link time.
    get_filename_component(_stasis_torch_cmake "${Torch_DIR}/.." ABSOLUTE)
    get_filename_component(_stasis_caffe2_cmake "${Caffe2_DIR}/.." ABSOLUTE)
    if(NOT _stasis_torch_cmake STREQUAL _stasis_caffe2_cmake)
      message(FATAL_ERROR "libtorch comes from two installations: Torch_DIR=${Torch_DIR}, "
                          "Caffe2_DIR=${Caffe2_DIR}. Pass -DCaffe2_DIR=<the Caffe2 beside "
                          "Torch_DIR>, or put that libtorch first on CMAKE_PREFIX_PATH.")
    endif()
    set(STASIS_TORCH_FOUND ON)
  elseif(STASIS_WITH_TORCH STREQUAL "ON")
    message(FATAL_ERROR "STASIS_WITH_TORCH=ON but libtorch was not found")
  else()
    message(STATUS "libtorch not found: torch adapter disabled")
  endif()
endif()

if(STASIS_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()
if(STASIS_BUILD_BENCH)
  find_package(benchmark QUIET)
endif()
