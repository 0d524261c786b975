//! Answers the proxy gives itself: a status and a short `text/plain` line naming the cause.
//!
//! They never reveal internals (addresses, error chains) and never carry backend headers.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::http::RespBody;

/// A `text/plain` response whose body is `message` plus a newline.
pub fn respond(status: StatusCode, message: &str) -> http::Response<RespBody> {
    let mut body = String::with_capacity(message.len() + 1);
    body.push_str(message);
    body.push('\n');
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

pub fn no_backend(pool: &str) -> http::Response<RespBody> {
    respond(StatusCode::SERVICE_UNAVAILABLE, &format!("503 Service Unavailable: no backend is up in pool {pool}"))
}

pub fn bad_gateway() -> http::Response<RespBody> {
    respond(StatusCode::BAD_GATEWAY, "502 Bad Gateway: the backend failed to answer")
}

pub fn gateway_timeout() -> http::Response<RespBody> {
    respond(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout: the backend did not answer in time")
}

pub fn bad_request(why: &str) -> http::Response<RespBody> {
    respond(StatusCode::BAD_REQUEST, &format!("400 Bad Request: {why}"))
}
