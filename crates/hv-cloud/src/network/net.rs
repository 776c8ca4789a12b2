//! Networks, subnets and ports.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use hv_orchestrator::network::{
    AllocationPool, FixedIpRequest, Network, NewNetwork, NewPort, NewSubnet, Port, PortStatus,
    PortUpdate, Subnet,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{list_answer, parse_ip, Who, S};
use crate::error::{ApiError, ApiResult};
use crate::http::{blocking, empty, iso, json, ok, read_json, Params};
use crate::Api;

/// The network, subnet and port routes.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/network/v2.0/networks", get(list_networks).post(create_network))
        .route("/network/v2.0/networks/{id}", get(show_network).delete(delete_network))
        .route("/network/v2.0/subnets", get(list_subnets).post(create_subnet))
        .route("/network/v2.0/subnets/{id}", get(show_subnet).delete(delete_subnet))
        .route("/network/v2.0/ports", get(list_ports).post(create_port))
        .route("/network/v2.0/ports/{id}", get(show_port).put(update_port).delete(delete_port))
}

fn network_json(n: &Network) -> Value {
    json!({"id": n.id, "name": n.name, "tenant_id": n.project_id, "project_id": n.project_id,
           "status": n.status, "admin_state_up": n.admin_state_up, "shared": n.shared,
           "router:external": n.external, "subnets": n.subnets, "mtu": n.mtu,
           "provider:network_type": n.network_type, "provider:physical_network": null,
           "provider:segmentation_id": n.segmentation_id, "availability_zones": [],
           "availability_zone_hints": [], "port_security_enabled": true, "description": "",
           "is_default": false, "ipv4_address_scope": null, "ipv6_address_scope": null,
           "qos_policy_id": null, "dns_domain": "", "tags": [], "revision_number": 1,
           "created_at": iso(n.created_at, false), "updated_at": iso(n.updated_at, false)})
}

fn subnet_json(s: &Subnet) -> Value {
    let pools: Vec<Value> =
        s.allocation_pools.iter().map(|p| json!({"start": p.start, "end": p.end})).collect();
    json!({"id": s.id, "name": s.name, "tenant_id": s.project_id, "project_id": s.project_id,
           "network_id": s.network_id, "ip_version": s.ip_version, "cidr": s.cidr,
           "gateway_ip": s.gateway_ip, "allocation_pools": pools, "enable_dhcp": s.enable_dhcp,
           "dns_nameservers": s.dns_nameservers, "host_routes": [], "service_types": [],
           "ipv6_ra_mode": null, "ipv6_address_mode": null, "subnetpool_id": null,
           "segment_id": null, "description": "", "tags": [], "revision_number": 1,
           "created_at": iso(s.created_at, false), "updated_at": iso(s.created_at, false)})
}

/// A port as Neutron shows it.
pub fn port_json(p: &Port) -> Value {
    let ips: Vec<Value> = p
        .fixed_ips
        .iter()
        .map(|f| json!({"subnet_id": f.subnet_id, "ip_address": f.ip_address}))
        .collect();
    let status = match p.status {
        PortStatus::Active => "ACTIVE",
        PortStatus::Down => "DOWN",
    };
    json!({"id": p.id, "name": p.name, "tenant_id": p.project_id, "project_id": p.project_id,
           "network_id": p.network_id, "mac_address": p.mac_address, "fixed_ips": ips,
           "device_id": p.device_id, "device_owner": p.device_owner, "status": status,
           "admin_state_up": p.admin_state_up, "security_groups": p.security_groups,
           "allowed_address_pairs": [], "port_security_enabled": p.port_security_enabled,
           "binding:vnic_type": "normal", "binding:host_id": "", "description": "", "tags": [],
           "revision_number": 1, "created_at": iso(p.created_at, false),
           "updated_at": iso(p.updated_at, false)})
}

// ---- networks ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkCreate {
    network: NetworkBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    admin_state_up: Option<bool>,
    #[serde(default)]
    shared: Option<bool>,
    #[serde(default, rename = "router:external")]
    external: Option<bool>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    port_security_enabled: Option<bool>,
    // Accepted as the client sends them; every hv network is a VXLAN segment.
    #[serde(default, rename = "provider:network_type")]
    _network_type: Option<String>,
    #[serde(default, rename = "provider:physical_network")]
    _physical_network: Option<String>,
    #[serde(default, rename = "provider:segmentation_id")]
    _segmentation_id: Option<u32>,
}

async fn create_network(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<NetworkCreate>(S, body).await?.network;
    if b.admin_state_up == Some(false) || b.port_security_enabled == Some(false) {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'network': networks are always up, with port security",
        ));
    }
    let _ = b.description;
    let new = NewNetwork {
        name: b.name,
        shared: b.shared.unwrap_or(false),
        external: b.external.unwrap_or(false),
    };
    let ctx = who.0;
    let n = blocking(&api, S, move |c| c.create_network(&ctx, &new)).await?;
    Ok(json(StatusCode::CREATED, json!({"network": network_json(&n)})))
}

async fn list_networks(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_networks(&ctx)).await?;
    list_answer(&api, "networks", all.iter().map(network_json).collect(), &q)
}

async fn show_network(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let n = blocking(&api, S, move |c| c.get_network(&ctx, &id)).await?;
    Ok(ok(json!({"network": network_json(&n)})))
}

async fn delete_network(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_network(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---- subnets -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetCreate {
    subnet: SubnetBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pool {
    start: String,
    end: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubnetBody {
    network_id: String,
    cidr: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ip_version: Option<u8>,
    #[serde(default, deserialize_with = "some_value")]
    gateway_ip: Option<Value>,
    #[serde(default)]
    allocation_pools: Vec<Pool>,
    #[serde(default)]
    enable_dhcp: Option<bool>,
    #[serde(default)]
    dns_nameservers: Vec<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Tells a present `null` (`Some(Value::Null)`) from an absent key (`None`).
fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

async fn create_subnet(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<SubnetCreate>(S, body).await?.subnet;
    if b.ip_version.is_some_and(|v| v != 4) {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'subnet.ip_version': hv subnets are IPv4",
        ));
    }
    let gateway_ip = match &b.gateway_ip {
        None => None,
        Some(Value::String(g)) => Some(parse_ip("subnet.gateway_ip", g)?),
        Some(v) => {
            return Err(ApiError::bad_request(
                S,
                format!("invalid value for 'subnet.gateway_ip': {v} (hv subnets have a gateway)"),
            ))
        }
    };
    let mut pools = vec![];
    for p in &b.allocation_pools {
        pools.push(AllocationPool {
            start: parse_ip("subnet.allocation_pools.start", &p.start)?,
            end: parse_ip("subnet.allocation_pools.end", &p.end)?,
        });
    }
    let dns: Vec<Ipv4Addr> = b
        .dns_nameservers
        .iter()
        .map(|d| parse_ip("subnet.dns_nameservers", d))
        .collect::<ApiResult<_>>()?;
    let _ = b.description;
    let new = NewSubnet {
        name: b.name,
        network_id: b.network_id,
        cidr: b.cidr,
        gateway_ip,
        allocation_pools: pools,
        enable_dhcp: b.enable_dhcp.unwrap_or(true),
        dns_nameservers: dns,
    };
    let ctx = who.0;
    let s = blocking(&api, S, move |c| c.create_subnet(&ctx, &new)).await?;
    Ok(json(StatusCode::CREATED, json!({"subnet": subnet_json(&s)})))
}

async fn list_subnets(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_subnets(&ctx)).await?;
    list_answer(&api, "subnets", all.iter().map(subnet_json).collect(), &q)
}

async fn show_subnet(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let s = blocking(&api, S, move |c| c.get_subnet(&ctx, &id)).await?;
    Ok(ok(json!({"subnet": subnet_json(&s)})))
}

async fn delete_subnet(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_subnet(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---- ports -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixedIpBody {
    #[serde(default)]
    subnet_id: Option<String>,
    #[serde(default)]
    ip_address: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortBody {
    #[serde(default)]
    network_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    fixed_ips: Option<Vec<FixedIpBody>>,
    #[serde(default)]
    security_groups: Option<Vec<String>>,
    #[serde(default)]
    port_security_enabled: Option<bool>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    device_owner: Option<String>,
    #[serde(default)]
    admin_state_up: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortReq {
    port: PortBody,
}

async fn create_port(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<PortReq>(S, body).await?.port;
    let network_id =
        b.network_id.ok_or_else(|| ApiError::bad_request(S, "missing 'port.network_id'"))?;
    if b.admin_state_up == Some(false) {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'port.admin_state_up': ports are up",
        ));
    }
    let mut fixed = vec![];
    for f in b.fixed_ips.unwrap_or_default() {
        let ip = match f.ip_address {
            Some(a) => Some(parse_ip("port.fixed_ips.ip_address", &a)?),
            None => None,
        };
        fixed.push(FixedIpRequest { subnet_id: f.subnet_id, ip_address: ip });
    }
    let _ = b.description;
    let new = NewPort {
        name: b.name.unwrap_or_default(),
        network_id,
        fixed_ips: fixed,
        security_groups: b.security_groups,
        port_security_enabled: b.port_security_enabled,
        device_id: b.device_id.unwrap_or_default(),
        device_owner: b.device_owner.unwrap_or_default(),
    };
    let ctx = who.0;
    let p = blocking(&api, S, move |c| c.create_port(&ctx, &new)).await?;
    Ok(json(StatusCode::CREATED, json!({"port": port_json(&p)})))
}

async fn list_ports(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let device = q.get("device_id").map(str::to_string);
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_ports(&ctx, device.as_deref())).await?;
    list_answer(&api, "ports", all.iter().map(port_json).collect(), &q)
}

async fn show_port(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let p = blocking(&api, S, move |c| c.get_port(&ctx, &id)).await?;
    Ok(ok(json!({"port": port_json(&p)})))
}

async fn update_port(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let b = read_json::<PortReq>(S, body).await?.port;
    if b.network_id.is_some() || b.fixed_ips.is_some() || b.device_id.is_some() {
        return Err(ApiError::bad_request(
            S,
            "invalid key in 'port': only name, security_groups and port_security_enabled change",
        ));
    }
    let change = PortUpdate {
        name: b.name,
        security_groups: b.security_groups,
        port_security_enabled: b.port_security_enabled,
    };
    let ctx = who.0;
    let p = blocking(&api, S, move |c| c.update_port(&ctx, &id, &change)).await?;
    Ok(ok(json!({"port": port_json(&p)})))
}

async fn delete_port(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_port(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
