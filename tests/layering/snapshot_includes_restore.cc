// Must not compile: snapshot/ (layer 1) may not see restore/ (layer 2).
#include "restore/restore_plan.h"
