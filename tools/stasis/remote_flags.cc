#include "tools/stasis/remote_flags.h"

namespace stasis::cli {

void AddRemoteFlags(CLI::App* cmd, RemoteArgs* a) {
  const char* group = "Remote images (s3://, http://, https://)";
  cmd->add_option("--s3-endpoint", a->s3_endpoint,
                  "S3 endpoint URL, addressed path-style (default: AWS_ENDPOINT_URL_S3, "
                  "AWS_ENDPOINT_URL, else AWS)")
      ->group(group);
  cmd->add_option("--remote-concurrency", a->concurrency, "range GETs in flight (default 16)")
      ->check(CLI::Range(1, 256))
      ->group(group);
  cmd->add_option("--remote-retries", a->retries,
                  "retries per range after 5xx, resets, stalls (default 6)")
      ->check(CLI::Range(0, 100))
      ->group(group);
  cmd->add_option("--remote-deadline", a->deadline,
                  "seconds the whole read may take (default 0: no limit)")
      ->check(CLI::Range(0.0, 1e7))
      ->group(group);
  cmd->add_option("--remote-stall-timeout", a->stall_timeout,
                  "seconds under 1 KiB/s before a transfer is retried (default 20)")
      ->check(CLI::Range(0.1, 1e6))
      ->group(group);
}

RemoteOptions ToRemoteOptions(const RemoteArgs& a) {
  RemoteOptions o;
  o.s3_endpoint = a.s3_endpoint;
  o.concurrency = a.concurrency;
  o.max_retries = a.retries;
  o.deadline_s = a.deadline;
  o.stall_timeout_s = a.stall_timeout;
  return o;
}

std::string ShownLocation(const std::string& location) {
  return IsRemoteLocation(location) ? RedactLocation(location) : location;
}

}  // namespace stasis::cli
