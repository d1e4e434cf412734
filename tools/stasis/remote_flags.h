// File: tools/stasis/remote_flags.h
//
// The flags of remote images (stasis/remote.h), shared by every command that reads an
// image, and their translation into RemoteOptions.
#ifndef STASIS_TOOLS_STASIS_REMOTE_FLAGS_H_
#define STASIS_TOOLS_STASIS_REMOTE_FLAGS_H_

#include <CLI/CLI.hpp>
#include <string>

#include "stasis/remote.h"
#include "tools/stasis/commands.h"

namespace stasis::cli {

// --s3-endpoint, --remote-concurrency, --remote-retries, --remote-deadline,
// --remote-stall-timeout.
void AddRemoteFlags(CLI::App* cmd, RemoteArgs* a);
RemoteOptions ToRemoteOptions(const RemoteArgs& a);

// A location as output shows it: remote ones redacted (RedactLocation), paths as given.
std::string ShownLocation(const std::string& location);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_STASIS_REMOTE_FLAGS_H_
