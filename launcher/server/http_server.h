#pragma once
// The server's HTTP listeners (server.yaml `http:` and `metrics_listen:`; docs/server.md): cpp-httplib
// serving the routes that modules mount on it, GET /metrics today and the OpenAI-compatible /v1
// API next, with the gRPC listener's API keys (api_keys.h).
//
// A route is a template such as "/v1/files/{id}": each {placeholder} matches one path segment, and
// the handler finds them in request.matches[1], [2], ... in order. Every request is counted in the
// server's metrics (ServerMetrics::HttpHandled) under its route's template, never its raw path, so
// that the series stay few; a request no route matches is counted as route "unmatched" and answered
// 404. Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}, whether a handler
// writes them (WriteHttpError), throws RequestError (mapped by WriteRequestError) or throws anything
// else (500, logged).
//
// Threads: cpp-httplib runs handlers on its own pool, several at once, so handlers must be
// thread-safe. Routes are mounted before Start(), never after.

#include <httplib.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "launcher/server/api_keys.h"
#include "launcher/server/request_error.h"
#include "launcher/server/server_metrics.h"

namespace shardtune::server {

class HttpServer {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  using CallerHandler = std::function<void(const Caller&, const httplib::Request&, httplib::Response&)>;

  // `name` says which listener this is in errors and logs (the config key: "http", "metrics_listen").
  // `listen` is HOST:PORT (port 0: one the system picks); TLS when `tls_cert` (with `tls_key`) is
  // given. Throws Error naming `name` when the certificate or key cannot be loaded.
  HttpServer(std::string name, std::string listen, const std::string& tls_cert, const std::string& tls_key,
             ServerMetrics& metrics);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  void Get(const std::string& route, Handler handler);
  void Post(const std::string& route, Handler handler);
  void Delete(const std::string& route, Handler handler);
  // The largest request body read (a larger one is answered 413 before any handler runs).
  void SetMaxBodyBytes(size_t bytes) { server_->set_payload_max_length(bytes); }
  // A request whose body may exceed `free_bytes` (its Content-Length says so, or it is chunked) is
  // answered 401 before its body is read unless it carries a key of `keys` (which must outlive
  // this): cpp-httplib reads a body whole before the route's handler (and its key check) runs, so
  // that an upload route would otherwise hold SetMaxBodyBytes of memory for anyone who connects.
  void RequireKeyForBodiesOver(const ApiKeyTable& keys, size_t free_bytes) {
    body_keys_ = &keys;
    free_body_bytes_ = free_bytes;
  }

  // Binds (Error(kFailedPrecondition) naming the listener and address when it cannot) and serves
  // on a thread of its own; logs "NAME listening on HOST:PORT".
  void Start();
  // The bound port: PORT, or the one the system chose for port 0; 0 before Start().
  int port() const { return port_; }
  // Stops accepting, lets the requests in flight finish, joins the thread. Idempotent.
  void Stop();

 private:
  // `handler` under `route`'s name for the metrics, its exceptions turned into error bodies.
  Handler Routed(const std::string& route, Handler handler);

  std::string name_, listen_;
  ServerMetrics& metrics_;
  std::unique_ptr<httplib::Server> server_;
  const ApiKeyTable* body_keys_ = nullptr;  // RequireKeyForBodiesOver
  size_t free_body_bytes_ = 0;
  std::thread thread_;
  int port_ = 0;
};

// The regular expression cpp-httplib matches paths with, for a route template: each {name} one
// path segment (a group), every other character literal. "/v1/files/{id}" -> "/v1/files/([^/]+)".
std::string RoutePattern(const std::string& route);

// A handler that needs an API key: without `Authorization: Bearer KEY` of a key in `keys`, 401 with
// code invalid_api_key; else `handler(caller, ...)`. `keys` must outlive the handler.
HttpServer::Handler WithCaller(const ApiKeyTable& keys, HttpServer::CallerHandler handler);

// Writes {"error": {"message", "type", "param", "code"}} as the body, with `status`; an empty
// `code` or `param` is null.
void WriteHttpError(httplib::Response& response, int status, const std::string& message, const std::string& type,
                    const std::string& code = "", const std::string& param = "");
// A RequestError as its HTTP status: invalid argument 400, not found 404, failed precondition 409,
// resource exhausted 429, permission denied 403; its JobErrorCode (lowercase) as the code.
void WriteRequestError(httplib::Response& response, const RequestError& error);

}  // namespace shardtune::server
