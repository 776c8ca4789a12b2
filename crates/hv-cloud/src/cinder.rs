//! Cinder volumes and snapshots under `/volume/v3/{project_id}` (create, list, detail, show,
//! delete, `os-extend`), and Nova's `os-volume_attachments`, which `server add volume` and
//! `server remove volume` use.
//!
//! Volumes live in the compute host's volume pool: a control-plane-only server answers 501.
//! Creation is synchronous, so a new volume is `available` when the 202 arrives and can be
//! attached right away.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hv_orchestrator::compute::VolumeAttachment;
use hv_orchestrator::volume::{NewVolume, Volume, VolumeSnapshot};
use hv_orchestrator::Context;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{Caller, Cinder, Nova};
use crate::error::{ApiError, ApiResult, Service};
use crate::http::{blocking, empty, iso, json as json_at, ok, read_json, Page, Params};
use crate::versions::{cinder_microversion, nova_microversion};
use crate::Api;

const S: Service = Service::Volume;
type Who = Caller<Cinder>;

/// The Cinder volume and snapshot routes and Nova's volume attachment routes.
pub fn routes() -> Router<Arc<Api>> {
    let cinder = Router::new()
        .route("/volume/v3/{project}/volumes", get(list_volumes).post(create_volume))
        .route("/volume/v3/{project}/volumes/detail", get(list_volumes_detail))
        .route("/volume/v3/{project}/volumes/{id}", get(show_volume).delete(delete_volume))
        .route("/volume/v3/{project}/volumes/{id}/action", post(volume_action))
        .route("/volume/v3/{project}/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/volume/v3/{project}/snapshots/detail", get(list_snapshots))
        .route("/volume/v3/{project}/snapshots/{id}", get(show_snapshot).delete(delete_snapshot))
        .layer(middleware::from_fn(cinder_microversion));
    let nova = Router::new()
        .route(
            "/compute/v2.1/servers/{id}/os-volume_attachments",
            get(list_attachments).post(attach),
        )
        .route(
            "/compute/v2.1/servers/{id}/os-volume_attachments/{volume}",
            axum::routing::delete(detach),
        )
        .layer(middleware::from_fn(nova_microversion));
    cinder.merge(nova)
}

/// The project in the URL must be the token's (an admin may name any).
fn url_project(ctx: &Context, project: &str) -> ApiResult<()> {
    if ctx.owns(project) {
        Ok(())
    } else {
        Err(ApiError::not_found(S, format!("project '{project}' not found")))
    }
}

fn attachment_json(a: &VolumeAttachment) -> Value {
    json!({"id": a.volume_id, "attachment_id": a.volume_id, "volume_id": a.volume_id,
           "server_id": a.server_id, "device": a.device, "host_name": null,
           "attached_at": null})
}

fn volume_json(api: &Api, v: &Volume) -> Value {
    let href = format!("{}/volume/v3/{}/volumes/{}", api.public, v.project_id, v.id);
    let mut j = json!({
        "id": v.id, "name": v.name, "status": v.status, "size": v.size_gb,
        "attachments": v.attachments.iter().map(attachment_json).collect::<Vec<_>>(),
        "availability_zone": "nova", "bootable": if v.bootable { "true" } else { "false" },
        "created_at": iso(v.created_at, true), "updated_at": iso(v.updated_at, true),
        "description": null, "metadata": {}, "multiattach": false, "encrypted": false,
        "volume_type": "__DEFAULT__", "snapshot_id": v.snapshot_id, "source_volid": null,
        "consistencygroup_id": null, "replication_status": null, "user_id": null,
        "os-vol-tenant-attr:tenant_id": v.project_id,
        "links": [{"rel": "self", "href": href}],
    });
    if let Some(image) = &v.image_id {
        j["volume_image_metadata"] = json!({"image_id": image});
    }
    j
}

fn snapshot_json(s: &VolumeSnapshot) -> Value {
    json!({"id": s.id, "name": s.name, "volume_id": s.volume_id, "size": s.size_gb,
           "status": s.status, "created_at": iso(s.created_at, true), "updated_at": null,
           "description": null, "metadata": {}, "progress": "100%",
           "os-extended-snapshot-attributes:project_id": s.project_id})
}

// ---- volumes -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct CreateReq {
    volume: CreateBody,
}

/// What `volume create` sends: every field but `size` may be null; the ones hv cannot honour
/// are refused when set.
#[derive(Deserialize)]
struct CreateBody {
    size: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "imageRef")]
    image_ref: Option<String>,
    #[serde(default)]
    snapshot_id: Option<String>,
    #[serde(default)]
    source_volid: Option<String>,
    #[serde(default)]
    backup_id: Option<String>,
    #[serde(default)]
    consistencygroup_id: Option<String>,
    #[serde(default)]
    multiattach: Option<bool>,
}

async fn create_volume(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(project): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let b = read_json::<CreateReq>(S, body).await?.volume;
    for (field, set) in [
        ("source_volid", b.source_volid.is_some()),
        ("backup_id", b.backup_id.is_some()),
        ("consistencygroup_id", b.consistencygroup_id.is_some()),
        ("multiattach", b.multiattach == Some(true)),
    ] {
        if set {
            return Err(ApiError::bad_request(S, format!("'volume.{field}' is not supported")));
        }
    }
    let new = NewVolume {
        // Cinder allows nameless volumes; hv's volumes have names.
        name: b.name.filter(|n| !n.is_empty()).unwrap_or_else(|| "volume".into()),
        size_gb: b.size,
        image_id: b.image_ref,
        snapshot_id: b.snapshot_id,
    };
    let ctx = who.0;
    let v = blocking(&api, S, move |c| c.create_volume(&ctx, &new)).await?;
    Ok(json_at(StatusCode::ACCEPTED, json!({"volume": volume_json(&api, &v)})))
}

async fn volumes(
    api: &Arc<Api>,
    who: Who,
    project: &str,
    q: &Params,
) -> ApiResult<(Vec<Volume>, Option<String>)> {
    url_project(&who, project)?;
    let page = Page::of(S, q)?;
    let all_tenants = q.flag(S, "all_tenants")?.unwrap_or(false);
    let name = q.get("name").map(str::to_string);
    let status = q.get("status").map(str::to_ascii_lowercase);
    let ctx = who.0;
    let mine = ctx.project_id().to_string();
    let all = blocking(api, S, move |c| {
        Ok(c.list_volumes(&ctx)?
            .into_iter()
            .filter(|v| (all_tenants && ctx.is_admin()) || v.project_id == mine)
            .filter(|v| name.as_deref().is_none_or(|n| v.name == n))
            .filter(|v| status.as_deref().is_none_or(|s| json!(v.status).as_str() == Some(s)))
            .collect())
    })
    .await?;
    page.apply(S, all, |v| &v.id)
}

async fn list_volumes(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(project): Path<String>,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let (items, _) = volumes(&api, who, &project, &q).await?;
    let items: Vec<Value> = items.iter().map(|v| json!({"id": v.id, "name": v.name})).collect();
    Ok(ok(json!({"volumes": items})))
}

async fn list_volumes_detail(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(project): Path<String>,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let (items, _) = volumes(&api, who, &project, &q).await?;
    let items: Vec<Value> = items.iter().map(|v| volume_json(&api, v)).collect();
    Ok(ok(json!({"volumes": items})))
}

async fn show_volume(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let ctx = who.0;
    let v = blocking(&api, S, move |c| c.get_volume(&ctx, &id)).await?;
    Ok(ok(json!({"volume": volume_json(&api, &v)})))
}

async fn delete_volume(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((project, id)): Path<(String, String)>,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    if q.flag(S, "cascade")? == Some(true) {
        return Err(ApiError::bad_request(
            S,
            "cascade=True is not supported: delete snapshots first",
        ));
    }
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_volume(&ctx, &id)).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

async fn volume_action(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((project, id)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let body: Map<String, Value> = read_json(S, body).await?;
    let mut keys = body.into_iter();
    let (Some((name, arg)), None) = (keys.next(), keys.next()) else {
        return Err(ApiError::bad_request(S, "an action body has exactly one key"));
    };
    if name != "os-extend" {
        return Err(ApiError::bad_request(S, format!("unsupported volume action '{name}'")));
    }
    let size = match arg.get("new_size") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::bad_request(S, "invalid value for 'os-extend.new_size': a size in GiB")
    })?;
    let ctx = who.0;
    blocking(&api, S, move |c| c.extend_volume(&ctx, &id, size)).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

// ---- snapshots ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct SnapshotReq {
    snapshot: SnapshotBody,
}

#[derive(Deserialize)]
struct SnapshotBody {
    volume_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    force: Option<bool>,
}

async fn create_snapshot(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(project): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let b = read_json::<SnapshotReq>(S, body).await?.snapshot;
    let force = b.force.unwrap_or(false);
    let ctx = who.0;
    let name = b.name.unwrap_or_default();
    let s = blocking(&api, S, move |c| c.create_snapshot(&ctx, &b.volume_id, &name, force)).await?;
    Ok(json_at(StatusCode::ACCEPTED, json!({"snapshot": snapshot_json(&s)})))
}

async fn list_snapshots(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(project): Path<String>,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let page = Page::of(S, &q)?;
    let name = q.get("name").map(str::to_string);
    let ctx = who.0;
    let mine = ctx.project_id().to_string();
    let all = blocking(&api, S, move |c| {
        Ok(c.list_snapshots(&ctx)?
            .into_iter()
            .filter(|s| s.project_id == mine)
            .filter(|s| name.as_deref().is_none_or(|n| s.name == n))
            .collect())
    })
    .await?;
    let (items, _) = page.apply(S, all, |s: &VolumeSnapshot| &s.id)?;
    let items: Vec<Value> = items.iter().map(snapshot_json).collect();
    Ok(ok(json!({"snapshots": items})))
}

async fn show_snapshot(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let ctx = who.0;
    let s = blocking(&api, S, move |c| c.get_snapshot(&ctx, &id)).await?;
    Ok(ok(json!({"snapshot": snapshot_json(&s)})))
}

async fn delete_snapshot(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((project, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    url_project(&who, &project)?;
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_snapshot(&ctx, &id)).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

// ---- Nova's volume attachments -----------------------------------------------------------

const N: Service = Service::Compute;

fn nova_attachment(a: &VolumeAttachment) -> Value {
    json!({"id": a.volume_id, "volumeId": a.volume_id, "serverId": a.server_id,
           "device": a.device, "tag": null, "delete_on_termination": false})
}

async fn list_attachments(
    State(api): State<Arc<Api>>,
    who: Caller<Nova>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let inst = blocking(&api, N, move |c| c.get_instance(&ctx, &id)).await?;
    let items: Vec<Value> = inst.volumes.iter().map(nova_attachment).collect();
    Ok(ok(json!({"volumeAttachments": items})))
}

#[derive(Deserialize)]
struct AttachReq {
    #[serde(rename = "volumeAttachment")]
    volume_attachment: AttachBody,
}

#[derive(Deserialize)]
struct AttachBody {
    #[serde(rename = "volumeId")]
    volume_id: String,
    /// hv picks the next `vdX`; a requested device is ignored, as libvirt-based Nova does.
    #[serde(default)]
    device: Option<String>,
}

async fn attach(
    State(api): State<Arc<Api>>,
    who: Caller<Nova>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let b = read_json::<AttachReq>(N, body).await?.volume_attachment;
    let _ = b.device;
    let ctx = who.0;
    let a = blocking(&api, N, move |c| c.attach_volume(&ctx, &id, &b.volume_id)).await?;
    Ok(ok(json!({"volumeAttachment": nova_attachment(&a)})))
}

async fn detach(
    State(api): State<Arc<Api>>,
    who: Caller<Nova>,
    Path((id, volume)): Path<(String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, N, move |c| c.detach_volume(&ctx, &id, &volume)).await?;
    Ok(empty(StatusCode::ACCEPTED))
}
