//! Errors as each OpenStack service shapes them: Keystone's `{"error": {...}}`, Nova's and
//! Cinder's `{"itemNotFound": {...}}` family, Glance's flat `{"code", "title", "message"}`,
//! Neutron's `{"NeutronError": {...}}`, always `application/json` with the real status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hv_orchestrator::Error;

/// The OpenStack service a route belongs to (decides the error shape and quota status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Keystone v3.
    Identity,
    /// Nova v2.1.
    Compute,
    /// Glance v2.
    Image,
    /// Neutron v2.0.
    Network,
    /// Cinder v3.
    Volume,
}

/// An error answer of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Whose shape.
    pub service: Service,
    /// The HTTP status.
    pub status: StatusCode,
    /// What the client shows.
    pub message: String,
}

impl ApiError {
    /// An error of `service` with `status`.
    pub fn new(service: Service, status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { service, status, message: message.into() }
    }

    /// 400 naming the field.
    pub fn bad_request(service: Service, message: impl Into<String>) -> ApiError {
        ApiError::new(service, StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(service: Service, message: impl Into<String>) -> ApiError {
        ApiError::new(service, StatusCode::NOT_FOUND, message)
    }

    /// The answer to a control-plane error.
    pub fn from_cloud(service: Service, e: Error) -> ApiError {
        let status = match &e {
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Invalid { .. } | Error::ImageRefused { .. } => StatusCode::BAD_REQUEST,
            Error::Conflict { .. } | Error::NetworkAmbiguous => StatusCode::CONFLICT,
            Error::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            // Nova and Keystone answer 403 for quota; Cinder and Glance 413; Neutron 409.
            Error::QuotaExceeded { .. } => match service {
                Service::Compute | Service::Identity => StatusCode::FORBIDDEN,
                Service::Image | Service::Volume => StatusCode::PAYLOAD_TOO_LARGE,
                Service::Network => StatusCode::CONFLICT,
            },
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The detail (paths, SQL) is for the operator's log, not the tenant.
            log::error!("{service:?} request failed: {e}");
            "the server failed to handle the request; the operator's log has the detail".into()
        } else {
            e.to_string()
        };
        ApiError { service, status, message }
    }

    fn body(&self) -> serde_json::Value {
        let code = self.status.as_u16();
        let title = self.status.canonical_reason().unwrap_or("Error");
        match self.service {
            Service::Identity => serde_json::json!({
                "error": {"code": code, "title": title, "message": self.message}
            }),
            Service::Image => {
                serde_json::json!({"code": code, "title": title, "message": self.message})
            }
            Service::Network => {
                let kind = match code {
                    400 => "BadRequest",
                    401 => "NotAuthorized",
                    403 => "PolicyNotAuthorized",
                    404 => "NotFound",
                    409 => "Conflict",
                    413 => "RequestEntityTooLarge",
                    501 => "NotImplemented",
                    _ => "NeutronError",
                };
                serde_json::json!({"NeutronError": {"type": kind, "message": self.message, "detail": ""}})
            }
            Service::Compute | Service::Volume => {
                let key = match code {
                    400 => "badRequest",
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "itemNotFound",
                    405 => "badMethod",
                    406 => "notAcceptable",
                    409 => "conflictingRequest",
                    413 => "overLimit",
                    501 => "notImplemented",
                    _ if self.service == Service::Compute => "computeFault",
                    _ => "volumeFault",
                };
                serde_json::json!({key: {"code": code, "message": self.message}})
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Keystone"));
        }
        r
    }
}

/// The result of a handler.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_has_its_shape() {
        let e = |s| ApiError::from_cloud(s, Error::not_found("image", "x")).body();
        assert_eq!(e(Service::Identity)["error"]["code"], 404);
        assert_eq!(e(Service::Compute)["itemNotFound"]["code"], 404);
        assert_eq!(e(Service::Image)["code"], 404);
        assert_eq!(e(Service::Network)["NeutronError"]["type"], "NotFound");
        let q = Error::QuotaExceeded {
            resource: "cores".into(),
            limit: 1,
            in_use: 1,
            reserved: 0,
            requested: 1,
        };
        assert_eq!(ApiError::from_cloud(Service::Volume, q).status, 413);
    }
}
