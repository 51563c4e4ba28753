#include "launcher/server/http_server.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/error.h"
#include "launcher/api_values.h"

namespace shardtune::server {

namespace {

using Clock = std::chrono::steady_clock;

// What the request being served on this thread is counted as: cpp-httplib serves a request from
// its pre-routing handler to its logger on one thread of its pool, so these carry the route (set
// by the route's handler) and the start (set before routing) to the logger, which counts it.
thread_local std::string t_route;
thread_local std::optional<Clock::time_point> t_start;

const char* ErrorType(int status) { return status >= 500 ? "server_error" : "invalid_request_error"; }

// Whether the body `request` announces may be larger than `bytes`: its Content-Length, or chunked.
bool BodyMayExceed(const httplib::Request& request, size_t bytes) {
  if (request.get_header_value("Transfer-Encoding").find("chunked") != std::string::npos) return true;
  const std::string length = request.get_header_value("Content-Length");
  if (length.empty()) return false;
  if (length.size() > 18 || length.find_first_not_of("0123456789") != std::string::npos) return true;
  return std::stoull(length) > bytes;
}

}  // namespace

std::string RoutePattern(const std::string& route) {
  std::string pattern;
  for (size_t i = 0; i < route.size(); ++i) {
    if (route[i] == '{') {
      const size_t close = route.find('}', i);
      ST_CHECK(close != std::string::npos, "route {}: '{{' without '}}'", route);
      pattern += "([^/]+)";
      i = close;
    } else if (std::isalnum(static_cast<unsigned char>(route[i])) || route[i] == '/' || route[i] == '_' ||
               route[i] == '-') {
      pattern += route[i];
    } else {
      pattern += std::string("\\") + route[i];
    }
  }
  return pattern;
}

void WriteHttpError(httplib::Response& response, int status, const std::string& message, const std::string& type,
                    const std::string& code, const std::string& param) {
  using Json = nlohmann::ordered_json;  // the fields in OpenAI's order
  const Json body = {{"error",
                      {{"message", message},
                       {"type", type},
                       {"param", param.empty() ? Json() : Json(param)},
                       {"code", code.empty() ? Json() : Json(code)}}}};
  response.status = status;
  response.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace), "application/json");
}

void WriteRequestError(httplib::Response& response, const RequestError& error) {
  const ErrorSurfaces& surfaces = SurfacesOf(error.kind());
  const std::string code = api::ShortName(error.job_error());  // "invalid_spec"; "" for none
  WriteHttpError(response, surfaces.http_status, error.what(), surfaces.openai_type, code);
}

HttpServer::Handler WithCaller(const ApiKeyTable& keys, HttpServer::CallerHandler handler) {
  return [&keys, handler = std::move(handler)](const httplib::Request& request, httplib::Response& response) {
    const std::string key = BearerKey(request.get_header_value("Authorization"));
    const std::optional<Caller> caller = keys.Find(key);
    if (!caller) {
      return WriteHttpError(response, 401,
                            key.empty() ? "no API key: send 'Authorization: Bearer KEY'" : "unknown API key",
                            "invalid_request_error", "invalid_api_key");
    }
    handler(*caller, request, response);
  };
}

HttpServer::HttpServer(std::string name, std::string listen, const std::string& tls_cert, const std::string& tls_key,
                       ServerMetrics& metrics)
    : name_(std::move(name)), listen_(std::move(listen)), metrics_(metrics) {
  if (tls_cert.empty()) {
    server_ = std::make_unique<httplib::Server>();
  } else {
    server_ = std::make_unique<httplib::SSLServer>(tls_cert.c_str(), tls_key.c_str());
    if (!server_->is_valid())
      Fail(ErrorCode::kInvalidArgument, "{}.tls: cannot load the certificate {} with the key {}", name_, tls_cert,
           tls_key);
  }
  // Runs before the body is read (RequireKeyForBodiesOver).
  server_->set_pre_routing_handler([this](const httplib::Request& request, httplib::Response& response) {
    t_start = Clock::now();
    t_route = "unmatched";
    if (body_keys_ != nullptr && BodyMayExceed(request, free_body_bytes_) &&
        !body_keys_->Find(BearerKey(request.get_header_value("Authorization")))) {
      WriteHttpError(response, 401, "a request with a body needs a valid API key: send 'Authorization: Bearer KEY'",
                     "invalid_request_error", "invalid_api_key");
      response.set_header("Connection", "close");  // its unread body must not be taken for the next request
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Fills the body of an error no handler wrote: no route (404), a malformed request (400).
  server_->set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request& request, httplib::Response& response) {
        if (!response.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        const std::string message = response.status == 404
                                        ? fmt::format("Invalid URL ({} {})", request.method, request.path)
                                        : fmt::format("the request was refused (HTTP {})", response.status);
        WriteHttpError(response, response.status, message, ErrorType(response.status));
        return httplib::Server::HandlerResponse::Handled;
      }));
  server_->set_logger([this](const httplib::Request& request, const httplib::Response& response) {
    // A request refused before routing (malformed) has no start: it is counted, with no duration.
    const double seconds = t_start ? std::chrono::duration<double>(Clock::now() - *t_start).count() : -1;
    metrics_.HttpHandled(request.method, t_start ? t_route : "unmatched", response.status, seconds);
    t_start.reset();
  });
}

HttpServer::~HttpServer() { Stop(); }

HttpServer::Handler HttpServer::Routed(const std::string& route, Handler handler) {
  return [route, handler = std::move(handler)](const httplib::Request& request, httplib::Response& response) {
    t_route = route;
    try {
      handler(request, response);
    } catch (const RequestError& e) {
      WriteRequestError(response, e);
    } catch (const std::exception& e) {
      spdlog::error("HTTP {} {}: {}", request.method, request.path, e.what());
      WriteHttpError(response, 500, e.what(), "server_error");
    }
  };
}

void HttpServer::Get(const std::string& route, Handler handler) {
  server_->Get(RoutePattern(route), Routed(route, std::move(handler)));
}

void HttpServer::Post(const std::string& route, Handler handler) {
  server_->Post(RoutePattern(route), Routed(route, std::move(handler)));
}

void HttpServer::Delete(const std::string& route, Handler handler) {
  server_->Delete(RoutePattern(route), Routed(route, std::move(handler)));
}

void HttpServer::Start() {
  const std::optional<HostPort> address = SplitHostPort(listen_);
  if (!address) Fail(ErrorCode::kInvalidArgument, "{}: '{}' is not HOST:PORT", name_, listen_);
  port_ = address->port == 0 ? server_->bind_to_any_port(address->host)
                             : (server_->bind_to_port(address->host, address->port) ? address->port : -1);
  if (port_ <= 0) {
    port_ = 0;
    Fail(ErrorCode::kFailedPrecondition, "{}: cannot listen on {} (in use, or not an address of this machine)", name_,
         listen_);
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  spdlog::info("{} listening on {}", name_,
               address->host.find(':') == std::string::npos ? fmt::format("{}:{}", address->host, port_)
                                                            : fmt::format("[{}]:{}", address->host, port_));
}

void HttpServer::Stop() {
  if (!thread_.joinable()) return;
  server_->stop();
  thread_.join();
}

}  // namespace shardtune::server
