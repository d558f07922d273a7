//! The API's error shape: `{ "error": { "code", "message" } }` with the spec's codes and
//! statuses. A 4xx says what was wrong; a 5xx says nothing useful to an attacker and logs the
//! detail instead.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The protocol's error codes: defined once, in the call core, for every transport.
pub use parley_call::Code;

/// The HTTP status of a code (the spec's table, kept as a number in the core).
pub fn status(code: Code) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// An error answer. Build it with [`ApiError::new`], or from any internal error with
/// [`ApiError::internal`] (which logs the detail and tells the client nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// A failure of ours: the detail goes to the log, the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        log::error!("internal error: {detail}");
        ApiError::new(
            Code::Internal,
            "internal error; the details are in the server log",
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(Code::Unauthorized, "missing, invalid or expired token")
    }

    pub fn invalid(field: &str, what: impl std::fmt::Display) -> ApiError {
        ApiError::new(Code::InvalidPayload, format!("{field}: {what}"))
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: Code,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        (status(self.code), Json(body)).into_response()
    }
}

impl From<parley_store::StoreError> for ApiError {
    fn from(error: parley_store::StoreError) -> ApiError {
        use parley_store::StoreError;
        match error {
            StoreError::Invalid { field, reason } => ApiError::invalid(field, reason),
            StoreError::UsernameTaken(name) => ApiError::new(
                Code::UsernameTaken,
                format!("the username {name:?} is taken"),
            ),
            other => ApiError::internal(other),
        }
    }
}

/// Turns axum's JSON rejections into the spec's codes: 413 for an oversized body, otherwise
/// `INVALID_PAYLOAD` with serde's description, which names the field (`to: missing field`).
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(Code::PayloadTooLarge, "request body over 64 KiB");
        }
        let text = rejection.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize the JSON body into the target type: ")
            .or_else(|| text.strip_prefix("Failed to parse the request body as JSON: "))
            .unwrap_or(&text);
        match rejection {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                Code::InvalidPayload,
                "body: expected Content-Type: application/json",
            ),
            JsonRejection::JsonSyntaxError(_) => ApiError::new(
                Code::InvalidPayload,
                format!("body: malformed JSON: {detail}"),
            ),
            _ => ApiError::new(Code::InvalidPayload, detail.to_string()),
        }
    }
}

/// `Json<T>` whose rejection is an [`ApiError`].
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `Path<T>` whose rejection is an [`ApiError`]: axum's own answer is a `text/plain` 400, which
/// the protocol's clients cannot read (found by the `http_api` fuzz target: `path-utf8`, a call
/// id that is not UTF-8 after percent-decoding).
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::new(
            Code::InvalidPayload,
            format!("path: {}", rejection.body_text()),
        )
    }
}

/// `Query<T>` whose rejection is an [`ApiError`], for the same reason as [`ApiPath`].
#[derive(Debug, Clone, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(
            Code::InvalidPayload,
            format!("query: {}", rejection.body_text()),
        )
    }
}

/// The answer to an `/api/` path no route matches.
pub async fn api_not_found() -> ApiError {
    ApiError::new(Code::NotFound, "no such API route")
}
