//! Version discovery (unauthenticated, as every client fetches it first), the service
//! catalog, and microversions: what each service advertises is exactly what hv implements,
//! and a request for another version is refused as Nova and Cinder refuse it (406).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::error::{ApiError, Service};
use crate::http::{json, ok};
use crate::Api;

/// The compute microversion range hv implements (min, max).
pub const COMPUTE_VERSIONS: (Microversion, Microversion) = (Microversion(2, 1), Microversion(2, 1));
/// The block-storage microversion range hv implements.
pub const VOLUME_VERSIONS: (Microversion, Microversion) = (Microversion(3, 0), Microversion(3, 0));
/// The Keystone API version served.
pub const IDENTITY_VERSION: &str = "v3.14";
/// The Glance API version served (images and members; no import, tasks or stores).
pub const IMAGE_VERSION: &str = "v2.5";

/// A microversion `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u32, pub u32);

impl std::fmt::Display for Microversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl Microversion {
    fn parse(s: &str) -> Option<Microversion> {
        let (a, b) = s.trim().split_once('.')?;
        Some(Microversion(a.parse().ok()?, b.parse().ok()?))
    }
}

/// The keystone version object.
fn identity_version(public: &str) -> Value {
    json!({
        "id": IDENTITY_VERSION, "status": "stable", "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{public}/identity/v3/")}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

/// `GET /identity`: the versions (300, as Keystone).
pub async fn identity_root(State(api): State<Arc<Api>>) -> Response {
    json(
        StatusCode::MULTIPLE_CHOICES,
        json!({"versions": {"values": [identity_version(&api.public)]}}),
    )
}

/// `GET /identity/v3`.
pub async fn identity_v3(State(api): State<Arc<Api>>) -> Response {
    ok(json!({"version": identity_version(&api.public)}))
}

fn compute_version(public: &str) -> Value {
    let (min, max) = COMPUTE_VERSIONS;
    json!({
        "id": "v2.1", "status": "CURRENT", "version": max.to_string(),
        "min_version": min.to_string(), "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": format!("{public}/compute/v2.1/")}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.compute+json;version=2.1"}],
    })
}

/// `GET /compute/`: the versions.
pub async fn compute_root(State(api): State<Arc<Api>>) -> Response {
    json(StatusCode::MULTIPLE_CHOICES, json!({"versions": [compute_version(&api.public)]}))
}

/// `GET /compute/v2.1`.
pub async fn compute_v21(State(api): State<Arc<Api>>) -> Response {
    ok(json!({"version": compute_version(&api.public)}))
}

/// `GET /image` and `GET /image/versions`: Glance's list (300 at the root).
pub async fn image_root(State(api): State<Arc<Api>>, req: Request) -> Response {
    let status = if req.uri().path().ends_with("versions") {
        StatusCode::OK
    } else {
        StatusCode::MULTIPLE_CHOICES
    };
    json(
        status,
        json!({"versions": [{
            "id": IMAGE_VERSION, "status": "CURRENT",
            "links": [{"rel": "self", "href": format!("{}/image/v2/", api.public)}],
        }]}),
    )
}

/// `GET /network`: Neutron's one version.
pub async fn network_root(State(api): State<Arc<Api>>) -> Response {
    ok(json!({"versions": [{
        "id": "v2.0", "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{}/network/v2.0/", api.public)}],
    }]}))
}

/// `GET /volume/` and `GET /volume/v3/`: Cinder's versions.
pub async fn volume_root(State(api): State<Arc<Api>>) -> Response {
    let (min, max) = VOLUME_VERSIONS;
    ok(json!({"versions": [{
        "id": "v3.0", "status": "CURRENT", "version": max.to_string(),
        "min_version": min.to_string(), "updated": "2023-01-01T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{}/volume/v3/", api.public)}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.volume+json;version=3"}],
    }]}))
}

/// The service catalog of a token scoped to `project_id`.
pub fn catalog(public: &str, project_id: &str, region: &str) -> Value {
    let entry = |ty: &str, name: &str, url: String| {
        json!({
            "id": format!("{name}-{ty}"), "type": ty, "name": name,
            "endpoints": [{"id": format!("{name}-{ty}-public"), "interface": "public",
                           "region_id": region, "region": region, "url": url}],
        })
    };
    json!([
        entry("identity", "keystone", format!("{public}/identity")),
        entry("compute", "nova", format!("{public}/compute/v2.1")),
        entry("image", "glance", format!("{public}/image")),
        entry("network", "neutron", format!("{public}/network")),
        entry("block-storage", "cinder", format!("{public}/volume/v3/{project_id}")),
        entry("volumev3", "cinderv3", format!("{public}/volume/v3/{project_id}")),
    ])
}

/// Which version a request asks of `service` (`compute` or `volume`), from
/// `OpenStack-API-Version` (or Nova's legacy header); `None` means the minimum.
fn requested(headers: &HeaderMap, service: &str) -> Result<Option<String>, String> {
    for v in headers.get_all("openstack-api-version") {
        let v = v.to_str().map_err(|_| "OpenStack-API-Version is not text".to_string())?;
        for item in v.split(',') {
            let mut it = item.split_whitespace();
            if it.next().is_some_and(|s| s.eq_ignore_ascii_case(service)) {
                return Ok(Some(it.next().unwrap_or("").to_string()));
            }
        }
    }
    if service == "compute" {
        if let Some(v) = headers.get("x-openstack-nova-api-version") {
            let v = v.to_str().map_err(|_| "X-OpenStack-Nova-API-Version is not text")?;
            return Ok(Some(v.trim().to_string()));
        }
    }
    Ok(None)
}

fn negotiate(
    headers: &HeaderMap,
    name: &str,
    (min, max): (Microversion, Microversion),
    service: Service,
) -> Result<Microversion, ApiError> {
    let asked = requested(headers, name).map_err(|m| ApiError::bad_request(service, m))?;
    let v = match asked.as_deref() {
        None => return Ok(min),
        Some("latest") => return Ok(max),
        Some(s) => Microversion::parse(s).ok_or_else(|| {
            ApiError::bad_request(service, format!("invalid microversion '{s}' for {name}"))
        })?,
    };
    if v < min || v > max {
        return Err(ApiError::new(
            service,
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Version {v} is not supported by the API. Minimum is {min} and maximum is {max}."
            ),
        ));
    }
    Ok(v)
}

fn stamp(mut r: Response, name: &str, v: Microversion, legacy: bool) -> Response {
    let h = r.headers_mut();
    if let Ok(val) = HeaderValue::from_str(&format!("{name} {v}")) {
        h.insert("openstack-api-version", val);
    }
    if legacy {
        if let Ok(val) = HeaderValue::from_str(&v.to_string()) {
            h.insert("x-openstack-nova-api-version", val);
        }
        h.insert(
            "vary",
            HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
        );
    } else {
        h.insert("vary", HeaderValue::from_static("OpenStack-API-Version"));
    }
    r
}

/// Middleware of the compute routes: negotiates the microversion and names it in the answer.
pub async fn nova_microversion(req: Request, next: Next) -> Response {
    match negotiate(req.headers(), "compute", COMPUTE_VERSIONS, Service::Compute) {
        Ok(v) => stamp(next.run(req).await, "compute", v, true),
        Err(e) => e.into_response(),
    }
}

/// Middleware of the block-storage routes.
pub async fn cinder_microversion(req: Request, next: Next) -> Response {
    match negotiate(req.headers(), "volume", VOLUME_VERSIONS, Service::Volume) {
        Ok(v) => stamp(next.run(req).await, "volume", v, false),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn microversions_are_negotiated_exactly() {
        let n = |m: &HeaderMap| negotiate(m, "compute", COMPUTE_VERSIONS, Service::Compute);
        assert_eq!(n(&h(&[])).unwrap(), Microversion(2, 1));
        assert_eq!(n(&h(&[("openstack-api-version", "compute 2.1")])).unwrap(), Microversion(2, 1));
        assert_eq!(
            n(&h(&[("openstack-api-version", "compute latest")])).unwrap(),
            Microversion(2, 1)
        );
        assert_eq!(n(&h(&[("openstack-api-version", "compute 2.96")])).unwrap_err().status, 406);
        assert_eq!(n(&h(&[("x-openstack-nova-api-version", "2.5")])).unwrap_err().status, 406);
        assert_eq!(n(&h(&[("openstack-api-version", "compute two")])).unwrap_err().status, 400);
        // Another service's entry is not ours.
        assert_eq!(n(&h(&[("openstack-api-version", "volume 3.71")])).unwrap(), Microversion(2, 1));
    }
}
