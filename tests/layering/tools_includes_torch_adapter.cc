// Must not compile: tools/ reach libtorch through stasis/torch_plugin.h only.
#include "torch_adapter/exception_status.h"
