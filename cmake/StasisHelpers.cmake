# Shared compile settings and helpers for stasis targets.

set(STASIS_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)

if(STASIS_SANITIZE)
  set(_san "")
  foreach(s IN LISTS STASIS_SANITIZE)
    if(NOT s MATCHES "^(address|undefined|thread)$")
      message(FATAL_ERROR "STASIS_SANITIZE: unknown sanitizer '${s}'")
    endif()
    list(APPEND _san ${s})
  endforeach()
  if("thread" IN_LIST _san AND "address" IN_LIST _san)
    message(FATAL_ERROR "STASIS_SANITIZE: thread cannot be combined with address")
  endif()
  list(JOIN _san "," _san_flag)
  add_compile_options(-fsanitize=${_san_flag} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${_san_flag})
endif()

if(STASIS_BUILD_FUZZERS)
  # Coverage instrumentation for everything the fuzz targets link; the targets themselves
  # add -fsanitize=fuzzer (tests/CMakeLists.txt).
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()

# ---- Layers and include paths ----------------------------------------------------------
#
# include/ is the public API (include/stasis/*.h) and the only include directory every
# target gets. A library's own folder (snapshot/, restore/, ...) is PRIVATE to it: its
# headers are internal. A library or program above it that needs those internals says so
# by linking <library>_internal, which stasis_library allows only from a higher layer:
#
#   common (0) <- snapshot (1) <- restore (2) <- runtime (3), torch_adapter (3) <- tools (4),
#   python (4)
#
# so an include that runs upward (snapshot including "restore/...") does not compile; the
# torch adapter's internals are its own (others use stasis/torch_plugin.h). A
# folder is put on the include path through a directory that holds nothing but a link to
# it (build/include-roots/<folder>/<folder>), so "#include "restore/x.h"" resolves and no
# other folder of the tree does. tests/ and bench/ sit above every layer.
set(STASIS_LAYER_common 0)
set(STASIS_LAYER_snapshot 1)
set(STASIS_LAYER_restore 2)
set(STASIS_LAYER_runtime 3)
set(STASIS_LAYER_torch_adapter 3)
set(STASIS_LAYER_tools 4)
set(STASIS_LAYER_python 4)
set(STASIS_LAYER_tests 5)
set(STASIS_LAYER_bench 5)

# stasis_folder_root(<out-var> <folder>): the include root that shows only <folder>.
function(stasis_folder_root out folder)
  set(root ${PROJECT_BINARY_DIR}/include-roots/${folder})
  if(NOT IS_SYMLINK ${root}/${folder})
    file(MAKE_DIRECTORY ${root})
    file(CREATE_LINK ${PROJECT_SOURCE_DIR}/${folder} ${root}/${folder} SYMBOLIC)
  endif()
  set(${out} ${root} PARENT_SCOPE)
endfunction()

# stasis_use_internals(<target> <folder> <library>...): <target>, built from <folder>, may
# include the private headers of each <library>; fails the configure unless the library's
# layer is below <folder>'s.
function(stasis_use_internals target folder)
  set(rank ${STASIS_LAYER_${folder}})
  if(rank STREQUAL "")
    message(FATAL_ERROR "${target}: folder '${folder}' has no layer (cmake/StasisHelpers.cmake)")
  endif()
  foreach(lib IN LISTS ARGN)
    get_target_property(lib_folder ${lib} STASIS_FOLDER)
    if(NOT lib_folder OR NOT ${STASIS_LAYER_${lib_folder}} LESS ${rank})
      message(FATAL_ERROR "${target} (${folder}/, layer ${rank}) may not use the internals of "
                          "${lib} (${lib_folder}/, layer ${STASIS_LAYER_${lib_folder}}): "
                          "dependencies point down the layers only")
    endif()
    if(lib_folder STREQUAL "torch_adapter" AND NOT folder MATCHES "^(tests|bench)$")
      message(FATAL_ERROR "${target} (${folder}/) may not use the internals of the torch "
                          "adapter: it is reached through stasis/torch_plugin.h")
    endif()
    target_link_libraries(${target} PRIVATE ${lib}_internal)
  endforeach()
endfunction()

# stasis_library(name FOLDER f SOURCES ... [DEPS ...] [INTERNAL ...] [PRIVATE_DEPS ...])
#   DEPS: libraries whose public API this one's public API builds on (PUBLIC);
#   INTERNAL: stasis libraries whose private headers this one includes (lower layers);
#   PRIVATE_DEPS: external libraries used inside.
# Also defines <name>_internal: <name> plus its folder on the include path (and the
# internals its own headers may include), for the layers above and for tests.
function(stasis_library name)
  cmake_parse_arguments(A "" "FOLDER" "SOURCES;DEPS;INTERNAL;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  stasis_folder_root(root ${A_FOLDER})
  target_include_directories(${name} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
                             PRIVATE ${root})
  target_compile_options(${name} PRIVATE ${STASIS_WARNINGS})
  target_link_libraries(${name} PUBLIC ${A_DEPS} PRIVATE ${A_PRIVATE_DEPS})
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON STASIS_FOLDER ${A_FOLDER})
  stasis_use_internals(${name} ${A_FOLDER} ${A_INTERNAL})

  add_library(${name}_internal INTERFACE)
  target_include_directories(${name}_internal INTERFACE ${root})
  target_link_libraries(${name}_internal INTERFACE ${name})
  foreach(lib IN LISTS A_INTERNAL)
    target_link_libraries(${name}_internal INTERFACE ${lib}_internal)
  endforeach()
endfunction()

# stasis_program(name FOLDER f SOURCES ... [INTERNAL ...] [DEPS ...]): an executable built
# from folder f (tools/, bench/), with f on its include path.
function(stasis_program name)
  cmake_parse_arguments(A "" "FOLDER" "SOURCES;DEPS;INTERNAL" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  stasis_folder_root(root ${A_FOLDER})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/include ${root})
  target_compile_options(${name} PRIVATE ${STASIS_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
  stasis_use_internals(${name} ${A_FOLDER} ${A_INTERNAL})
endfunction()

# stasis_test(name SOURCES ... [DEPS ...] [INTERNAL ...] LABELS ...)
# INTERNAL: stasis libraries whose private headers the test includes (tests are white-box).
function(stasis_test name)
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;DEPS;INTERNAL;LABELS" ${ARGN})
  stasis_program(${name} FOLDER tests SOURCES ${A_SOURCES} INTERNAL ${A_INTERNAL}
                 DEPS ${A_DEPS} stasis_testutil GTest::gtest GTest::gtest_main)
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  gtest_discover_tests(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT}
                       DISCOVERY_TIMEOUT 60)
endfunction()
