// File: torch_adapter/exception_status.h
//
// libtorch reports errors as exceptions (c10::Error and others); stasis as Status. Every
// entry point of the adapter catches at its edge, so no exception crosses a module
// boundary or the plugin's dlopen boundary.
#ifndef STASIS_TORCH_ADAPTER_EXCEPTION_STATUS_H_
#define STASIS_TORCH_ADAPTER_EXCEPTION_STATUS_H_

#include <exception>
#include <string_view>

#include "stasis/status.h"

namespace stasis::torch::internal {

// The Status for the exception `error` (a c10::Error or anything else), as "context:
// message" with `code`, or kResourceExhausted when it reports running out of memory.
// Used in a `catch (...)` at every entry point, so no exception escapes.
Status ExceptionStatus(StatusCode code, std::string_view context, std::exception_ptr error);

// f(), with any exception it throws turned into a kInternal Status naming `context`.
template <typename F>
auto Guarded(std::string_view context, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (...) {
    return ExceptionStatus(StatusCode::kInternal, context, std::current_exception());
  }
}

}  // namespace stasis::torch::internal

#endif  // STASIS_TORCH_ADAPTER_EXCEPTION_STATUS_H_
