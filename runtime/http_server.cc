#include "runtime/http_server.h"

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "runtime/http_request_parse.h"

namespace stasis::runtime::internal {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

std::chrono::milliseconds Ms(int64_t ms) {
  return std::chrono::milliseconds(std::max<int64_t>(ms, 1));
}

// Errors of the parser that mean "the peer went away or gave up", not "the peer sent
// something malformed": those close the connection without an answer.
bool IsDisconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == http::error::partial_message ||
         ec == beast::error::timeout || ec == net::error::operation_aborted ||
         ec == net::error::eof ||
         ec.category() != http::make_error_code(http::error::bad_target).category();
}

}  // namespace

class Session;

struct HttpServer::Impl {
  Impl(HttpHandler* handler, HttpServerOptions options)
      : handler(handler), o(std::move(options)), acceptor(net::make_strand(ioc)) {}

  void Accept();
  bool Submit(std::function<void()> job);  // false: max_pending jobs wait already
  void WorkerLoop();
  void Track(const std::shared_ptr<Session>& s);
  void Forget(Session* s);
  std::vector<std::shared_ptr<Session>> Sessions();
  size_t SessionCount();

  HttpHandler* const handler;
  const HttpServerOptions o;

  // Declared before the io_context: handlers it still holds when it is destroyed own
  // sessions, whose destructors Forget themselves here.
  std::mutex sessions_mu;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;

  std::mutex jobs_mu;
  std::condition_variable jobs_cv;
  std::deque<std::function<void()>> jobs;
  bool jobs_stop = false;

  net::io_context ioc;
  tcp::acceptor acceptor;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::vector<std::thread> io_threads;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::vector<std::thread> workers;

  std::mutex stop_mu;
  bool stopped = false;
};

// One connection. Every member runs on the connection's strand.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(HttpServer::Impl* server, tcp::socket&& socket)
      : srv_(server), stream_(std::move(socket)) {
    beast::error_code ec;
    const auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string() + ":" + std::to_string(ep.port());
  }
  ~Session() { srv_->Forget(this); }

  void Start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->ReadHead(); });
  }
  // The server stops: no new request on this connection; an answer being prepared or
  // written still goes out (until ForceClose).
  void BeginStop() {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      self->stopping_ = true;
      if (self->state_ == State::kReadingHead || self->state_ == State::kReadingBody) {
        self->CloseNow();
      }
    });
  }
  void ForceClose() {
    net::post(stream_.get_executor(), [self = shared_from_this()] { self->CloseNow(); });
  }

 private:
  enum class State { kReadingHead, kReadingBody, kHandling, kWriting, kLingering, kClosed };

  void ReadHead() {
    if (stopping_ || srv_->stopping) return CloseNow();
    state_ = State::kReadingHead;
    req_ = HttpRequest();
    req_.remote = remote_;
    res_ = HttpResponse();
    parser_.emplace();
    LimitRequestParser(&*parser_, srv_->o.max_header_bytes, srv_->o.max_body_bytes);
    stream_.expires_after(Ms(first_ ? srv_->o.header_timeout_ms : srv_->o.keep_alive_timeout_ms));
    http::async_read_header(stream_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::OnHead, shared_from_this()));
  }

  void OnHead(beast::error_code ec, size_t) {
    if (state_ == State::kClosed) return;
    if (ec == http::error::header_limit) {
      return Fail(431, "header_too_large",
                  "request head exceeds " + std::to_string(srv_->o.max_header_bytes) + " bytes");
    }
    if (ec == http::error::body_limit) {  // Content-Length over the limit: the head is whole
      FillHead();
      return TooLarge();
    }
    if (ec) {
      if (IsDisconnect(ec)) return CloseNow();
      return Fail(400, "bad_request", "malformed HTTP request: " + ec.message());
    }
    FillHead();
    const auto& h = parser_->get();
    if (h.version() != 11 && h.version() != 10) {
      return Fail(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
    }
    if (auto bad = CheckRequestHead(req_)) {
      return Fail(bad->first, bad->first == 415 ? "unsupported_media_type" : "not_implemented",
                  bad->second);
    }
    if (std::optional<HttpResponse> early = srv_->handler->OnHead(req_)) {
      res_ = std::move(*early);
      // The body is not read: it must not be parsed as the next request.
      if (req_.has_body) res_.close = true;
      return Write();
    }
    if (!req_.has_body) return Dispatch();
    if (EqualsIgnoringCase(TrimWhitespace(req_.Header("Expect")), "100-continue")) {
      static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
      stream_.expires_after(Ms(srv_->o.write_timeout_ms));
      return net::async_write(stream_, net::buffer(kContinue, sizeof(kContinue) - 1),
                              [self = shared_from_this()](beast::error_code wec, size_t) {
                                if (wec) return self->CloseNow();
                                self->ReadBody();
                              });
    }
    ReadBody();
  }

  void FillHead() {
    CopyRequestHead(*parser_, &req_);
    keep_alive_ = parser_->get().keep_alive();
  }

  void ReadBody() {
    if (state_ == State::kClosed) return;
    if (stopping_) return CloseNow();
    state_ = State::kReadingBody;
    stream_.expires_after(Ms(srv_->o.body_timeout_ms));
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::OnBody, shared_from_this()));
  }

  void OnBody(beast::error_code ec, size_t) {
    if (state_ == State::kClosed) return;
    if (ec == http::error::body_limit) return TooLarge();
    if (ec) {
      if (IsDisconnect(ec)) return CloseNow();
      return Fail(400, "bad_request", "malformed HTTP request body: " + ec.message());
    }
    std::string body = parser_->release().body();
    StatusOr<std::string> decoded =
        DecodeContent(req_.Header("Content-Encoding"), std::move(body), srv_->o.max_body_bytes);
    if (!decoded.ok()) {
      if (decoded.status().code() == StatusCode::kResourceExhausted) return TooLarge();
      return Fail(400, "bad_request", std::string(decoded.status().message()));
    }
    req_.body = std::move(decoded).value();
    Dispatch();
  }

  void Dispatch() {
    state_ = State::kHandling;
    stream_.expires_never();
    HttpServer::Impl* srv = srv_;
    if (!srv->handler->Blocking(req_)) {
      res_ = srv->handler->Handle(req_);
      return Write();
    }
    auto self = shared_from_this();
    const bool queued = srv->Submit([self, srv] {
      HttpResponse r = srv->handler->Handle(self->req_);
      net::post(self->stream_.get_executor(), [self, r = std::move(r)]() mutable {
        if (self->state_ == State::kClosed) return;
        self->res_ = std::move(r);
        self->Write();
      });
    });
    if (!queued) {
      res_ = srv->handler->ErrorAnswer(req_, 503, "overloaded", "every worker is busy");
      Write();
    }
  }

  void TooLarge() {
    Fail(413, "payload_too_large",
         "request body exceeds " + std::to_string(srv_->o.max_body_bytes) + " bytes");
  }

  // An answer the transport gives itself; the connection closes after it.
  void Fail(int status, std::string code, std::string message) {
    res_ = srv_->handler->ErrorAnswer(req_, status, std::move(code), std::move(message));
    res_.close = true;
    Write();
  }

  void Write() {
    if (state_ == State::kClosed) return;
    state_ = State::kWriting;
    auto msg = std::make_shared<http::response<http::string_body>>();
    msg->version(11);
    msg->result(static_cast<unsigned>(res_.status));
    for (const auto& [k, v] : res_.headers) msg->insert(k, v);
    if (!res_.content_type.empty()) msg->set(http::field::content_type, res_.content_type);
    msg->body() = std::move(res_.body);
    // Reported before the write: a client that has its answer must find it counted.
    srv_->handler->OnDone(req_, res_, true);
    const bool close = res_.close || !keep_alive_ || stopping_ || srv_->stopping;
    msg->keep_alive(!close);
    msg->prepare_payload();
    stream_.expires_after(Ms(srv_->o.write_timeout_ms));
    http::async_write(stream_, *msg,
                      [self = shared_from_this(), msg, close](beast::error_code ec, size_t) {
                        self->OnWritten(ec, close);
                      });
  }

  void OnWritten(beast::error_code ec, bool close) {
    if (ec) return CloseNow();
    if (close) return Linger();
    first_ = false;
    ReadHead();
  }

  // Closing a socket with unread bytes in its receive queue sends a reset, which can destroy
  // the answer just written before the client reads it. So: stop sending, read and drop what
  // the client still sends, for at most a second, then close.
  void Linger() {
    state_ = State::kLingering;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return CloseNow();
    stream_.expires_after(std::chrono::seconds(1));
    DrainSome(0);
  }
  void DrainSome(size_t drained) {
    if (drained > (1u << 20)) return CloseNow();
    stream_.async_read_some(net::buffer(drain_),
                            [self = shared_from_this(), drained](beast::error_code ec, size_t n) {
                              if (ec || self->state_ == State::kClosed) return self->CloseNow();
                              self->DrainSome(drained + n);
                            });
  }

  void CloseNow() {
    if (state_ == State::kClosed) return;
    state_ = State::kClosed;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
    srv_->Forget(this);
  }

  HttpServer::Impl* const srv_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<RequestParser> parser_;
  HttpRequest req_;
  HttpResponse res_;
  std::string remote_;
  char drain_[4096];
  bool first_ = true;
  bool keep_alive_ = true;
  bool stopping_ = false;
  State state_ = State::kReadingHead;
};

void HttpServer::Impl::Track(const std::shared_ptr<Session>& s) {
  std::lock_guard l(sessions_mu);
  sessions[s.get()] = s;
}

void HttpServer::Impl::Forget(Session* s) {
  std::lock_guard l(sessions_mu);
  sessions.erase(s);
}

std::vector<std::shared_ptr<Session>> HttpServer::Impl::Sessions() {
  std::lock_guard l(sessions_mu);
  std::vector<std::shared_ptr<Session>> out;
  for (auto& [p, w] : sessions) {
    if (auto s = w.lock()) out.push_back(std::move(s));
  }
  return out;
}

size_t HttpServer::Impl::SessionCount() {
  std::lock_guard l(sessions_mu);
  return sessions.size();
}

void HttpServer::Impl::Accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (stopping || ec == net::error::operation_aborted) return;
    if (ec) {
      // Out of descriptors, say: wait a little rather than spin on the error.
      auto timer = std::make_shared<net::steady_timer>(acceptor.get_executor());
      timer->expires_after(std::chrono::milliseconds(20));
      timer->async_wait([this, timer](beast::error_code) {
        if (!stopping) Accept();
      });
      return;
    }
    if (SessionCount() >= static_cast<size_t>(std::max(o.max_connections, 1))) {
      beast::error_code ignored;
      socket.close(ignored);
    } else {
      auto s = std::make_shared<Session>(this, std::move(socket));
      Track(s);
      s->Start();
    }
    Accept();
  });
}

bool HttpServer::Impl::Submit(std::function<void()> job) {
  {
    std::lock_guard l(jobs_mu);
    if (jobs_stop || jobs.size() >= static_cast<size_t>(std::max(o.max_pending, 0))) return false;
    jobs.push_back(std::move(job));
  }
  jobs_cv.notify_one();
  return true;
}

void HttpServer::Impl::WorkerLoop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock l(jobs_mu);
      jobs_cv.wait(l, [&] { return jobs_stop || !jobs.empty(); });
      if (jobs.empty()) return;  // stopping, nothing left
      job = std::move(jobs.front());
      jobs.pop_front();
    }
    job();
  }
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

int HttpServer::port() const { return impl_->port; }

StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(HttpHandler* handler,
                                                        HttpServerOptions options) {
  if (handler == nullptr) return InvalidArgumentError("http server: no handler");
  if (options.port < 0 || options.port > 65535) {
    return InvalidArgumentError("http server: port out of range: " + std::to_string(options.port));
  }
  if (options.io_threads < 1 || options.workers < 1) {
    return InvalidArgumentError("http server: io_threads and workers must be at least 1");
  }
  beast::error_code ec;
  auto impl = std::make_unique<Impl>(handler, std::move(options));
  const std::string where = impl->o.host + ":" + std::to_string(impl->o.port);
  tcp::endpoint endpoint;
  const net::ip::address address = net::ip::make_address(impl->o.host, ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, static_cast<unsigned short>(impl->o.port));
  } else {  // a name such as "localhost": its first address
    tcp::resolver resolver(impl->ioc);
    auto found =
        resolver.resolve(impl->o.host, std::to_string(impl->o.port), tcp::resolver::passive, ec);
    if (ec || found.empty()) {
      return InvalidArgumentError("http server: cannot resolve host " + impl->o.host + ": " +
                                  ec.message());
    }
    endpoint = found.begin()->endpoint();
  }
  tcp::acceptor& a = impl->acceptor;
  a.open(endpoint.protocol(), ec);
  if (!ec) {
    // SO_REUSEADDR only (restarts while old connections sit in TIME_WAIT). Never
    // SO_REUSEPORT: a second server must not share the port.
    a.set_option(net::socket_base::reuse_address(true), ec);
  }
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return UnavailableError("http server: cannot bind or listen on " + where + ": " + ec.message());
  }
  impl->port = a.local_endpoint(ec).port();
  Impl* p = impl.get();
  p->work.emplace(net::make_work_guard(p->ioc));
  p->Accept();
  try {
    for (int i = 0; i < p->o.io_threads; ++i) p->io_threads.emplace_back([p] { p->ioc.run(); });
    for (int i = 0; i < p->o.workers; ++i) p->workers.emplace_back([p] { p->WorkerLoop(); });
  } catch (const std::system_error& e) {
    auto server = std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
    server->Stop();
    return ResourceExhaustedError(std::string("http server: cannot start threads: ") + e.what());
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

void HttpServer::Stop() {
  Impl& m = *impl_;
  std::lock_guard g(m.stop_mu);
  if (m.stopped) return;
  m.stopping = true;
  net::post(m.acceptor.get_executor(), [&m] {
    beast::error_code ec;
    m.acceptor.close(ec);
  });
  for (auto& s : m.Sessions()) s->BeginStop();
  const auto grace_end = std::chrono::steady_clock::now() +
                         std::chrono::milliseconds(std::max<int64_t>(m.o.shutdown_grace_ms, 0));
  while (m.SessionCount() > 0 && std::chrono::steady_clock::now() < grace_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& s : m.Sessions()) s->ForceClose();
  const auto close_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (m.SessionCount() > 0 && std::chrono::steady_clock::now() < close_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  m.work.reset();
  m.ioc.stop();
  for (auto& t : m.io_threads) {
    if (t.joinable()) t.join();
  }
  {
    std::lock_guard l(m.jobs_mu);
    m.jobs_stop = true;
    m.jobs.clear();  // never started: their connections are gone
  }
  m.jobs_cv.notify_all();
  for (auto& t : m.workers) {
    if (t.joinable()) t.join();
  }
  m.stopped = true;
}

}  // namespace stasis::runtime::internal
