#include "torch_adapter/exception_status.h"

#include <c10/util/Exception.h>

#include <new>
#include <stdexcept>
#include <string>

namespace stasis::torch::internal {

Status ExceptionStatus(StatusCode code, std::string_view context, std::exception_ptr error) {
  std::string message;
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  } catch (const std::bad_alloc& e) {
    code = StatusCode::kResourceExhausted;
    message = std::string("out of memory (") + e.what() + ")";
  } catch (const std::exception& e) {
    message = e.what();
  } catch (...) {
    message = "unknown exception";
  }
  // CUDA and the caching allocator report exhaustion as a c10::Error.
  if (message.find("out of memory") != std::string::npos) code = StatusCode::kResourceExhausted;
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  return Status(code, std::string(context) + ": " + message);
}

}  // namespace stasis::torch::internal
