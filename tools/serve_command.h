// File: tools/serve_command.h
//
// `stasis serve`: the inference runtime in a process (runtime/ does the work; this wires
// flags, signals and the exit path).
#ifndef STASIS_TOOLS_SERVE_COMMAND_H_
#define STASIS_TOOLS_SERVE_COMMAND_H_

#include <string>
#include <vector>

namespace stasis::cli {

struct ServeArgs {
  std::string image, device = "cpu", host = "127.0.0.1", idle_timeout = "30s", on_idle = "unload",
                     token_file, log_format = "text", file_root, request_timeout = "60s",
                     max_body = "256MiB", retry_backoff = "1s";
  std::vector<std::string> http_inputs;  // hosts http:// inputs may come from; "*" any
  int port = 8000, max_concurrency = 1, queue = 64, threads = 0;
  bool warmup = false, verbose = false, yield_io = false;
};

// Serves until SIGTERM/SIGINT (drain in-flight requests, release the device, exit 0) or,
// with --on-idle exit, until the idle timeout passes (exit 0).
int RunServe(const ServeArgs& a);

// "30s", "500ms", "2m", "1h", "never" (-1), or plain seconds; in nanoseconds.
bool ParseDuration(const std::string& text, int64_t* ns);

}  // namespace stasis::cli

#endif  // STASIS_TOOLS_SERVE_COMMAND_H_
