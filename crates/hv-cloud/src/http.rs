//! What every handler shares: running a control-plane call off the async threads, reading a
//! JSON body into a type (bounded, errors naming the field), query parameters, `limit`/`marker`
//! pagination, JSON answers and OpenStack's timestamps.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use hv_orchestrator::ids::Timestamp;
use hv_orchestrator::Cloud;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult, Service};
use crate::Api;

/// The largest JSON request body taken (Nova's and Keystone's default is 112 KiB; images
/// with many properties need more).
pub const MAX_JSON_BODY: usize = 1 << 20;

/// Runs `f` on the blocking pool (the store and password hashing block).
pub async fn blocking<T, F>(api: &Arc<Api>, service: Service, f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Cloud) -> hv_orchestrator::Result<T> + Send + 'static,
{
    let cloud = api.cloud.clone();
    match tokio::task::spawn_blocking(move || f(&cloud)).await {
        Ok(r) => r.map_err(|e| ApiError::from_cloud(service, e)),
        Err(e) => {
            log::error!("a {service:?} handler panicked: {e}");
            Err(ApiError::new(service, StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
        }
    }
}

/// Reads a JSON body of at most [`MAX_JSON_BODY`] bytes into `T`: 413 when larger, 400 with
/// the field's path and the reason when it is not the expected shape.
pub async fn read_json<T: DeserializeOwned>(service: Service, body: Body) -> ApiResult<T> {
    let bytes = match Limited::new(body, MAX_JSON_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::new(
                service,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_JSON_BODY} bytes"),
            ))
        }
        Err(e) => return Err(ApiError::bad_request(service, format!("cannot read the body: {e}"))),
    };
    parse_json(service, &bytes)
}

/// Parses `bytes` into `T` (see [`read_json`]).
pub fn parse_json<T: DeserializeOwned>(service: Service, bytes: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if inner.is_syntax() || inner.is_eof() || path == "." {
            format!("malformed JSON in the request body: {inner}")
        } else {
            format!("invalid value for '{path}': {inner}")
        };
        ApiError::bad_request(service, msg)
    })
}

/// A JSON answer with `status`.
pub fn json(status: StatusCode, v: serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// 200 with a JSON body.
pub fn ok(v: serde_json::Value) -> Response {
    json(StatusCode::OK, v)
}

/// An empty answer with `status` (204 for deletes, 202 for accepted actions).
pub fn empty(status: StatusCode) -> Response {
    status.into_response()
}

/// Query parameters in order (repeated keys kept, as `fields=a&fields=b`).
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A boolean parameter as OpenStack spells them (`True`, `true`, `1`, `yes`...); `None`
    /// when absent or `None` (which the client sends for "no filter").
    pub fn flag(&self, service: Service, key: &str) -> ApiResult<Option<bool>> {
        match self.get(key) {
            None | Some("None" | "none") => Ok(None),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(ApiError::bad_request(
                    service,
                    format!("invalid value for '{key}': '{v}' is not a boolean"),
                )),
            },
        }
    }
}

/// `limit` and `marker` of a list call.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// At most this many items.
    pub limit: Option<usize>,
    /// After the item with this id.
    pub marker: Option<String>,
}

impl Page {
    /// Reads `limit` (a non-negative integer) and `marker`.
    pub fn of(service: Service, q: &Params) -> ApiResult<Page> {
        let limit = match q.get("limit") {
            None => None,
            Some(v) => Some(v.parse::<usize>().map_err(|_| {
                ApiError::bad_request(
                    service,
                    format!("invalid value for 'limit': '{v}' is not a non-negative integer"),
                )
            })?),
        };
        Ok(Page { limit, marker: q.get("marker").map(str::to_string) })
    }

    /// The page of `items` (ordered by id, as the store lists them) and the marker of the
    /// next page when this one is full. An unknown marker is a 400, as Nova and Glance answer.
    pub fn apply<T>(
        &self,
        service: Service,
        items: Vec<T>,
        id: impl Fn(&T) -> &str,
    ) -> ApiResult<(Vec<T>, Option<String>)> {
        let start = match &self.marker {
            None => 0,
            Some(m) => match items.iter().position(|i| id(i) == m) {
                Some(p) => p + 1,
                None => {
                    return Err(ApiError::bad_request(
                        service,
                        format!("marker '{m}' could not be found"),
                    ))
                }
            },
        };
        let mut page: Vec<T> = items.into_iter().skip(start).collect();
        let mut next = None;
        if let Some(l) = self.limit {
            if page.len() > l {
                page.truncate(l);
            }
            if l > 0 && page.len() == l {
                next = page.last().map(|i| id(i).to_string());
            }
        }
        Ok((page, next))
    }
}

/// A timestamp as `2025-01-01T00:00:00Z` (Nova, Glance, Neutron) or with microseconds
/// `2025-01-01T00:00:00.000000Z` (Keystone).
pub fn iso(t: Timestamp, micros: bool) -> String {
    let secs = t.0.div_euclid(1_000_000);
    let us = t.0.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if micros {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_iso_8601_utc() {
        assert_eq!(iso(Timestamp(0), false), "1970-01-01T00:00:00Z");
        assert_eq!(iso(Timestamp(951_782_400_000_001), true), "2000-02-29T00:00:00.000001Z");
        assert_eq!(iso(Timestamp(4_102_444_799_000_000), false), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn pages_follow_markers() {
        let items: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let p = Page { limit: Some(2), marker: None };
        let (page, next) = p.apply(Service::Compute, items.clone(), |s| s).unwrap();
        assert_eq!((page.len(), next.as_deref()), (2, Some("b")));
        let p = Page { limit: Some(2), marker: Some("b".into()) };
        let (page, next) = p.apply(Service::Compute, items.clone(), |s| s).unwrap();
        assert_eq!((page, next), (vec!["c".to_string()], None));
        let p = Page { limit: None, marker: Some("zz".into()) };
        assert_eq!(p.apply(Service::Compute, items, |s| s).unwrap_err().status, 400);
    }

    #[test]
    fn body_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct F {
            flavor: G,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct G {
            vcpus: u32,
        }
        let e = parse_json::<F>(Service::Compute, br#"{"flavor": {"vcpus": "x"}}"#).unwrap_err();
        assert!(e.message.contains("flavor.vcpus"), "{}", e.message);
        let e = parse_json::<F>(Service::Compute, b"{not json").unwrap_err();
        assert!(e.message.contains("malformed JSON"), "{}", e.message);
    }
}
