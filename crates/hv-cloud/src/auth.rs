//! The caller of a request: `X-Auth-Token` validated by identity into a [`Context`]. A
//! missing, unknown, expired or revoked token is a 401 in the service's own error shape, so
//! keystoneauth re-authenticates once and retries.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use hv_orchestrator::Context;

use crate::error::{ApiError, Service};
use crate::http::blocking;
use crate::Api;

/// A service, as a type (so an extractor knows which error shape to answer in).
pub trait Svc: Send + Sync + 'static {
    /// The service.
    const SERVICE: Service;
}

macro_rules! svc {
    ($t:ident, $s:expr) => {
        #[doc = concat!("The ", stringify!($t), " service marker.")]
        #[derive(Debug)]
        pub struct $t;
        impl Svc for $t {
            const SERVICE: Service = $s;
        }
    };
}
svc!(Keystone, Service::Identity);
svc!(Nova, Service::Compute);
svc!(Glance, Service::Image);
svc!(Neutron, Service::Network);
svc!(Cinder, Service::Volume);

/// The authenticated caller of a request to service `S`.
#[derive(Debug)]
pub struct Caller<S>(pub Context, PhantomData<S>);

impl<S> std::ops::Deref for Caller<S> {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.0
    }
}

/// The token a request carries.
pub fn token_of(parts: &Parts, header: &str) -> Option<String> {
    parts.headers.get(header).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string())
}

impl<S: Svc> FromRequestParts<Arc<Api>> for Caller<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let Some(token) = token_of(parts, "x-auth-token").filter(|t| !t.is_empty()) else {
            return Err(ApiError::new(
                S::SERVICE,
                StatusCode::UNAUTHORIZED,
                "the request you have made requires authentication (no X-Auth-Token)",
            ));
        };
        let ctx = blocking(api, S::SERVICE, move |c| c.validate(&token)).await?;
        Ok(Caller(ctx, PhantomData))
    }
}
