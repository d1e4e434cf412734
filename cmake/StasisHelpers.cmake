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

# stasis_library(name SOURCES ... DEPS ... [PRIVATE_DEPS ...])
function(stasis_library name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(${name} PRIVATE ${STASIS_WARNINGS})
  target_link_libraries(${name} PUBLIC ${A_DEPS} PRIVATE ${A_PRIVATE_DEPS})
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
endfunction()

# stasis_test(name SOURCES ... DEPS ... LABELS ...)
function(stasis_test name)
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${STASIS_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS} stasis_testutil GTest::gtest GTest::gtest_main)
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  gtest_discover_tests(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT}
                       DISCOVERY_TIMEOUT 60)
endfunction()
