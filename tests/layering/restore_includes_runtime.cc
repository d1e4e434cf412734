// Must not compile: restore/ (layer 2) may not see runtime/ (layer 3).
#include "runtime/lifecycle.h"
