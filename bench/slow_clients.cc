#include "bench/slow_clients.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string_view>

namespace stasis::bench {
namespace {

// A head that never ends: the request line, then one header whose value grows a byte at a
// time (the server's header limit or deadline ends it, never its end).
constexpr std::string_view kHeadStart = "POST /v1/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";

}  // namespace

SlowClients::SlowClients(int port, int count, std::chrono::milliseconds interval)
    : port_(port), interval_(interval), conns_(static_cast<size_t>(count)) {
  for (Conn& c : conns_) Connect(&c);
  thread_ = std::thread([this] { Run(); });
}

SlowClients::~SlowClients() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  for (Conn& c : conns_) {
    if (c.fd >= 0) ::close(c.fd);
  }
}

bool SlowClients::Connect(Conn* c) {
  c->fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0) {
    ++connect_failures_;
    return false;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(c->fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::send(c->fd, kHeadStart.data(), kHeadStart.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(kHeadStart.size())) {
    ::close(c->fd);
    c->fd = -1;
    ++connect_failures_;
    return false;
  }
  c->sent = kHeadStart.size();
  ++open_;
  return true;
}

void SlowClients::Run() {
  while (!stop_) {
    const auto next = std::chrono::steady_clock::now() + interval_;
    for (Conn& c : conns_) {
      if (stop_) break;
      if (c.fd >= 0) {
        char probe;
        // < 0 with EAGAIN: still open and silent, as expected; 0 (closed) or an answer (an
        // error the server gives before closing): done with.
        const ssize_t r = ::recv(c.fd, &probe, 1, MSG_DONTWAIT);
        const bool closed = r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) ||
                            ::send(c.fd, "a", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != 1;
        if (!closed) {
          ++c.sent;
          continue;
        }
        ::close(c.fd);
        c.fd = -1;
        --open_;
        ++closed_by_server_;
      }
      Connect(&c);
    }
    std::this_thread::sleep_until(next);
  }
}

}  // namespace stasis::bench
