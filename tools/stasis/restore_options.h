// File: tools/stasis/restore_options.h
//
// The restore-engine flags `restore` and `export` share: declared once, turned into
// RestoreOptions once.
#ifndef STASIS_TOOLS_STASIS_RESTORE_OPTIONS_H_
#define STASIS_TOOLS_STASIS_RESTORE_OPTIONS_H_

#include <CLI/CLI.hpp>

#include "stasis/restore.h"
#include "stasis/status.h"
#include "tools/stasis/commands.h"

namespace stasis::cli {

// --io, --direct, --threads, --queue-depth, --staging-mb, --huge-pages, --map,
// --no-verify, --no-checksums, --json (the device and the image are the command's own).
void AddRestoreFlags(CLI::App* cmd, RestoreArgs* a);

// kInvalidArgument for a bad device, reader, --direct, --map or --staging-mb; kUnimplemented for
// a device this build has no backend for; --queue-depth is bounded by
// RestoredModel::Restore (2..4096), where every caller meets it.
StatusOr<RestoreOptions> ToRestoreOptions(const RestoreArgs& a);

// --cache and --cache-max, falling back on STASIS_CACHE_DIR and STASIS_CACHE_MAX.
StatusOr<CacheOptions> ToCacheOptions(const std::string& dir, const std::string& max);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_RESTORE_OPTIONS_H_
