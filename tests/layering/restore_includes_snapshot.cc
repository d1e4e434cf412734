// Must compile: restore/ uses the internals of the layers below it, as it says it does.
#include "common/hash.h"
#include "snapshot/codec.h"
