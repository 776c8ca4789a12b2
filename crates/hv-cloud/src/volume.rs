//! Cinder v3 under `/volume/v3/{project_id}` (microversion 3.0): version discovery, quota
//! sets and limits.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::middleware;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use hv_orchestrator::quota::{Resource, Usage};
use hv_orchestrator::Context;
use serde::Deserialize;
use serde_json::{json, Map};

use crate::auth::{Caller, Cinder};
use crate::error::{ApiError, ApiResult, Service};
use crate::http::{ok, read_json, Params};
use crate::quota::{self, QuotaBody};
use crate::versions::{cinder_microversion, volume_root};
use crate::Api;

const S: Service = Service::Volume;
type Who = Caller<Cinder>;

/// The volume quota keys and the resources they count.
pub const QUOTA_KEYS: &[(&str, Resource)] =
    &[("volumes", Resource::Volumes), ("gigabytes", Resource::Gigabytes)];

/// The volume routes.
pub fn routes() -> Router<Arc<Api>> {
    let api = Router::new()
        .route("/volume/v3/{project}/os-quota-sets/{pid}", get(quota_show).put(quota_set))
        .route("/volume/v3/{project}/os-quota-sets/{pid}/defaults", get(quota_defaults))
        .route("/volume/v3/{project}/limits", get(limits))
        .layer(middleware::from_fn(cinder_microversion));
    Router::new()
        .route("/volume", get(volume_root))
        .route("/volume/", get(volume_root))
        .route("/volume/v3", get(volume_root))
        .route("/volume/v3/", get(volume_root))
        .merge(api)
}

/// The project in the URL must be the token's (an admin may name any).
fn url_project(ctx: &Context, project: &str) -> ApiResult<()> {
    if ctx.owns(project) {
        Ok(())
    } else {
        Err(ApiError::not_found(S, format!("project '{project}' not found")))
    }
}

async fn quota_show(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((project, pid)): Path<(String, String)>,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let with_usage = q.flag(S, "usage")?.unwrap_or(false);
    let usage = quota::usage(&api, S, who.0, &pid).await?;
    if !with_usage {
        return Ok(ok(json!({"quota_set": quota::limits_of(&pid, QUOTA_KEYS, &usage)})));
    }
    let mut m = Map::new();
    m.insert("id".into(), json!(pid));
    for (key, r) in QUOTA_KEYS {
        if let Some(u) = usage.iter().find(|u| u.resource == *r) {
            m.insert(
                (*key).into(),
                json!({"limit": u.limit, "in_use": u.in_use, "reserved": u.reserved,
                       "allocated": 0}),
            );
        }
    }
    Ok(ok(json!({"quota_set": m})))
}

async fn quota_defaults(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((project, pid)): Path<(String, String)>,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let usage: Vec<Usage> = QUOTA_KEYS
        .iter()
        .map(|(_, r)| Usage {
            resource: *r,
            limit: api.cloud.config().default_limits.get(*r),
            in_use: 0,
            reserved: 0,
        })
        .collect();
    Ok(ok(json!({"quota_set": quota::limits_of(&pid, QUOTA_KEYS, &usage)})))
}

async fn quota_set(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((project, pid)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        quota_set: QuotaBody,
    }
    url_project(&who, &project)?;
    let b: Req = read_json(S, body).await?;
    let changes = quota::changes(S, "quota_set", QUOTA_KEYS, &b.quota_set, &[])?;
    let usage = quota::set(&api, S, who.0, &pid, changes).await?;
    Ok(ok(json!({"quota_set": quota::limits_of(&pid, QUOTA_KEYS, &usage)})))
}

async fn limits(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(project): Path<String>,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let usage = quota::usage(&api, S, who.0, &project).await?;
    let get = |r: Resource| usage.iter().find(|u| u.resource == r).copied();
    let (v, g) = (get(Resource::Volumes), get(Resource::Gigabytes));
    Ok(ok(json!({"limits": {"rate": [], "absolute": {
        "maxTotalVolumes": v.map_or(-1, |u| u.limit), "totalVolumesUsed": v.map_or(0, |u| u.in_use),
        "maxTotalVolumeGigabytes": g.map_or(-1, |u| u.limit),
        "totalGigabytesUsed": g.map_or(0, |u| u.in_use),
    }}})))
}
