// Must not compile: runtime/ knows no framework, not even the torch adapter's internals.
#include "torch_adapter/exception_status.h"
