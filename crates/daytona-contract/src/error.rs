//! The API errors the operations return: a status and a message (arrays
//! already joined with ", "). `routing` renders them as the error body.

use serde_json::Value;

/// An API error: status and message.
pub(crate) struct ApiError(pub(crate) u16, pub(crate) String);

/// A status and a JSON body, or an API error.
pub(crate) type ApiResult = Result<(u16, Value), ApiError>;

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(400, message.into())
}

pub(crate) fn not_found(id_or_name: &str) -> ApiError {
    ApiError(404, format!("Sandbox with ID or name {id_or_name} not found"))
}

pub(crate) fn in_progress() -> ApiError {
    ApiError(409, "Sandbox state change in progress".to_string())
}
