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
    // Memory or disk space that could not be had, devices (no driver, no device), I/O
    // conditions, stasis's own invariants.
    default:
      return PyExc_RuntimeError;
  }
}

}  // namespace

void ThrowStatus(const Status& status) {
  const std::string message = status.ToString();
  // Paths and tensor names are bytes: a message that is not UTF-8 must still raise the
  // right exception, not a UnicodeDecodeError.
  PyObject* text =
      PyUnicode_DecodeUTF8(message.data(), static_cast<Py_ssize_t>(message.size()), "replace");
  if (text == nullptr) {
    PyErr_Clear();
    PyErr_SetString(ExceptionFor(status.code()), "(unprintable error message)");
  } else {
    PyErr_SetObject(ExceptionFor(status.code()), text);
    Py_DECREF(text);
  }
  throw nanobind::python_error();
}

}  // namespace stasis::python
