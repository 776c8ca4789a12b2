//! Neutron v2.0 under `/network`: version discovery, extensions and quotas.

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
}

async fn extensions(_who: Who) -> Response {
    ok(json!({"extensions": [
        {"alias": "quotas", "name": "Quota management support", "description":
         "Expose functions for quotas management per project", "updated": "2012-07-29T10:00:00-00:00",
         "links": []},
        {"alias": "quota_details", "name": "Quota details extension", "description":
         "Expose functions for quotas usage statistics per project",
         "updated": "2017-02-10T10:00:00-00:00", "links": []},
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
