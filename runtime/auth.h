// File: runtime/auth.h
//
// The bearer-token check of the HTTP server: when ServerOptions::token is set, every request
// but GET /healthz must carry "Authorization: Bearer <token>" (runtime/server.h). The scheme
// is matched case-insensitively, spaces after it and spaces or tabs at the end are ignored,
// and the token is compared with ConstantTimeEquals (runtime/server.h, defined in auth.cc).
//
// Internal to runtime/: not part of the server's interface.
//
// Thread safety: pure functions.
#ifndef STASIS_RUNTIME_AUTH_H_
#define STASIS_RUNTIME_AUTH_H_

#include <string_view>

namespace stasis::runtime::internal {

// True if `authorization` (the header's value, "" when absent) is "Bearer " then `token`.
bool BearerTokenMatches(std::string_view authorization, std::string_view token);

}  // namespace stasis::runtime::internal

#endif  // STASIS_RUNTIME_AUTH_H_
