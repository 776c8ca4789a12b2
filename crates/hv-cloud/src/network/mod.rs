//! Neutron v2.0 under `/network`: version discovery, extensions, quotas, networks, subnets
//! and ports here; security groups, routers and floating IPs in [`l3`]. Lists take Neutron's
//! attribute filters (`name=`, `device_id=`, `network_id=`, ...), `limit`/`marker`, and ignore
//! `fields=`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use hv_orchestrator::quota::Resource;
use serde::Deserialize;
use serde_json::{json, Map};

use crate::auth::{Caller, Neutron};
use crate::error::{ApiResult, Service};
use crate::http::{ok, read_json};
use crate::quota::{self, QuotaBody};
use crate::versions::network_root;
use crate::Api;

pub mod l3;
mod net;

const S: Service = Service::Network;
type Who = Caller<Neutron>;

/// The network quota keys and the resources they count.
pub const QUOTA_KEYS: &[(&str, Resource)] = &[
    ("network", Resource::Networks),
    ("port", Resource::Ports),
    ("floatingip", Resource::FloatingIps),
    ("security_group", Resource::SecurityGroups),
];

/// The network routes.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/network", get(network_root))
        .route("/network/", get(network_root))
        .route("/network/v2.0/extensions", get(extensions))
        .route("/network/v2.0/quotas/{pid}", get(quota_show).put(quota_set))
        .route("/network/v2.0/quotas/{pid}/details", get(quota_details))
        .route("/network/v2.0/quotas/{pid}/default", get(quota_default))
        .merge(net::routes())
        .merge(l3::routes())
}

async fn extensions(_who: Who) -> Response {
    ok(json!({"extensions": [
        {"alias": "quotas", "name": "Quota management support", "description":
         "Expose functions for quotas management per project", "updated": "2012-07-29T10:00:00-00:00",
         "links": []},
        {"alias": "quota_details", "name": "Quota details extension", "description":
         "Expose functions for quotas usage statistics per project",
         "updated": "2017-02-10T10:00:00-00:00", "links": []},
        {"alias": "external-net", "name": "Neutron external network", "description":
         "Adds external network attribute to network resource.",
         "updated": "2013-01-14T10:00:00-00:00", "links": []},
        {"alias": "router", "name": "Neutron L3 Router", "description":
         "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to external networks via a NAT gateway.",
         "updated": "2012-07-20T10:00:00-00:00", "links": []},
        {"alias": "security-group", "name": "security-group", "description":
         "The security groups extension.", "updated": "2012-10-05T10:00:00-00:00", "links": []},
        {"alias": "port-security", "name": "Port Security", "description":
         "Provides port security", "updated": "2012-07-23T10:00:00-00:00", "links": []},
    ]}))
}

async fn quota_show(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(pid): Path<String>,
) -> ApiResult<Response> {
    let usage = quota::usage(&api, S, who.0, &pid).await?;
    let mut q = quota::limits_of(&pid, QUOTA_KEYS, &usage);
    q.as_object_mut().map(|m| m.remove("id"));
    Ok(ok(json!({"quota": q})))
}

async fn quota_default(
    State(api): State<Arc<Api>>,
    _who: Who,
    Path(_pid): Path<String>,
) -> ApiResult<Response> {
    let mut m = Map::new();
    for (k, r) in QUOTA_KEYS {
        m.insert((*k).into(), json!(api.cloud.config().default_limits.get(*r)));
    }
    Ok(ok(json!({"quota": m})))
}

async fn quota_details(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(pid): Path<String>,
) -> ApiResult<Response> {
    let usage = quota::usage(&api, S, who.0, &pid).await?;
    let mut m = Map::new();
    for (key, r) in QUOTA_KEYS {
        if let Some(u) = usage.iter().find(|u| u.resource == *r) {
            m.insert(
                (*key).into(),
                json!({"limit": u.limit, "used": u.in_use, "reserved": u.reserved}),
            );
        }
    }
    Ok(ok(json!({"quota": m})))
}

async fn quota_set(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(pid): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        quota: QuotaBody,
    }
    let b: Req = read_json(S, body).await?;
    let changes = quota::changes(S, "quota", QUOTA_KEYS, &b.quota, &["check_limit", "force"])?;
    let usage = quota::set(&api, S, who.0, &pid, changes).await?;
    let mut q = quota::limits_of(&pid, QUOTA_KEYS, &usage);
    q.as_object_mut().map(|m| m.remove("id"));
    Ok(ok(json!({"quota": q})))
}

/// Parses an IPv4 address of field `field`.
pub(crate) fn parse_ip(field: &str, s: &str) -> ApiResult<std::net::Ipv4Addr> {
    s.parse().map_err(|_| {
        crate::error::ApiError::bad_request(
            S,
            format!("invalid value for '{field}': '{s}' is not an IPv4 address"),
        )
    })
}

/// True when `v` (a field of a listed object) equals the query value `want`.
fn field_matches(v: &serde_json::Value, want: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == want,
        serde_json::Value::Bool(b) => want.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        serde_json::Value::Number(n) => n.to_string() == want,
        serde_json::Value::Null => want.is_empty() || want == "None",
        serde_json::Value::Array(a) => a.iter().any(|x| field_matches(x, want)),
        serde_json::Value::Object(_) => false,
    }
}

/// A Neutron list answer: `items` filtered by the query's attribute filters (every key
/// except `fields`, `limit`, `marker` and `sort_*`; repeated keys are alternatives), paged,
/// as `{"<what>": [...], "<what>_links": [next]}`.
pub(crate) fn list_answer(
    api: &Api,
    what: &str,
    items: Vec<serde_json::Value>,
    q: &crate::http::Params,
) -> ApiResult<Response> {
    let page = crate::http::Page::of(S, q)?;
    let filters: Vec<&(String, String)> =
        q.0.iter()
            .filter(|(k, _)| !matches!(k.as_str(), "fields" | "limit" | "marker" | "page_reverse"))
            .filter(|(k, _)| !k.starts_with("sort_"))
            .collect();
    let kept: Vec<serde_json::Value> = items
        .into_iter()
        .filter(|item| {
            let mut keys: Vec<&str> = filters.iter().map(|(k, _)| k.as_str()).collect();
            keys.dedup();
            keys.iter().all(|k| {
                filters
                    .iter()
                    .filter(|(fk, _)| fk == k)
                    .any(|(_, want)| item.get(*k).is_some_and(|v| field_matches(v, want)))
            })
        })
        .collect();
    let (page_items, next) =
        page.apply(S, kept, |v| v.get("id").and_then(|i| i.as_str()).unwrap_or(""))?;
    let mut body = json!({ what: page_items });
    if let Some(m) = next {
        let limit = page.limit.unwrap_or(0);
        body[format!("{what}_links")] = json!([{"rel": "next",
            "href": format!("{}/network/v2.0/{}?limit={limit}&marker={m}", api.public, what.replace('_', "-"))}]);
    }
    Ok(ok(body))
}
