// File: bench/slow_clients.h
//
// SlowClients: `count` connections to a loopback server that each send the start of a
// request head and then one byte every `interval`, never finishing it — the slow-client
// attack of the red-team report (issue 16, H2). A connection the server closes (its header
// deadline) is opened again at once, so the server always faces `count` of them. One thread
// drives them all; the destructor stops it and closes every connection.
//
// Thread safety: the counters may be read from any thread while it runs.
#ifndef STASIS_BENCH_SLOW_CLIENTS_H_
#define STASIS_BENCH_SLOW_CLIENTS_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

namespace stasis::bench {

class SlowClients {
 public:
  SlowClients(int port, int count, std::chrono::milliseconds interval);
  ~SlowClients();
  SlowClients(const SlowClients&) = delete;
  SlowClients& operator=(const SlowClients&) = delete;

  // Connections open at the last pass over them (of `count`); a pass takes about
  // `interval`, so a close the server made since is not counted yet.
  int open() const { return open_.load(); }
  // Connections the server closed (each is opened again at once).
  uint64_t closed_by_server() const { return closed_by_server_.load(); }
  // Connections that could not be opened (refused, out of descriptors).
  uint64_t connect_failures() const { return connect_failures_.load(); }

 private:
  struct Conn {
    int fd = -1;
    size_t sent = 0;  // bytes of the trickled head sent so far
  };
  void Run();
  bool Connect(Conn* c);

  const int port_;
  const std::chrono::milliseconds interval_;
  std::vector<Conn> conns_;
  std::atomic<bool> stop_{false};
  std::atomic<int> open_{0};
  std::atomic<uint64_t> closed_by_server_{0};
  std::atomic<uint64_t> connect_failures_{0};
  std::thread thread_;
};

}  // namespace stasis::bench

#endif  // STASIS_BENCH_SLOW_CLIENTS_H_
