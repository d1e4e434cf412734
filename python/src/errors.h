// File: python/src/errors.h
//
// The binding's one edge where a Status becomes a Python exception: the code picks the
// class (docs/python.md, "Errors"), the message is the Status's own.
#ifndef STASIS_PYTHON_SRC_ERRORS_H_
#define STASIS_PYTHON_SRC_ERRORS_H_

#include "stasis/status.h"

namespace stasis::python {

// Raises `status` as a Python exception (nanobind::python_error). REQUIRES: !status.ok()
// and the GIL held.
[[noreturn]] void ThrowStatus(const Status& status);

// Raises unless ok.
inline void ThrowIfError(const Status& status) {
  if (!status.ok()) ThrowStatus(status);
}

template <typename T>
T ValueOrThrow(StatusOr<T> value) {
  if (!value.ok()) ThrowStatus(value.status());
  return std::move(value).value();
}

}  // namespace stasis::python

#endif  // STASIS_PYTHON_SRC_ERRORS_H_
