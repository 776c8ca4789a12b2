//! Nova servers under `/compute/v2.1/servers` (microversion 2.1): create, list (with `name`,
//! `status`, `limit`, `marker`), show, delete, and the actions `os-start`, `os-stop`,
//! `reboot`, `pause`, `unpause`, `suspend`, `resume` and `os-getConsoleOutput`.
//!
//! Creation runs the orchestrator's build to its end (ACTIVE, or ERROR with a fault) before
//! answering 202, so a server is never left in BUILD; the client's `--wait` then sees the
//! final state on its first poll.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hv_orchestrator::compute::{
    Instance, InstanceAction, InstanceStatus, NetworkRequest, NewInstance,
};
use hv_orchestrator::Cloud;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{Caller, Nova};
use crate::error::{ApiError, ApiResult, Service};
use crate::http::{blocking, empty, iso, json as json_at, ok, read_json, Page, Params};
use crate::versions::nova_microversion;
use crate::Api;

const S: Service = Service::Compute;
type Who = Caller<Nova>;

/// The server routes.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/compute/v2.1/servers", get(list_servers).post(create_server))
        .route("/compute/v2.1/servers/detail", get(list_servers_detail))
        .route("/compute/v2.1/servers/{id}", get(show_server).delete(delete_server))
        .route("/compute/v2.1/servers/{id}/action", post(server_action))
        .layer(middleware::from_fn(nova_microversion))
}

/// An instance with the names of its networks, its ports' floating addresses and the names
/// of its ports' security groups, as a server is shown.
struct View {
    inst: Instance,
    net_names: BTreeMap<String, String>,
    floating: BTreeMap<String, Ipv4Addr>,
    groups: std::collections::BTreeSet<String>,
}

/// Looks up the network names of `insts` (a network the caller cannot see is named by id),
/// the floating addresses mapped to their ports and their ports' security groups (Nova shows
/// a server's groups as its ports have them).
fn views(c: &Cloud, ctx: &hv_orchestrator::Context, insts: Vec<Instance>) -> Vec<View> {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let port_groups: BTreeMap<String, Vec<String>> = c
        .list_ports(ctx, None)
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.id, p.security_groups))
        .collect();
    let mut group_names: BTreeMap<String, String> = BTreeMap::new();
    let fips: BTreeMap<String, Ipv4Addr> = c
        .list_floating_ips(ctx)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|f| f.port_id.map(|p| (p, f.floating_ip_address)))
        .collect();
    insts
        .into_iter()
        .map(|inst| {
            for n in &inst.nics {
                if !names.contains_key(&n.network_id) {
                    let name = c
                        .get_network(ctx, &n.network_id)
                        .map(|net| net.name)
                        .unwrap_or_else(|_| n.network_id.clone());
                    names.insert(n.network_id.clone(), name);
                }
            }
            let net_names = inst
                .nics
                .iter()
                .filter_map(|n| names.get(&n.network_id).map(|m| (n.network_id.clone(), m.clone())))
                .collect();
            let floating = inst
                .nics
                .iter()
                .filter_map(|n| fips.get(&n.port_id).map(|a| (n.port_id.clone(), *a)))
                .collect();
            let mut groups = std::collections::BTreeSet::new();
            for g in inst.nics.iter().filter_map(|n| port_groups.get(&n.port_id)).flatten() {
                let name = group_names.entry(g.clone()).or_insert_with(|| {
                    c.get_security_group(ctx, g).map(|sg| sg.name).unwrap_or_else(|_| g.clone())
                });
                groups.insert(name.clone());
            }
            View { inst, net_names, floating, groups }
        })
        .collect()
}

fn links(api: &Api, kind: &str, id: &str) -> Value {
    json!([{"rel": "self", "href": format!("{}/compute/v2.1/{kind}/{id}", api.public)},
           {"rel": "bookmark", "href": format!("{}/compute/{kind}/{id}", api.public)}])
}

/// Nova's `OS-EXT-STS:vm_state` and `OS-EXT-STS:power_state` of a status. A suspended
/// server's VM is saved to disk and its VMM gone, so its power state is SHUTDOWN (4), as Nova
/// shows a libvirt domain with a managed save.
fn vm_state(s: InstanceStatus) -> (&'static str, u8) {
    match s {
        InstanceStatus::Build => ("building", 0),
        InstanceStatus::Active => ("active", 1),
        InstanceStatus::Shutoff => ("stopped", 4),
        InstanceStatus::Paused => ("paused", 3),
        InstanceStatus::Suspended => ("suspended", 4),
        InstanceStatus::Error => ("error", 0),
        InstanceStatus::Deleted => ("deleted", 0),
    }
}

/// A server in Nova's detail shape.
fn server_json(api: &Api, v: &View) -> Value {
    let i = &v.inst;
    let mut addresses = Map::new();
    for n in &i.nics {
        let name = v.net_names.get(&n.network_id).cloned().unwrap_or_else(|| n.network_id.clone());
        let entry = addresses.entry(name).or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            for ip in &n.fixed_ips {
                list.push(json!({"version": 4, "addr": ip.to_string(), "OS-EXT-IPS:type": "fixed",
                                 "OS-EXT-IPS-MAC:mac_addr": n.mac_address}));
            }
            if let Some(f) = v.floating.get(&n.port_id) {
                list.push(
                    json!({"version": 4, "addr": f.to_string(), "OS-EXT-IPS:type": "floating",
                                 "OS-EXT-IPS-MAC:mac_addr": n.mac_address}),
                );
            }
        }
    }
    let (vm, power) = vm_state(i.status);
    let volumes: Vec<Value> = i
        .volumes
        .iter()
        .map(|a| json!({"id": a.volume_id, "delete_on_termination": false}))
        .collect();
    let mut s = json!({
        "id": i.id, "name": i.name, "status": i.status.as_str(),
        "tenant_id": i.project_id, "user_id": i.user_id, "metadata": i.metadata,
        "hostId": i.host_id.clone().unwrap_or_default(),
        "created": iso(i.created_at, false), "updated": iso(i.updated_at, false),
        "addresses": addresses,
        "image": {"id": i.image_id, "links": links(api, "images", &i.image_id)},
        "flavor": {"id": i.flavor_id, "links": links(api, "flavors", &i.flavor_id)},
        "OS-EXT-STS:vm_state": vm, "OS-EXT-STS:task_state": null,
        "OS-EXT-STS:power_state": power, "OS-EXT-AZ:availability_zone": "nova",
        "OS-SRV-USG:launched_at": i.launched_at.map(|t| iso(t, false)),
        "OS-SRV-USG:terminated_at": null, "OS-DCF:diskConfig": "MANUAL",
        "os-extended-volumes:volumes_attached": volumes,
        "accessIPv4": "", "accessIPv6": "", "config_drive": "", "key_name": null,
        "progress": if i.status == InstanceStatus::Active { 100 } else { 0 },
        "links": links(api, "servers", &i.id),
    });
    // As Nova: the groups of the server's ports, the key absent when it has none.
    if !v.groups.is_empty() {
        s["security_groups"] = v.groups.iter().map(|g| json!({"name": g})).collect();
    }
    if let Some(f) = &i.fault {
        s["fault"] =
            json!({"code": f.code, "message": f.message, "created": iso(f.created, false)});
    }
    s
}

// ---- create ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct CreateReq {
    server: CreateBody,
}

/// The fields hv acts on; the rest of what clients send (`block_device_mapping_v2` booting
/// the image, `key_name`, `OS-DCF:diskConfig`...) is accepted and unused.
#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(rename = "imageRef")]
    image_ref: String,
    #[serde(rename = "flavorRef")]
    flavor_ref: String,
    #[serde(default)]
    networks: Option<Networks>,
    #[serde(default)]
    min_count: Option<u32>,
    #[serde(default)]
    max_count: Option<u32>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    /// `[{"name": NAME_OR_ID}]`: the groups of the ports made for `networks`.
    #[serde(default)]
    security_groups: Option<Vec<GroupRef>>,
}

#[derive(Deserialize)]
struct GroupRef {
    name: String,
}

/// `networks`: a list (a word, `"auto"` / `"none"`, needs microversion 2.37, which hv does
/// not serve: it is refused as Nova refuses it at 2.1).
#[derive(Deserialize)]
#[serde(untagged)]
enum Networks {
    List(Vec<NetworkBody>),
    Word(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkBody {
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    port: Option<String>,
    #[serde(default)]
    fixed_ip: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

/// The NICs a create body asks for; `None` when it names none (no key, or an empty list: the
/// cloud then picks as Nova does at 2.1, see [`Cloud::default_networks`]).
fn network_requests(n: Option<Networks>) -> ApiResult<Option<Vec<NetworkRequest>>> {
    let list = match n {
        None => return Ok(None),
        Some(Networks::Word(w)) => {
            return Err(ApiError::bad_request(
                S,
                format!(
                    "invalid value for 'server.networks': '{w}' is not of type 'array' \
                     ('auto' and 'none' need compute microversion 2.37)"
                ),
            ))
        }
        Some(Networks::List(l)) if l.is_empty() => return Ok(None),
        Some(Networks::List(l)) => l,
    };
    list.into_iter()
        .map(|b| {
            let _ = b.tag;
            match (b.uuid, b.port) {
                (_, Some(port)) => Ok(NetworkRequest::Port(port)),
                (Some(network_id), None) => {
                    let fixed_ip = match b.fixed_ip {
                        None => None,
                        Some(a) => Some(a.parse().map_err(|_| {
                            ApiError::bad_request(
                                S,
                                format!("invalid value for 'server.networks.fixed_ip': '{a}'"),
                            )
                        })?),
                    };
                    Ok(NetworkRequest::Network { network_id, fixed_ip })
                }
                (None, None) => {
                    Err(ApiError::bad_request(S, "'server.networks' entries need 'uuid' or 'port'"))
                }
            }
        })
        .collect::<ApiResult<Vec<_>>>()
        .map(Some)
}

async fn create_server(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<CreateReq>(S, body).await?.server;
    if b.min_count.unwrap_or(1) != 1 || b.max_count.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request(S, "hv creates one server per request (min_count 1)"));
    }
    let mut new = NewInstance::new(&b.name, &b.image_ref, &b.flavor_ref);
    let networks = network_requests(b.networks)?;
    new.metadata = b.metadata.unwrap_or_default();
    let groups: Vec<String> = match b.security_groups {
        Some(g) => g.into_iter().map(|g| g.name).collect(),
        None => vec!["default".into()],
    };
    new.security_groups = Some(groups.clone());
    let ctx = who.0;
    let inst = blocking(&api, S, move |c| {
        new.networks = match networks {
            Some(n) => n,
            None => c.default_networks(&ctx)?,
        };
        c.create_instance(&ctx, &new)
    })
    .await?;
    Ok(json_at(
        StatusCode::ACCEPTED,
        json!({"server": {"id": inst.id, "links": links(&api, "servers", &inst.id),
                          "OS-DCF:diskConfig": "MANUAL",
                          "security_groups":
                              groups.iter().map(|g| json!({"name": g})).collect::<Vec<_>>()}}),
    ))
}

// ---- list and show -----------------------------------------------------------------------

async fn servers(api: &Arc<Api>, who: Who, q: &Params) -> ApiResult<(Vec<View>, Option<String>)> {
    let page = Page::of(S, q)?;
    let all_tenants = q.flag(S, "all_tenants")?.unwrap_or(false);
    let name = q.get("name").map(str::to_string);
    let status = q.get("status").map(str::to_ascii_uppercase);
    let ctx = who.0;
    let mine = ctx.project_id().to_string();
    let all = blocking(api, S, move |c| {
        let insts = c
            .list_instances(&ctx)?
            .into_iter()
            .filter(|i| (all_tenants && ctx.is_admin()) || i.project_id == mine)
            // Nova's name filter is a regular expression; a substring match finds a superset
            // of the exact matches the client picks from.
            .filter(|i| name.as_deref().is_none_or(|n| i.name.contains(n)))
            .filter(|i| status.as_deref().is_none_or(|s| i.status.as_str() == s))
            .collect();
        Ok(views(c, &ctx, insts))
    })
    .await?;
    page.apply(S, all, |v| &v.inst.id)
}

fn servers_body(api: &Api, items: Vec<Value>, next: Option<String>, detail: bool) -> Value {
    let mut body = json!({"servers": items});
    if let Some(m) = next {
        let d = if detail { "/detail" } else { "" };
        body["servers_links"] = json!([{"rel": "next",
            "href": format!("{}/compute/v2.1/servers{d}?marker={m}", api.public)}]);
    }
    body
}

async fn list_servers(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let (items, next) = servers(&api, who, &q).await?;
    let items = items
        .iter()
        .map(|v| {
            json!({"id": v.inst.id, "name": v.inst.name,
                   "links": links(&api, "servers", &v.inst.id)})
        })
        .collect();
    Ok(ok(servers_body(&api, items, next, false)))
}

async fn list_servers_detail(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let (items, next) = servers(&api, who, &q).await?;
    let items = items.iter().map(|v| server_json(&api, v)).collect();
    Ok(ok(servers_body(&api, items, next, true)))
}

async fn show_server(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let mut v = blocking(&api, S, move |c| {
        let inst = c.get_instance(&ctx, &id)?;
        Ok(views(c, &ctx, vec![inst]))
    })
    .await?;
    let v = v.pop().ok_or_else(|| ApiError::not_found(S, "the server could not be found"))?;
    Ok(ok(json!({"server": server_json(&api, &v)})))
}

async fn delete_server(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_instance(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---- actions -----------------------------------------------------------------------------

/// One action of `POST /servers/{id}/action`, parsed from its one-key body.
#[derive(Debug, PartialEq, Eq)]
enum ServerAction {
    Power(InstanceAction),
    ConsoleOutput { lines: Option<usize> },
}

fn parse_action(body: Map<String, Value>) -> ApiResult<ServerAction> {
    let mut keys = body.into_iter();
    let (Some((name, arg)), None) = (keys.next(), keys.next()) else {
        return Err(ApiError::bad_request(S, "an action body has exactly one key"));
    };
    let power = |a| Ok(ServerAction::Power(a));
    match name.as_str() {
        "os-start" => power(InstanceAction::Start),
        "os-stop" => power(InstanceAction::Stop),
        "pause" => power(InstanceAction::Pause),
        "unpause" => power(InstanceAction::Unpause),
        "suspend" => power(InstanceAction::Suspend),
        "resume" => power(InstanceAction::Resume),
        "reboot" => match arg.get("type").and_then(Value::as_str) {
            Some(t) if t.eq_ignore_ascii_case("SOFT") => {
                power(InstanceAction::Reboot { hard: false })
            }
            Some(t) if t.eq_ignore_ascii_case("HARD") => {
                power(InstanceAction::Reboot { hard: true })
            }
            _ => Err(ApiError::bad_request(S, "invalid value for 'reboot.type': SOFT or HARD")),
        },
        "os-getConsoleOutput" => {
            let bad = || {
                ApiError::bad_request(
                    S,
                    "invalid value for 'os-getConsoleOutput.length': a non-negative integer",
                )
            };
            let lines = match arg.get("length") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(bad)? as usize),
                Some(Value::String(s)) => Some(s.parse::<usize>().map_err(|_| bad())?),
                Some(_) => return Err(bad()),
            };
            Ok(ServerAction::ConsoleOutput { lines })
        }
        other => Err(ApiError::bad_request(S, format!("unsupported server action '{other}'"))),
    }
}

/// The last `lines` lines of `log` (all of it for `None`).
fn tail(log: &str, lines: Option<usize>) -> String {
    let Some(n) = lines else { return log.to_string() };
    let all: Vec<&str> = log.lines().collect();
    let start = all.len().saturating_sub(n);
    all[start..].iter().map(|l| format!("{l}\n")).collect()
}

async fn server_action(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let action = parse_action(read_json(S, body).await?)?;
    let ctx = who.0;
    match action {
        ServerAction::Power(a) => {
            blocking(&api, S, move |c| c.instance_action(&ctx, &id, a)).await?;
            Ok(empty(StatusCode::ACCEPTED))
        }
        ServerAction::ConsoleOutput { lines } => {
            let log = blocking(&api, S, move |c| c.console_log(&ctx, &id, None)).await?;
            Ok(ok(json!({"output": tail(&log, lines)})))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_from_their_one_key_bodies() {
        let p = |b: &str| parse_action(serde_json::from_str(b).unwrap());
        assert_eq!(p(r#"{"os-stop": null}"#).unwrap(), ServerAction::Power(InstanceAction::Stop));
        assert_eq!(
            p(r#"{"reboot": {"type": "HARD"}}"#).unwrap(),
            ServerAction::Power(InstanceAction::Reboot { hard: true })
        );
        assert_eq!(
            p(r#"{"os-getConsoleOutput": {"length": "3"}}"#).unwrap(),
            ServerAction::ConsoleOutput { lines: Some(3) }
        );
        assert_eq!(
            p(r#"{"os-getConsoleOutput": {}}"#).unwrap(),
            ServerAction::ConsoleOutput { lines: None }
        );
        for bad in [
            r#"{}"#,
            r#"{"os-start": null, "os-stop": null}"#,
            r#"{"reboot": {"type": "WARM"}}"#,
            r#"{"os-getConsoleOutput": {"length": -1}}"#,
            r#"{"evacuate": {}}"#,
        ] {
            assert_eq!(p(bad).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn networks_take_a_list_at_2_1() {
        let n = |s: &str| network_requests(serde_json::from_str(s).unwrap());
        assert_eq!(network_requests(None).unwrap(), None);
        assert_eq!(n("[]").unwrap(), None);
        assert_eq!(
            n(r#"[{"uuid": "n1", "fixed_ip": "10.0.0.5"}, {"port": "p1"}]"#).unwrap(),
            Some(vec![
                NetworkRequest::Network {
                    network_id: "n1".into(),
                    fixed_ip: Some("10.0.0.5".parse().unwrap())
                },
                NetworkRequest::Port("p1".into())
            ])
        );
        // The words are 2.37's; at 2.1 they are schema errors.
        for w in [r#""auto""#, r#""none""#, r#""some""#] {
            assert_eq!(n(w).unwrap_err().status, StatusCode::BAD_REQUEST, "{w}");
        }
        assert!(n(r#"[{"fixed_ip": "10.0.0.5"}]"#).is_err());
        assert!(n(r#"[{"uuid": "n1", "fixed_ip": "ten"}]"#).is_err());
    }

    #[test]
    fn console_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", Some(2)), "b\nc\n");
        assert_eq!(tail("a\nb", None), "a\nb");
        assert_eq!(tail("a\n", Some(5)), "a\n");
    }
}
