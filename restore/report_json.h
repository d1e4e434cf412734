// File: restore/report_json.h
//
// The one JSON form of a RestoreReport. `stasis restore --json`, the `restore` object of
// `stasis coldstart`/`bench` JSON and `last_restore` in `stasis serve`'s GET /v1/status all
// print it, so a script reads one schema wherever the report comes from. The fields are
// listed in docs/restore-pipeline.md ("The report").
#ifndef STASIS_RESTORE_REPORT_JSON_H_
#define STASIS_RESTORE_REPORT_JSON_H_

#include <nlohmann/json.hpp>

#include "stasis/restore.h"

namespace stasis {

nlohmann::json RestoreReportJson(const RestoreReport& report);

}  // namespace stasis

#endif  // STASIS_RESTORE_REPORT_JSON_H_
