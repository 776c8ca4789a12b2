//! Quota plumbing shared by Nova's `os-quota-sets`, Cinder's `os-quota-sets` and Neutron's
//! `quotas`: each service names its own keys for the orchestrator's counted resources.

use std::collections::BTreeMap;
use std::sync::Arc;

use hv_orchestrator::quota::{Resource, Usage};
use hv_orchestrator::Context;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult, Service};
use crate::http::blocking;
use crate::Api;

/// A quota update body: key to new limit (a number, or a number in a string as Nova takes).
pub type QuotaBody = BTreeMap<String, Value>;

/// Every resource's limit and usage for `pid`.
pub async fn usage(api: &Arc<Api>, s: Service, ctx: Context, pid: &str) -> ApiResult<Vec<Usage>> {
    let pid = pid.to_string();
    blocking(api, s, move |c| c.quota_usage(&ctx, &pid)).await
}

/// Sets the limits of `changes` on `pid`, then reads them all back.
pub async fn set(
    api: &Arc<Api>,
    s: Service,
    ctx: Context,
    pid: &str,
    changes: Vec<(Resource, i64)>,
) -> ApiResult<Vec<Usage>> {
    let pid = pid.to_string();
    blocking(api, s, move |c| {
        for (r, n) in &changes {
            c.set_quota(&ctx, &pid, *r, *n)?;
        }
        c.quota_usage(&ctx, &pid)
    })
    .await
}

/// `{"id": pid, key: limit, ...}` for the service's keys.
pub fn limits_of(pid: &str, keys: &[(&str, Resource)], usage: &[Usage]) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(pid));
    for (key, r) in keys {
        if let Some(u) = usage.iter().find(|u| u.resource == *r) {
            m.insert((*key).into(), json!(u.limit));
        }
    }
    Value::Object(m)
}

/// The changes a body asks for: every key must be one of the service's (or one of `ignored`,
/// such as Nova's `force` and Neutron's `check_limit`), every value an integer >= -1.
pub fn changes(
    s: Service,
    envelope: &str,
    keys: &[(&str, Resource)],
    body: &QuotaBody,
    ignored: &[&str],
) -> ApiResult<Vec<(Resource, i64)>> {
    let mut out = vec![];
    for (k, v) in body {
        if ignored.contains(&k.as_str()) {
            continue;
        }
        let Some((_, r)) = keys.iter().find(|(key, _)| key == k) else {
            let known: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
            return Err(ApiError::bad_request(
                s,
                format!("invalid key '{envelope}.{k}': hv counts only {}", known.join(", ")),
            ));
        };
        let n = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(t) => t.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= -1 => out.push((*r, n)),
            _ => {
                return Err(ApiError::bad_request(
                    s,
                    format!("invalid value for '{envelope}.{k}': {v} is not an integer >= -1"),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_bodies_are_checked_per_key() {
        let keys = &[("cores", Resource::Cores)];
        let body: QuotaBody = serde_json::from_str(r#"{"cores": "40", "force": true}"#).unwrap();
        assert_eq!(
            changes(Service::Compute, "quota_set", keys, &body, &["force"]).unwrap(),
            vec![(Resource::Cores, 40)]
        );
        let body: QuotaBody = serde_json::from_str(r#"{"key_pairs": 3}"#).unwrap();
        let e = changes(Service::Compute, "quota_set", keys, &body, &[]).unwrap_err();
        assert!(e.message.contains("quota_set.key_pairs"));
        let body: QuotaBody = serde_json::from_str(r#"{"cores": -5}"#).unwrap();
        assert!(changes(Service::Compute, "quota_set", keys, &body, &[]).is_err());
    }
}
