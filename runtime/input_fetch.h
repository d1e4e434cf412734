// File: runtime/input_fetch.h
//
// Inputs of POST /v1/infer given by reference, {"name","url","tensor"} (runtime/server.h):
// the bytes of a safetensors file, then its tensor named "tensor" (else its first).
//  - file://[localhost]/abs/path (percent-decoded): the path must resolve (realpath) inside
//    the file root and is opened again beneath it (openat2 RESOLVE_BENEATH |
//    RESOLVE_NO_SYMLINKS where the kernel has it), so a symlink swapped in meanwhile cannot
//    lead out; it must be a regular file. 403 outside the root (whether or not the path
//    exists) or without a root, 404 a missing file inside it.
//  - http://HOST[:PORT]/path: the authority is parsed strictly (ParseAuthority in
//    input_fetch.cc) and must be on the host allow list (403 otherwise); redirects are not
//    followed; fetch_timeout_ns bounds each connect/read and the whole fetch (502); any
//    status but 200 is a 502.
// Every input's bytes count against a budget shared by the request (413 past it).
// Error messages name the input ("inputs[2]: ...") and show URLs through Printable.
//
// Also the allow list itself: HttpHostList, parsed from ServerOptions::http_input_hosts by
// ParseHttpHostList (CheckHttpInputHosts of runtime/server.h, defined in input_fetch.cc,
// reports its errors).
//
// Internal to runtime/: not part of the server's interface.
//
// Thread safety: FetchUrlInput may run on many threads at once over one UrlInputPolicy
// (which it only reads; its Clock must be thread-safe).
#ifndef STASIS_RUNTIME_INPUT_FETCH_H_
#define STASIS_RUNTIME_INPUT_FETCH_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "runtime/http_common.h"
#include "stasis/status.h"
#include "stasis/tensor.h"

namespace stasis::runtime::internal {

// An http:// authority, parsed strictly: a host name ([A-Za-z0-9.-], at most 253
// characters) or a bracketed IPv6 address ([0-9A-Fa-f:.]), then optionally ':' and a port
// of 1-5 digits in 1..65535. Anything else (userinfo, percent-encoding, zone ids, stray
// brackets, overlong or empty parts) is refused here, before any library parses it.
struct Authority {
  std::string host;  // lower case; IPv6 without brackets
  int port = 0;      // 0: none given
};

// The --http-inputs list (ServerOptions::http_input_hosts), parsed once when the server
// starts: "*", a host with any port ("host"), or a host and port ("host:port").
struct HttpHostList {
  bool any = false;
  std::vector<Authority> hosts;

  bool Allows(const Authority& url) const {
    return any || std::any_of(hosts.begin(), hosts.end(), [&](const Authority& want) {
             return want.host == url.host && (want.port == 0 || want.port == url.port);
           });
  }
  // True when parsed from an empty list (every entry sets `any` or adds a host).
  bool empty() const { return !any && hosts.empty(); }
};

// kInvalidArgument naming the first entry that is not "*", HOST, HOST:PORT or [IPv6][:PORT].
StatusOr<HttpHostList> ParseHttpHostList(const std::vector<std::string>& entries);

// Where url inputs may come from; set up once by Server::Start.
struct UrlInputPolicy {
  std::string file_root;    // realpath of ServerOptions::file_root; "": file:// refused
  HttpHostList http_hosts;  // ServerOptions::http_input_hosts; empty: http:// refused
  int64_t fetch_timeout_ns = 30'000'000'000;  // ServerOptions::fetch_timeout_ns
  Clock* clock = nullptr;                     // bounds a whole http:// fetch
};

// Reads the input `spec` (inputs[index], an object with a "url" and perhaps a "tensor") into
// `out`, keeping the name `out` already has; takes the bytes read from `*budget`. The
// signature of UrlInputReader (runtime/tensor_codec.h).
std::optional<HttpError> FetchUrlInput(const UrlInputPolicy& policy, const nlohmann::json& spec,
                                       size_t index, uint64_t* budget, TensorData* out);

}  // namespace stasis::runtime::internal

#endif  // STASIS_RUNTIME_INPUT_FETCH_H_
