#include "python/src/errors.h"

#include <Python.h>
#include <nanobind/nanobind.h>

#include <string>

namespace stasis::python {

namespace {

PyObject* ExceptionFor(StatusCode code) {
  switch (code) {
    case StatusCode::kNotFound:
      return PyExc_FileNotFoundError;
    case StatusCode::kAlreadyExists:
      return PyExc_FileExistsError;
    case StatusCode::kPermissionDenied:
      return PyExc_PermissionError;
    // What the caller passed, or what the image holds: not an image, corrupt, truncated,
    // a format or codec this build does not read, a limit of the format exceeded.
    case StatusCode::kInvalidArgument:
    case StatusCode::kDataLoss:
    case StatusCode::kOutOfRange:
    case StatusCode::kUnimplemented:
      return PyExc_ValueError;
    case StatusCode::kCancelled:
      return PyExc_KeyboardInterrupt;
    case StatusCode::kResourceExhausted:
      return PyExc_MemoryError;
    default:  // devices (no driver, no device), I/O conditions, stasis's own invariants
      return PyExc_RuntimeError;
  }
}

}  // namespace

void ThrowStatus(const Status& status) {
  const std::string message = status.ToString();
  PyErr_SetString(ExceptionFor(status.code()), message.c_str());
  throw nanobind::python_error();
}

}  // namespace stasis::python
