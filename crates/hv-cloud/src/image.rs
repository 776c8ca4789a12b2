//! Glance v2 under `/image`: images (create, list with Glance's filters and `next` links,
//! show, JSON-patch update, delete), their data streamed in and out (never whole in memory),
//! and members.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, put};
use axum::Router;
use futures_util::StreamExt;
use hv_orchestrator::image::{
    DiskFormat, Image, ImageMember, ImageStatus, ImageUpdate, MemberStatus, NewImage, TagPatch,
    Visibility,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::auth::{Caller, Glance};
use crate::error::{ApiError, ApiResult, Service};
use crate::http::{blocking, empty, iso, json, ok, read_json, Page, Params};
use crate::versions::image_root;
use crate::Api;

const S: Service = Service::Image;
type Who = Caller<Glance>;

/// The image routes.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/image", get(image_root))
        .route("/image/", get(image_root))
        .route("/image/versions", get(image_root))
        .route("/image/v2/images", get(list_images).post(create_image))
        .route("/image/v2/images/{id}", get(show_image).patch(update_image).delete(delete_image))
        .route("/image/v2/images/{id}/file", get(download).put(upload))
        .route("/image/v2/images/{id}/tags/{tag}", put(add_tag).delete(remove_tag))
        .route("/image/v2/images/{id}/members", get(list_members).post(add_member))
        .route(
            "/image/v2/images/{id}/members/{member}",
            get(show_member).put(update_member).delete(remove_member),
        )
}

fn status_name(s: ImageStatus) -> &'static str {
    match s {
        ImageStatus::Queued => "queued",
        ImageStatus::Saving => "saving",
        ImageStatus::Active => "active",
        ImageStatus::Killed => "killed",
        ImageStatus::Deleted => "deleted",
    }
}

fn visibility_name(v: Visibility) -> &'static str {
    match v {
        Visibility::Private => "private",
        Visibility::Shared => "shared",
        Visibility::Public => "public",
        Visibility::Community => "community",
    }
}

fn parse_visibility(field: &str, v: &Value) -> ApiResult<Visibility> {
    match v.as_str() {
        Some("private") => Ok(Visibility::Private),
        Some("shared") => Ok(Visibility::Shared),
        Some("public") => Ok(Visibility::Public),
        Some("community") => Ok(Visibility::Community),
        _ => Err(ApiError::bad_request(
            S,
            format!("invalid value for '{field}': {v} is not private, shared, public or community"),
        )),
    }
}

fn image_json(img: &Image) -> Value {
    let mut m = Map::new();
    for (k, v) in &img.properties {
        m.insert(k.clone(), json!(v));
    }
    let id = &img.id;
    let fixed = json!({
        "id": id, "name": img.name, "status": status_name(img.status),
        "visibility": visibility_name(img.visibility), "protected": img.protected,
        "os_hidden": false, "owner": img.owner, "checksum": img.checksum,
        "os_hash_algo": img.os_hash_algo, "os_hash_value": img.os_hash_value,
        "size": img.size, "virtual_size": img.virtual_size, "min_ram": img.min_ram,
        "min_disk": img.min_disk, "disk_format": img.disk_format.as_str(),
        "container_format": img.container_format, "tags": img.tags,
        "created_at": iso(img.created_at, false), "updated_at": iso(img.updated_at, false),
        "self": format!("/v2/images/{id}"), "file": format!("/v2/images/{id}/file"),
        "schema": "/v2/schemas/image",
    });
    if let Value::Object(f) = fixed {
        m.extend(f);
    }
    Value::Object(m)
}

fn need_string(field: &str, v: &Value) -> ApiResult<String> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        ApiError::bad_request(S, format!("invalid value for '{field}': {v} is not a string"))
    })
}

fn need_bool(field: &str, v: &Value) -> ApiResult<bool> {
    v.as_bool().ok_or_else(|| {
        ApiError::bad_request(S, format!("invalid value for '{field}': {v} is not a boolean"))
    })
}

/// A JSON-patch operation on `/tags/INDEX` (or `/tags/-` to add at the end).
fn tag_op(op: &str, index: &str, value: &dyn Fn() -> ApiResult<Value>) -> ApiResult<TagPatch> {
    let at = || {
        index.parse::<usize>().map_err(|_| {
            ApiError::bad_request(S, format!("invalid path '/tags/{index}': not a list index"))
        })
    };
    let tag = || need_string("tags", &value()?);
    Ok(match op {
        "add" if index == "-" => TagPatch::Add(None, tag()?),
        "add" => TagPatch::Add(Some(at()?), tag()?),
        "replace" => TagPatch::Replace(at()?, tag()?),
        "remove" => TagPatch::Remove(at()?),
        other => {
            return Err(ApiError::bad_request(
                S,
                format!("invalid value for 'op': '{other}' is not add, replace or remove"),
            ))
        }
    })
}

/// A `tags` value: a list of strings (duplicates collapse, as in Glance's set).
fn need_tags(v: &Value) -> ApiResult<BTreeSet<String>> {
    let bad = || {
        ApiError::bad_request(S, format!("invalid value for 'tags': {v} is not a list of strings"))
    };
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|t| t.as_str().map(str::to_string).ok_or_else(bad))
        .collect()
}

fn unsupported(field: &str) -> ApiError {
    ApiError::bad_request(S, format!("invalid key '{field}': hv images do not support it"))
}

/// A create body into a [`NewImage`]: Glance's own keys by type, any other key a string
/// property.
fn new_image(body: Map<String, Value>) -> ApiResult<NewImage> {
    let mut name = None;
    let mut new = NewImage::new("", DiskFormat::Raw);
    for (k, v) in body {
        match k.as_str() {
            "name" => name = Some(need_string("name", &v)?),
            "disk_format" => {
                new.disk_format = need_string("disk_format", &v)?
                    .parse()
                    .map_err(|e| ApiError::from_cloud(S, e))?
            }
            "container_format" => new.container_format = need_string("container_format", &v)?,
            "visibility" => new.visibility = parse_visibility("visibility", &v)?,
            "protected" => new.protected = need_bool("protected", &v)?,
            "tags" => new.tags = need_tags(&v)?,
            "min_disk" | "min_ram" if v.as_u64() == Some(0) => {}
            "min_disk" | "min_ram" | "id" | "os_hidden" | "locations" => {
                return Err(unsupported(&k))
            }
            _ => {
                let s = need_string(&k, &v)?;
                new.properties.insert(k, s);
            }
        }
    }
    new.name = name.ok_or_else(|| ApiError::bad_request(S, "missing 'name'"))?;
    Ok(new)
}

async fn create_image(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let body: Map<String, Value> = read_json(S, body).await?;
    let new = new_image(body)?;
    let ctx = who.0;
    let img = blocking(&api, S, move |c| c.create_image(&ctx, &new)).await?;
    Ok(json(StatusCode::CREATED, image_json(&img)))
}

/// Glance's list filters: `name`, `id` (also `in:a,b`), `status`, `visibility`, `owner`,
/// `disk_format`, `tag` (each given must be on the image).
fn matches(img: &Image, q: &Params) -> bool {
    let tags_ok = q.0.iter().filter(|(k, _)| k == "tag").all(|(_, t)| img.tags.contains(t));
    let is = |key: &str, val: &str| q.get(key).is_none_or(|want| want == val);
    let id_ok = match q.get("id") {
        None => true,
        Some(v) => match v.strip_prefix("in:") {
            Some(list) => list.split(',').any(|i| i.trim_matches('"') == img.id),
            None => v == img.id,
        },
    };
    id_ok
        && tags_ok
        && is("status", status_name(img.status))
        && is("visibility", visibility_name(img.visibility))
        && is("owner", &img.owner)
        && is("disk_format", img.disk_format.as_str())
}

async fn list_images(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let page = Page::of(S, &q)?;
    let name = q.get("name").map(str::to_string);
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_images(&ctx, name.as_deref())).await?;
    let all: Vec<Image> = all.into_iter().filter(|i| matches(i, &q)).collect();
    let (items, next) = page.apply(S, all, |i| &i.id)?;
    let items: Vec<Value> = items.iter().map(image_json).collect();
    let mut body = json!({"images": items, "first": "/v2/images", "schema": "/v2/schemas/images"});
    if let Some(m) = next {
        let limit = page.limit.unwrap_or(0);
        body["next"] = json!(format!("/v2/images?marker={m}&limit={limit}"));
    }
    Ok(ok(body))
}

async fn show_image(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let img = blocking(&api, S, move |c| c.get_image(&ctx, &id)).await?;
    Ok(ok(image_json(&img)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchOp {
    op: String,
    path: String,
    #[serde(default)]
    value: Option<Value>,
}

/// A JSON-patch list (Glance's `application/openstack-images-v2.1-json-patch`) into an
/// [`ImageUpdate`].
fn image_update(ops: Vec<PatchOp>) -> ApiResult<ImageUpdate> {
    let mut u = ImageUpdate::default();
    for op in ops {
        let Some(key) = op.path.strip_prefix('/') else {
            return Err(ApiError::bad_request(S, format!("invalid path '{}'", op.path)));
        };
        let key = key.replace("~1", "/").replace("~0", "~");
        let value = || {
            op.value
                .clone()
                .ok_or_else(|| ApiError::bad_request(S, format!("missing 'value' for '{key}'")))
        };
        match (op.op.as_str(), key.as_str()) {
            ("add" | "replace", "name") => u.name = Some(need_string("name", &value()?)?),
            ("add" | "replace", "visibility") => {
                u.visibility = Some(parse_visibility("visibility", &value()?)?)
            }
            ("add" | "replace", "protected") => {
                u.protected = Some(need_bool("protected", &value()?)?)
            }
            ("add" | "replace", "tags") => u.tags.push(TagPatch::Set(need_tags(&value()?)?)),
            (o, k) if k.starts_with("tags/") => u.tags.push(tag_op(o, &k[5..], &value)?),
            (
                _,
                "name" | "visibility" | "protected" | "tags" | "min_disk" | "min_ram" | "os_hidden"
                | "locations",
            ) => return Err(unsupported(&key)),
            ("add" | "replace", _) => {
                let v = need_string(&key, &value()?)?;
                u.set.insert(key, v);
            }
            ("remove", _) => u.remove.push(key),
            (other, _) => {
                return Err(ApiError::bad_request(
                    S,
                    format!("invalid value for 'op': '{other}' is not add, replace or remove"),
                ))
            }
        }
    }
    Ok(u)
}

async fn update_image(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let ops: Vec<PatchOp> = read_json(S, body).await?;
    let change = image_update(ops)?;
    let ctx = who.0;
    let img = blocking(&api, S, move |c| c.update_image(&ctx, &id, &change)).await?;
    Ok(ok(image_json(&img)))
}

async fn add_tag(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.add_image_tag(&ctx, &id, &tag)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn remove_tag(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((id, tag)): Path<(String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.remove_image_tag(&ctx, &id, &tag)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn delete_image(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_image(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---- data --------------------------------------------------------------------------------

/// The request body as a blocking reader, fed chunk by chunk from the async side (a bounded
/// channel: at most a few chunks are in memory at once).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

async fn upload(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let feeder = tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| io::Error::other(format!("the upload broke off: {e}")));
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let ctx = who.0;
    let result = blocking(&api, S, move |c| {
        let mut reader = ChannelReader { rx, cur: Bytes::new() };
        c.upload_image(&ctx, &id, &mut reader)
    })
    .await;
    feeder.abort();
    result?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// Chunks written on the blocking side, sent to the response body.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

async fn download(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let (c2, id2) = (ctx.clone(), id.clone());
    let img = blocking(&api, S, move |c| c.get_image(&c2, &id2)).await?;
    if img.status != ImageStatus::Active {
        // Glance answers 204 for an image without data.
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let cloud = api.cloud.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = std::io::BufWriter::with_capacity(256 << 10, ChannelWriter { tx: tx.clone() });
        let r = cloud.download_image(&ctx, &id, &mut w).and_then(|_| {
            w.flush().map_err(|source| hv_orchestrator::Error::Io {
                what: "send",
                path: id.clone(),
                source,
            })
        });
        if let Err(e) = r {
            log::warn!("image download of '{id}' failed: {e}");
            let _ = tx.blocking_send(Err(io::Error::other("the download failed")));
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Some(size) = img.size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if let Some(md5) = img.checksum.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("content-md5", md5);
    }
    Ok(r)
}

// ---- members -----------------------------------------------------------------------------

fn member_json(m: &ImageMember) -> Value {
    let status = match m.status {
        MemberStatus::Pending => "pending",
        MemberStatus::Accepted => "accepted",
        MemberStatus::Rejected => "rejected",
    };
    json!({"image_id": m.image_id, "member_id": m.member_id, "status": status,
           "schema": "/v2/schemas/member"})
}

async fn add_member(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        member: String,
    }
    let b: Req = read_json(S, body).await?;
    let ctx = who.0;
    let m = blocking(&api, S, move |c| c.add_image_member(&ctx, &id, &b.member)).await?;
    Ok(ok(member_json(&m)))
}

async fn list_members(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let ms = blocking(&api, S, move |c| c.list_image_members(&ctx, &id)).await?;
    let items: Vec<Value> = ms.iter().map(member_json).collect();
    Ok(ok(json!({"members": items, "schema": "/v2/schemas/members"})))
}

async fn show_member(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let ms = blocking(&api, S, move |c| c.list_image_members(&ctx, &id)).await?;
    ms.iter()
        .find(|m| m.member_id == member)
        .map(|m| ok(member_json(m)))
        .ok_or_else(|| ApiError::not_found(S, format!("member '{member}' not found")))
}

async fn update_member(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((id, member)): Path<(String, String)>,
    body: Body,
) -> ApiResult<Response> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        status: String,
    }
    let b: Req = read_json(S, body).await?;
    let status = match b.status.as_str() {
        "pending" => MemberStatus::Pending,
        "accepted" => MemberStatus::Accepted,
        "rejected" => MemberStatus::Rejected,
        other => {
            return Err(ApiError::bad_request(
                S,
                format!(
                    "invalid value for 'status': '{other}' is not pending, accepted or rejected"
                ),
            ))
        }
    };
    if member != who.project_id() {
        return Err(ApiError::new(
            S,
            StatusCode::FORBIDDEN,
            "only the member project itself may answer a membership",
        ));
    }
    let ctx = who.0;
    let ms = blocking(&api, S, move |c| {
        c.set_image_member_status(&ctx, &id, status)?;
        c.list_image_members(&ctx, &id)
    })
    .await?;
    ms.iter()
        .find(|m| m.member_id == member)
        .map(|m| ok(member_json(m)))
        .ok_or_else(|| ApiError::not_found(S, format!("member '{member}' not found")))
}

async fn remove_member(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((id, member)): Path<(String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.remove_image_member(&ctx, &id, &member)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_bodies_split_fields_and_properties() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"name": "k", "disk_format": "aki", "container_format": "aki",
                "owner_specified.openstack.md5": "", "kernel_id": "x"}"#,
        )
        .unwrap();
        let n = new_image(body).unwrap();
        assert_eq!((n.name.as_str(), n.disk_format), ("k", DiskFormat::Aki));
        assert_eq!(n.properties.len(), 2);
        let bad: Map<String, Value> = serde_json::from_str(r#"{"name": 3}"#).unwrap();
        assert!(new_image(bad).unwrap_err().message.contains("'name'"));
        let bad: Map<String, Value> =
            serde_json::from_str(r#"{"name": "x", "disk_format": "vhd"}"#).unwrap();
        assert!(new_image(bad).unwrap_err().message.contains("disk_format"));
    }

    #[test]
    fn patches_become_updates() {
        let ops: Vec<PatchOp> = serde_json::from_str(
            r#"[{"op": "replace", "path": "/name", "value": "n"},
                {"op": "add", "path": "/os_command_line", "value": "console=ttyS0"},
                {"op": "remove", "path": "/a~1b"}]"#,
        )
        .unwrap();
        let u = image_update(ops).unwrap();
        assert_eq!(u.name.as_deref(), Some("n"));
        assert_eq!(u.set.get("os_command_line").map(String::as_str), Some("console=ttyS0"));
        assert_eq!(u.remove, vec!["a/b".to_string()]);
    }

    #[test]
    fn tag_patches_are_list_operations() {
        let ops: Vec<PatchOp> = serde_json::from_str(
            r#"[{"op": "add", "path": "/tags/0", "value": "a"},
                {"op": "add", "path": "/tags/-", "value": "b"},
                {"op": "replace", "path": "/tags/1", "value": "c"},
                {"op": "remove", "path": "/tags/2"},
                {"op": "replace", "path": "/tags", "value": ["x", "x", "y"]}]"#,
        )
        .unwrap();
        let set = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
        assert_eq!(
            image_update(ops).unwrap().tags,
            vec![
                TagPatch::Add(Some(0), "a".into()),
                TagPatch::Add(None, "b".into()),
                TagPatch::Replace(1, "c".into()),
                TagPatch::Remove(2),
                TagPatch::Set(set(&["x", "y"])),
            ]
        );
        for bad in [
            r#"[{"op": "add", "path": "/tags/x", "value": "a"}]"#,
            r#"[{"op": "add", "path": "/tags/0", "value": 3}]"#,
            r#"[{"op": "replace", "path": "/tags", "value": "a"}]"#,
            r#"[{"op": "move", "path": "/tags/0"}]"#,
        ] {
            assert!(image_update(serde_json::from_str(bad).unwrap()).is_err(), "{bad}");
        }
        let body: Map<String, Value> =
            serde_json::from_str(r#"{"name": "k", "tags": ["t", "t"]}"#).unwrap();
        assert_eq!(new_image(body).unwrap().tags, set(&["t"]));
    }
}
