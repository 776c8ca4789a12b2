//! Security groups and their rules, routers, and floating IPs.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use axum::Router;
use hv_orchestrator::network::{
    Direction, FloatingIp, NewSecurityGroupRule, Protocol, Router as HvRouter, SecurityGroup,
    SecurityGroupRule,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{list_answer, parse_ip, Who, S};
use crate::error::{ApiError, ApiResult};
use crate::http::{blocking, empty, iso, json, ok, read_json, Params};
use crate::Api;

/// The security group, router and floating IP routes.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/network/v2.0/security-groups", get(list_groups).post(create_group))
        .route("/network/v2.0/security-groups/{id}", get(show_group).delete(delete_group))
        .route("/network/v2.0/security-group-rules", get(list_rules).post(create_rule))
        .route("/network/v2.0/security-group-rules/{id}", get(show_rule).delete(delete_rule))
        .route("/network/v2.0/routers", get(list_routers).post(create_router))
        .route(
            "/network/v2.0/routers/{id}",
            get(show_router).put(update_router).delete(delete_router),
        )
        .route("/network/v2.0/routers/{id}/add_router_interface", put(add_interface))
        .route("/network/v2.0/routers/{id}/remove_router_interface", put(remove_interface))
        .route("/network/v2.0/floatingips", get(list_fips).post(create_fip))
        .route("/network/v2.0/floatingips/{id}", get(show_fip).put(update_fip).delete(delete_fip))
}

// ---- security groups ---------------------------------------------------------------------

fn rule_json(project: &str, r: &SecurityGroupRule) -> Value {
    let proto = r.protocol.map(|p| match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
    });
    let dir = match r.direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    json!({"id": r.id, "security_group_id": r.security_group_id, "direction": dir,
           "ethertype": r.ethertype, "protocol": proto, "port_range_min": r.port_range_min,
           "port_range_max": r.port_range_max, "remote_ip_prefix": r.remote_ip_prefix,
           "remote_group_id": r.remote_group_id,
           "normalized_cidr": r.remote_ip_prefix, "remote_address_group_id": null,
           "description": "", "tenant_id": project, "project_id": project, "tags": [],
           "revision_number": 1})
}

fn group_json(g: &SecurityGroup) -> Value {
    let rules: Vec<Value> = g.rules.iter().map(|r| rule_json(&g.project_id, r)).collect();
    json!({"id": g.id, "name": g.name, "tenant_id": g.project_id, "project_id": g.project_id,
           "description": g.description, "stateful": true, "shared": false,
           "security_group_rules": rules, "tags": [], "revision_number": 1,
           "created_at": iso(g.created_at, false), "updated_at": iso(g.created_at, false)})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupCreate {
    security_group: GroupBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    stateful: Option<bool>,
}

async fn create_group(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<GroupCreate>(S, body).await?.security_group;
    if b.stateful == Some(false) {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'security_group.stateful': hv groups are stateful",
        ));
    }
    let ctx = who.0;
    let g = blocking(&api, S, move |c| {
        c.create_security_group(&ctx, &b.name, b.description.as_deref().unwrap_or(""))
    })
    .await?;
    Ok(json(StatusCode::CREATED, json!({"security_group": group_json(&g)})))
}

async fn list_groups(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_security_groups(&ctx)).await?;
    list_answer(&api, "security_groups", all.iter().map(group_json).collect(), &q)
}

async fn show_group(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let g = blocking(&api, S, move |c| c.get_security_group(&ctx, &id)).await?;
    Ok(ok(json!({"security_group": group_json(&g)})))
}

async fn delete_group(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_security_group(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleCreate {
    security_group_rule: RuleBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    security_group_id: String,
    direction: String,
    #[serde(default)]
    ethertype: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port_range_min: Option<u16>,
    #[serde(default)]
    port_range_max: Option<u16>,
    #[serde(default)]
    remote_ip_prefix: Option<String>,
    #[serde(default)]
    remote_group_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

fn new_rule(b: RuleBody) -> ApiResult<NewSecurityGroupRule> {
    let direction = match b.direction.as_str() {
        "ingress" => Direction::Ingress,
        "egress" => Direction::Egress,
        d => {
            return Err(ApiError::bad_request(
                S,
                format!("invalid value for 'security_group_rule.direction': '{d}'"),
            ))
        }
    };
    if b.ethertype.as_deref().is_some_and(|e| e != "IPv4") {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'security_group_rule.ethertype': hv rules are IPv4",
        ));
    }
    let protocol = match b.protocol.as_deref() {
        None | Some("any") => None,
        Some("tcp" | "6") => Some(Protocol::Tcp),
        Some("udp" | "17") => Some(Protocol::Udp),
        Some("icmp" | "1") => Some(Protocol::Icmp),
        Some(p) => {
            return Err(ApiError::bad_request(
                S,
                format!(
                    "invalid value for 'security_group_rule.protocol': '{p}' (tcp, udp or icmp)"
                ),
            ))
        }
    };
    let port_range = match (b.port_range_min, b.port_range_max) {
        (None, None) => None,
        (Some(lo), Some(hi)) => Some((lo, hi)),
        (Some(p), None) | (None, Some(p)) => Some((p, p)),
    };
    let _ = b.description;
    Ok(NewSecurityGroupRule {
        security_group_id: b.security_group_id,
        direction,
        protocol,
        port_range,
        remote_ip_prefix: b.remote_ip_prefix,
        remote_group_id: b.remote_group_id,
    })
}

async fn create_rule(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let new = new_rule(read_json::<RuleCreate>(S, body).await?.security_group_rule)?;
    let ctx = who.0;
    let (r, g) = blocking(&api, S, move |c| {
        let r = c.add_security_group_rule(&ctx, &new)?;
        let g = c.get_security_group(&ctx, &r.security_group_id)?;
        Ok((r, g))
    })
    .await?;
    Ok(json(StatusCode::CREATED, json!({"security_group_rule": rule_json(&g.project_id, &r)})))
}

/// Every rule the caller sees, with its group's project.
async fn all_rules(api: &Arc<Api>, who: Who) -> ApiResult<Vec<Value>> {
    let ctx = who.0;
    let groups = blocking(api, S, move |c| c.list_security_groups(&ctx)).await?;
    Ok(groups.iter().flat_map(|g| g.rules.iter().map(|r| rule_json(&g.project_id, r))).collect())
}

async fn list_rules(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let rules = all_rules(&api, who).await?;
    list_answer(&api, "security_group_rules", rules, &q)
}

async fn show_rule(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    all_rules(&api, who)
        .await?
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .map(|r| ok(json!({"security_group_rule": r})))
        .ok_or_else(|| ApiError::not_found(S, format!("security group rule '{id}' not found")))
}

async fn delete_rule(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_security_group_rule(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---- routers -----------------------------------------------------------------------------

fn router_json(r: &HvRouter) -> Value {
    let gw = r.external_gateway.as_ref().map(|g| {
        json!({"network_id": g.network_id, "enable_snat": true,
               "external_fixed_ips": [{"ip_address": g.external_ip}]})
    });
    json!({"id": r.id, "name": r.name, "tenant_id": r.project_id, "project_id": r.project_id,
           "status": r.status, "admin_state_up": true, "external_gateway_info": gw,
           "routes": [], "description": "", "distributed": false, "ha": false,
           "availability_zones": [], "availability_zone_hints": [], "tags": [],
           "revision_number": 1, "created_at": iso(r.created_at, false),
           "updated_at": iso(r.created_at, false)})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Gateway {
    network_id: String,
    #[serde(default)]
    enable_snat: Option<bool>,
    // The client names the address it wants; hv picks one from the external subnet.
    #[serde(default)]
    _external_fixed_ips: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    admin_state_up: Option<bool>,
    #[serde(default)]
    description: Option<String>,
    /// Absent: unchanged; `null` or `{}`: cleared.
    #[serde(default, deserialize_with = "gateway")]
    external_gateway_info: Option<Option<Gateway>>,
}

fn gateway<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Gateway>>, D::Error> {
    let v = Value::deserialize(d)?;
    match v {
        Value::Null => Ok(Some(None)),
        Value::Object(ref m) if m.is_empty() => Ok(Some(None)),
        v => serde_json::from_value(v).map(|g| Some(Some(g))).map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterReq {
    router: RouterBody,
}

fn check_router(b: &RouterBody) -> ApiResult<()> {
    if b.admin_state_up == Some(false) {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'router.admin_state_up': routers are up",
        ));
    }
    if let Some(Some(g)) = &b.external_gateway_info {
        if g.enable_snat == Some(false) {
            return Err(ApiError::bad_request(
                S,
                "invalid value for 'router.external_gateway_info.enable_snat': hv routers NAT",
            ));
        }
    }
    Ok(())
}

async fn create_router(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<RouterReq>(S, body).await?.router;
    check_router(&b)?;
    let name = b.name.unwrap_or_default();
    let gw = b.external_gateway_info.flatten().map(|g| g.network_id);
    let ctx = who.0;
    let r = blocking(&api, S, move |c| c.create_router(&ctx, &name, gw.as_deref())).await?;
    Ok(json(StatusCode::CREATED, json!({"router": router_json(&r)})))
}

async fn list_routers(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_routers(&ctx)).await?;
    list_answer(&api, "routers", all.iter().map(router_json).collect(), &q)
}

async fn show_router(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let r = blocking(&api, S, move |c| c.get_router(&ctx, &id)).await?;
    Ok(ok(json!({"router": router_json(&r)})))
}

async fn update_router(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let b = read_json::<RouterReq>(S, body).await?.router;
    check_router(&b)?;
    let _ = b.description;
    let ctx = who.0;
    let r = blocking(&api, S, move |c| {
        let r = c.get_router(&ctx, &id)?;
        if b.name.as_ref().is_some_and(|n| *n != r.name) {
            return Err(hv_orchestrator::Error::Unsupported("renaming a router".into()));
        }
        match b.external_gateway_info {
            None => Ok(r),
            Some(gw) => c.set_router_gateway(&ctx, &id, gw.as_ref().map(|g| g.network_id.as_str())),
        }
    })
    .await?;
    Ok(ok(json!({"router": router_json(&r)})))
}

async fn delete_router(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_router(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceReq {
    subnet_id: Option<String>,
    port_id: Option<String>,
}

async fn interface(
    api: Arc<Api>,
    who: Who,
    id: String,
    body: Body,
    add: bool,
) -> ApiResult<Response> {
    let b: InterfaceReq = read_json(S, body).await?;
    let subnet = match (b.subnet_id, b.port_id) {
        (Some(s), None) => s,
        (_, Some(_)) => {
            return Err(ApiError::bad_request(S, "invalid key 'port_id': hv routers take subnets"))
        }
        (None, None) => return Err(ApiError::bad_request(S, "missing 'subnet_id'")),
    };
    let ctx = who.0;
    let (rid, sid) = (id.clone(), subnet.clone());
    let (port, net, project) = blocking(&api, S, move |c| {
        let s = c.get_subnet(&ctx, &sid)?;
        let port = if add {
            Some(c.add_router_interface(&ctx, &rid, &sid)?.port_id)
        } else {
            let r = c.get_router(&ctx, &rid)?;
            let port = r.interfaces.iter().find(|i| i.subnet_id == sid).map(|i| i.port_id.clone());
            c.remove_router_interface(&ctx, &rid, &sid)?;
            port
        };
        Ok((port, s.network_id, s.project_id))
    })
    .await?;
    Ok(ok(json!({"id": id, "subnet_id": subnet, "subnet_ids": [subnet], "port_id": port,
                 "network_id": net, "tenant_id": project, "project_id": project})))
}

async fn add_interface(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    interface(api, who, id, body, true).await
}

async fn remove_interface(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    interface(api, who, id, body, false).await
}

// ---- floating IPs ------------------------------------------------------------------------

fn fip_json(f: &FloatingIp) -> Value {
    json!({"id": f.id, "floating_ip_address": f.floating_ip_address,
           "floating_network_id": f.floating_network_id, "fixed_ip_address": f.fixed_ip_address,
           "port_id": f.port_id, "router_id": null, "status": f.status,
           "tenant_id": f.project_id, "project_id": f.project_id, "description": "",
           "port_details": null, "tags": [], "revision_number": 1,
           "created_at": iso(f.created_at, false), "updated_at": iso(f.created_at, false)})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FipBody {
    #[serde(default)]
    floating_network_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    port_id: Option<Option<String>>,
    #[serde(default)]
    fixed_ip_address: Option<String>,
    #[serde(default)]
    floating_ip_address: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FipReq {
    floatingip: FipBody,
}

async fn create_fip(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<FipReq>(S, body).await?.floatingip;
    let net = b
        .floating_network_id
        .ok_or_else(|| ApiError::bad_request(S, "missing 'floatingip.floating_network_id'"))?;
    if b.floating_ip_address.is_some() {
        return Err(ApiError::bad_request(
            S,
            "invalid key 'floatingip.floating_ip_address': hv picks the address",
        ));
    }
    if let Some(a) = &b.fixed_ip_address {
        parse_ip("floatingip.fixed_ip_address", a)?;
    }
    let _ = b.description;
    let port = b.port_id.flatten();
    let ctx = who.0;
    let f = blocking(&api, S, move |c| c.create_floating_ip(&ctx, &net, port.as_deref())).await?;
    Ok(json(StatusCode::CREATED, json!({"floatingip": fip_json(&f)})))
}

async fn list_fips(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_floating_ips(&ctx)).await?;
    list_answer(&api, "floatingips", all.iter().map(fip_json).collect(), &q)
}

async fn show_fip(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let f = blocking(&api, S, move |c| c.get_floating_ip(&ctx, &id)).await?;
    Ok(ok(json!({"floatingip": fip_json(&f)})))
}

async fn update_fip(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let b = read_json::<FipReq>(S, body).await?.floatingip;
    let Some(port) = b.port_id else {
        return Err(ApiError::bad_request(S, "missing 'floatingip.port_id'"));
    };
    let ctx = who.0;
    let f = blocking(&api, S, move |c| c.associate_floating_ip(&ctx, &id, port.as_deref())).await?;
    Ok(ok(json!({"floatingip": fip_json(&f)})))
}

async fn delete_fip(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_floating_ip(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
