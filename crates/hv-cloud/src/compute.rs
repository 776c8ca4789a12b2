//! Nova v2.1 under `/compute/v2.1` (microversion 2.1): flavors and their access lists,
//! quota sets, server groups and limits.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hv_orchestrator::compute::flavor::{Flavor, FlavorAccess, NewFlavor};
use hv_orchestrator::compute::server_group::{GroupPolicy, ServerGroup};
use hv_orchestrator::policy::{authorize, Action};
use hv_orchestrator::quota::{Resource, Usage};
use hv_orchestrator::{records, Cloud, Context};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{Caller, Nova};
use crate::error::{ApiError, ApiResult, Service};
use crate::http::{blocking, empty, iso, ok, read_json, Page, Params};
use crate::quota::{self, QuotaBody};
use crate::versions::{compute_root, compute_v21, nova_microversion};
use crate::Api;

const S: Service = Service::Compute;
type Who = Caller<Nova>;

/// The compute quota keys and the resources they count.
pub const QUOTA_KEYS: &[(&str, Resource)] =
    &[("instances", Resource::Instances), ("cores", Resource::Cores), ("ram", Resource::Ram)];

/// The compute routes.
pub fn routes() -> Router<Arc<Api>> {
    let api = Router::new()
        .route("/compute/v2.1/flavors", get(list_flavors).post(create_flavor))
        .route("/compute/v2.1/flavors/detail", get(list_flavors_detail))
        .route("/compute/v2.1/flavors/{id}", get(show_flavor).delete(delete_flavor))
        .route("/compute/v2.1/flavors/{id}/os-extra_specs", get(extra_specs))
        .route("/compute/v2.1/flavors/{id}/os-flavor-access", get(flavor_access))
        .route("/compute/v2.1/flavors/{id}/action", post(flavor_action))
        .route("/compute/v2.1/os-quota-sets/{pid}", get(quota_show).put(quota_set))
        .route("/compute/v2.1/os-quota-sets/{pid}/detail", get(quota_detail))
        .route("/compute/v2.1/os-quota-sets/{pid}/defaults", get(quota_defaults))
        .route("/compute/v2.1/os-server-groups", get(list_groups).post(create_group))
        .route("/compute/v2.1/os-server-groups/{id}", get(show_group).delete(delete_group))
        .route("/compute/v2.1/limits", get(limits))
        .layer(middleware::from_fn(nova_microversion));
    Router::new()
        .route("/compute", get(compute_root))
        .route("/compute/", get(compute_root))
        .route("/compute/v2.1", get(compute_v21))
        .route("/compute/v2.1/", get(compute_v21))
        .merge(api)
}

// ---- flavors -----------------------------------------------------------------------------

fn flavor_link(api: &Api, id: &str) -> Value {
    json!([{"rel": "self", "href": format!("{}/compute/v2.1/flavors/{id}", api.public)},
           {"rel": "bookmark", "href": format!("{}/compute/flavors/{id}", api.public)}])
}

fn flavor_json(api: &Api, f: &Flavor) -> Value {
    json!({"id": f.id, "name": f.name, "ram": f.ram_mb, "vcpus": f.vcpus, "disk": f.disk_gb,
           "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gb,
           "swap": if f.swap_mb == 0 { json!("") } else { json!(f.swap_mb) },
           "os-flavor-access:is_public": f.is_public, "OS-FLV-DISABLED:disabled": f.disabled,
           "rxtx_factor": 1.0, "links": flavor_link(api, &f.id)})
}

async fn flavors(api: &Arc<Api>, who: Who, q: &Params) -> ApiResult<(Vec<Flavor>, Option<String>)> {
    let page = Page::of(S, q)?;
    // `is_public=None` (the literal string) means every flavor the caller may use.
    let public = q.flag(S, "is_public")?;
    let ctx = who.0;
    let admin = ctx.is_admin();
    let all = blocking(api, S, move |c| c.list_flavors(&ctx, None)).await?;
    let all = all
        .into_iter()
        .filter(|f| match public {
            None => true,
            Some(true) => f.is_public || !admin,
            Some(false) => !f.is_public,
        })
        .collect();
    page.apply(S, all, |f| &f.id)
}

fn flavors_links(api: &Api, next: Option<String>, detail: bool) -> Option<Value> {
    let d = if detail { "/detail" } else { "" };
    next.map(|m| {
        json!([{"rel": "next",
                "href": format!("{}/compute/v2.1/flavors{d}?marker={m}", api.public)}])
    })
}

async fn list_flavors(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let (items, next) = flavors(&api, who, &q).await?;
    let items: Vec<Value> = items
        .iter()
        .map(|f| json!({"id": f.id, "name": f.name, "links": flavor_link(&api, &f.id)}))
        .collect();
    let mut body = json!({"flavors": items});
    if let Some(l) = flavors_links(&api, next, false) {
        body["flavors_links"] = l;
    }
    Ok(ok(body))
}

async fn list_flavors_detail(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let (items, next) = flavors(&api, who, &q).await?;
    let items: Vec<Value> = items.iter().map(|f| flavor_json(&api, f)).collect();
    let mut body = json!({"flavors": items});
    if let Some(l) = flavors_links(&api, next, true) {
        body["flavors_links"] = l;
    }
    Ok(ok(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlavorCreate {
    flavor: FlavorBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlavorBody {
    name: String,
    ram: u64,
    vcpus: u32,
    disk: u64,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    swap: Option<u64>,
    #[serde(default, rename = "OS-FLV-EXT-DATA:ephemeral")]
    ephemeral: Option<u64>,
    #[serde(default, rename = "os-flavor-access:is_public")]
    is_public: Option<bool>,
    #[serde(default)]
    rxtx_factor: Option<f64>,
}

async fn create_flavor(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<FlavorCreate>(S, body).await?.flavor;
    if b.swap.unwrap_or(0) != 0 {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'flavor.swap': hv has no swap disks",
        ));
    }
    if b.ephemeral.unwrap_or(0) != 0 {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'flavor.OS-FLV-EXT-DATA:ephemeral': hv has no ephemeral disks",
        ));
    }
    if b.rxtx_factor.is_some_and(|r| r != 1.0) {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'flavor.rxtx_factor': must be 1.0",
        ));
    }
    let new = NewFlavor {
        id: b.id,
        name: b.name,
        vcpus: b.vcpus,
        ram_mb: b.ram,
        disk_gb: b.disk,
        is_public: b.is_public.unwrap_or(true),
    };
    let ctx = who.0;
    let f = blocking(&api, S, move |c| c.create_flavor(&ctx, &new)).await?;
    Ok(ok(json!({"flavor": flavor_json(&api, &f)})))
}

async fn show_flavor(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let f = blocking(&api, S, move |c| c.get_flavor(&ctx, &id)).await?;
    Ok(ok(json!({"flavor": flavor_json(&api, &f)})))
}

async fn delete_flavor(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_flavor(&ctx, &id)).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

async fn extra_specs(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let f = blocking(&api, S, move |c| c.get_flavor(&ctx, &id)).await?;
    Ok(ok(json!({"extra_specs": f.extra_specs})))
}

fn access_list(c: &Cloud, ctx: &Context, id: &str) -> hv_orchestrator::Result<Value> {
    authorize(ctx, Action::FlavorAccessList)?;
    let f = c.get_flavor(ctx, id)?;
    if f.is_public {
        return Err(hv_orchestrator::Error::not_found("flavor access list", id));
    }
    let items: Vec<Value> = records::list::<FlavorAccess>(c.store(), None, Some(id))?
        .into_iter()
        .map(|(a, _)| json!({"flavor_id": a.flavor_id, "tenant_id": a.project_id}))
        .collect();
    Ok(json!({"flavor_access": items}))
}

async fn flavor_access(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    Ok(ok(blocking(&api, S, move |c| access_list(c, &ctx, &id)).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tenant {
    tenant: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
enum FlavorAction {
    #[serde(rename = "addTenantAccess")]
    Add(Tenant),
    #[serde(rename = "removeTenantAccess")]
    Remove(Tenant),
}

async fn flavor_action(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let action: FlavorAction = read_json(S, body).await?;
    let ctx = who.0;
    let list = blocking(&api, S, move |c| {
        match action {
            FlavorAction::Add(t) => c.add_flavor_access(&ctx, &id, &t.tenant)?,
            FlavorAction::Remove(t) => c.remove_flavor_access(&ctx, &id, &t.tenant)?,
        }
        access_list(c, &ctx, &id)
    })
    .await?;
    Ok(ok(list))
}

// ---- quotas ------------------------------------------------------------------------------

async fn quota_show(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(pid): Path<String>,
) -> ApiResult<Response> {
    let usage = quota::usage(&api, S, who.0, &pid).await?;
    Ok(ok(json!({"quota_set": quota::limits_of(&pid, QUOTA_KEYS, &usage)})))
}

async fn quota_detail(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(pid): Path<String>,
) -> ApiResult<Response> {
    let usage = quota::usage(&api, S, who.0, &pid).await?;
    let mut m = Map::new();
    m.insert("id".into(), json!(pid));
    for (key, r) in QUOTA_KEYS {
        if let Some(u) = usage.iter().find(|u| u.resource == *r) {
            m.insert(
                (*key).into(),
                json!({"limit": u.limit, "in_use": u.in_use, "reserved": u.reserved}),
            );
        }
    }
    Ok(ok(json!({"quota_set": m})))
}

async fn quota_defaults(
    State(api): State<Arc<Api>>,
    _who: Who,
    Path(pid): Path<String>,
) -> ApiResult<Response> {
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
    Path(pid): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        quota_set: QuotaBody,
    }
    let b: Req = read_json(S, body).await?;
    let changes = quota::changes(S, "quota_set", QUOTA_KEYS, &b.quota_set, &["force"])?;
    let usage = quota::set(&api, S, who.0, &pid, changes).await?;
    Ok(ok(json!({"quota_set": quota::limits_of(&pid, QUOTA_KEYS, &usage)})))
}

// ---- server groups -----------------------------------------------------------------------

fn policy_name(p: GroupPolicy) -> &'static str {
    match p {
        GroupPolicy::Affinity => "affinity",
        GroupPolicy::AntiAffinity => "anti-affinity",
    }
}

fn group_json(g: &ServerGroup) -> Value {
    let members: Vec<&str> = g.members.iter().map(|m| m.consumer_id.as_str()).collect();
    json!({"id": g.id, "name": g.name, "policies": [policy_name(g.policy)],
           "members": members, "metadata": {}, "project_id": g.project_id,
           "created_at": iso(g.created_at, false)})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupCreate {
    server_group: GroupBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: String,
    policies: Vec<String>,
}

async fn create_group(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<GroupCreate>(S, body).await?.server_group;
    let policy = match b.policies.as_slice() {
        [p] if p == "affinity" => GroupPolicy::Affinity,
        [p] if p == "anti-affinity" => GroupPolicy::AntiAffinity,
        _ => return Err(ApiError::bad_request(
            S,
            "invalid value for 'server_group.policies': one of ['affinity'] or ['anti-affinity']",
        )),
    };
    let ctx = who.0;
    let g = blocking(&api, S, move |c| c.create_server_group(&ctx, &b.name, policy)).await?;
    Ok(ok(json!({"server_group": group_json(&g)})))
}

async fn list_groups(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let page = Page::of(S, &q)?;
    let all_projects = q.flag(S, "all_projects")?.unwrap_or(false);
    let ctx = who.0;
    let mine = ctx.project_id().to_string();
    let all = blocking(&api, S, move |c| c.list_server_groups(&ctx)).await?;
    // Nova lists the caller's project's groups unless an admin asks for all projects.
    let all = all.into_iter().filter(|g| all_projects || g.project_id == mine).collect();
    let (items, _) = page.apply(S, all, |g| &g.id)?;
    let items: Vec<Value> = items.iter().map(group_json).collect();
    Ok(ok(json!({"server_groups": items})))
}

async fn show_group(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let g = blocking(&api, S, move |c| c.get_server_group(&ctx, &id)).await?;
    Ok(ok(json!({"server_group": group_json(&g)})))
}

async fn delete_group(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_server_group(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---- limits ------------------------------------------------------------------------------

async fn limits(State(api): State<Arc<Api>>, who: Who) -> ApiResult<Response> {
    let pid = who.project_id().to_string();
    let usage = quota::usage(&api, S, who.0, &pid).await?;
    let get = |r: Resource| usage.iter().find(|u| u.resource == r).copied();
    let (i, c, m) = (get(Resource::Instances), get(Resource::Cores), get(Resource::Ram));
    let lim = |u: Option<Usage>| u.map_or(-1, |u| u.limit);
    let used = |u: Option<Usage>| u.map_or(0, |u| u.in_use);
    Ok(ok(json!({"limits": {"rate": [], "absolute": {
        "maxTotalInstances": lim(i), "totalInstancesUsed": used(i),
        "maxTotalCores": lim(c), "totalCoresUsed": used(c),
        "maxTotalRAMSize": lim(m), "totalRAMUsed": used(m),
    }}})))
}
