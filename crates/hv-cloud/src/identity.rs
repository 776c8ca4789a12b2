//! Keystone v3 under `/identity`: password tokens (issue, validate, revoke), projects, users,
//! roles, role grants and role assignments, domains and regions.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, put};
use axum::Router;
use hv_orchestrator::identity::{
    NewUser, PasswordAuth, Project, ProjectRef, RoleInfo, User, UserRef, DEFAULT_DOMAIN_ID,
    DEFAULT_DOMAIN_NAME,
};
use hv_orchestrator::records;
use hv_orchestrator::{Cloud, Context, Role};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{Caller, Keystone};
use crate::error::{ApiError, ApiResult, Service};
use crate::http::{blocking, empty, iso, json, ok, read_json, Page, Params};
use crate::versions::{catalog, identity_root, identity_v3};
use crate::Api;

const S: Service = Service::Identity;
type Who = Caller<Keystone>;

/// The identity routes.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/identity", get(identity_root))
        .route("/identity/", get(identity_root))
        .route("/identity/v3", get(identity_v3))
        .route("/identity/v3/", get(identity_v3))
        .route(
            "/identity/v3/auth/tokens",
            get(validate_token).head(check_token).post(issue_token).delete(revoke_token),
        )
        .route("/identity/v3/auth/catalog", get(auth_catalog))
        .route("/identity/v3/auth/projects", get(auth_projects))
        .route("/identity/v3/projects", get(list_projects).post(create_project))
        .route("/identity/v3/projects/{id}", get(show_project).delete(delete_project))
        .route("/identity/v3/users", get(list_users).post(create_user))
        .route("/identity/v3/users/{id}", get(show_user).delete(delete_user))
        .route("/identity/v3/roles", get(list_roles))
        .route("/identity/v3/roles/{id}", get(show_role))
        .route("/identity/v3/projects/{pid}/users/{uid}/roles", get(list_user_roles))
        .route(
            "/identity/v3/projects/{pid}/users/{uid}/roles/{rid}",
            put(grant).head(check_grant).get(check_grant).delete(revoke),
        )
        .route("/identity/v3/role_assignments", get(role_assignments))
        .route("/identity/v3/domains", get(list_domains))
        .route("/identity/v3/domains/{id}", get(show_domain))
        .route("/identity/v3/regions", get(list_regions))
}

// ---- the JSON shapes -------------------------------------------------------------------

fn domain_json(public: &str) -> Value {
    json!({"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME, "enabled": true,
           "description": "The default domain", "tags": [], "options": {},
           "links": {"self": format!("{public}/identity/v3/domains/{DEFAULT_DOMAIN_ID}")}})
}

fn project_json(public: &str, p: &Project) -> Value {
    json!({"id": p.id, "name": p.name, "domain_id": p.domain_id, "description": p.description,
           "enabled": p.enabled, "is_domain": false, "parent_id": p.domain_id, "tags": [],
           "options": {}, "links": {"self": format!("{public}/identity/v3/projects/{}", p.id)}})
}

fn user_json(public: &str, u: &User) -> Value {
    json!({"id": u.id, "name": u.name, "domain_id": u.domain_id, "enabled": u.enabled,
           "default_project_id": u.default_project_id, "password_expires_at": null,
           "options": {}, "links": {"self": format!("{public}/identity/v3/users/{}", u.id)}})
}

fn role_json(public: &str, r: &RoleInfo) -> Value {
    json!({"id": r.id, "name": r.name, "domain_id": null, "description": null, "options": {},
           "links": {"self": format!("{public}/identity/v3/roles/{}", r.id)}})
}

fn list_links(public: &str, what: &str) -> Value {
    json!({"self": format!("{public}/identity/v3/{what}"), "previous": null, "next": null})
}

fn token_json(api: &Api, ctx: &Context, roles: &[RoleInfo]) -> Value {
    let roles: Vec<Value> = ctx
        .roles()
        .iter()
        .filter_map(|r| roles.iter().find(|i| i.name == r.as_str()))
        .map(|r| json!({"id": r.id, "name": r.name}))
        .collect();
    let domain = json!({"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME});
    json!({"token": {
        "methods": ["password"],
        "audit_ids": [],
        "expires_at": iso(ctx.expires_at(), true),
        "issued_at": iso(ctx.issued_at(), true),
        "user": {"id": ctx.user_id(), "name": ctx.user_name(), "domain": domain,
                 "password_expires_at": null},
        "project": {"id": ctx.project_id(), "name": ctx.project_name(), "domain": domain},
        "is_domain": false,
        "roles": roles,
        "catalog": catalog(&api.public, ctx.project_id(), &api.region),
    }})
}

// ---- tokens ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct AuthRequest {
    auth: AuthBody,
}

#[derive(Deserialize)]
struct AuthBody {
    identity: AuthIdentity,
    scope: Option<Scope>,
}

#[derive(Deserialize)]
struct AuthIdentity {
    methods: Vec<String>,
    password: Option<PasswordMethod>,
}

#[derive(Deserialize)]
struct PasswordMethod {
    user: UserSpec,
}

#[derive(Deserialize)]
struct UserSpec {
    id: Option<String>,
    name: Option<String>,
    domain: Option<DomainSpec>,
    password: String,
}

#[derive(Deserialize)]
struct DomainSpec {
    id: Option<String>,
    name: Option<String>,
}

impl DomainSpec {
    fn key(&self) -> ApiResult<String> {
        self.id
            .clone()
            .or_else(|| self.name.clone())
            .ok_or_else(|| ApiError::bad_request(S, "a domain needs 'id' or 'name'"))
    }
}

#[derive(Deserialize)]
struct Scope {
    project: Option<ProjectSpec>,
}

#[derive(Deserialize)]
struct ProjectSpec {
    id: Option<String>,
    name: Option<String>,
    domain: Option<DomainSpec>,
}

fn parse_auth(req: AuthRequest) -> ApiResult<(PasswordAuth, Option<UserRef>)> {
    let AuthBody { identity, scope } = req.auth;
    if !identity.methods.iter().any(|m| m == "password") {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'auth.identity.methods': only 'password' is supported",
        ));
    }
    let pw = identity.password.ok_or_else(|| {
        ApiError::bad_request(S, "missing 'auth.identity.password' for the password method")
    })?;
    let UserSpec { id, name, domain, password } = pw.user;
    let user = match (id, name) {
        (Some(id), _) => UserRef::Id(id),
        (None, Some(name)) => {
            let domain = domain.ok_or_else(|| {
                ApiError::bad_request(
                    S,
                    "a user named by name needs 'auth.identity.password.user.domain'",
                )
            })?;
            UserRef::Name { name, domain: domain.key()? }
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                S,
                "missing 'auth.identity.password.user.id' or '.name'",
            ))
        }
    };
    let project = match scope.and_then(|s| s.project) {
        Some(ProjectSpec { id: Some(id), .. }) => Some(ProjectRef::Id(id)),
        Some(ProjectSpec { name: Some(name), domain, .. }) => {
            let domain = domain.ok_or_else(|| {
                ApiError::bad_request(
                    S,
                    "a project named by name needs 'auth.scope.project.domain'",
                )
            })?;
            Some(ProjectRef::Name { name, domain: domain.key()? })
        }
        Some(_) => {
            return Err(ApiError::bad_request(S, "missing 'auth.scope.project.id' or '.name'"))
        }
        None => None,
    };
    // Without a scope, the token is scoped to the user's default project (hv issues
    // project-scoped tokens only).
    let unscoped_user = project.is_none().then(|| user.clone());
    let project = project.unwrap_or(ProjectRef::Id(String::new()));
    Ok((PasswordAuth { user, password, project }, unscoped_user))
}

/// The default project of a user named by `r`, for an unscoped request.
fn default_project(cloud: &Cloud, r: &UserRef) -> hv_orchestrator::Result<Option<String>> {
    let user = match r {
        UserRef::Id(id) => records::load::<User>(cloud.store(), id)?.map(|(u, _)| u),
        UserRef::Name { name, .. } => {
            records::list::<User>(cloud.store(), None, Some(name))?.pop().map(|(u, _)| u)
        }
    };
    Ok(user.and_then(|u| u.default_project_id))
}

async fn issue_token(State(api): State<Arc<Api>>, body: Body) -> ApiResult<Response> {
    let req: AuthRequest = read_json(S, body).await?;
    let (mut auth, unscoped) = parse_auth(req)?;
    let (issued, roles) = blocking(&api, S, move |c| {
        if let Some(u) = unscoped {
            // An unknown user or one without a default project fails like a bad password.
            auth.project = ProjectRef::Id(default_project(c, &u)?.unwrap_or_default());
        }
        let issued = c.authenticate(&auth)?;
        let roles = c.list_roles(&issued.context, None)?;
        Ok((issued, roles))
    })
    .await?;
    let mut r = json(StatusCode::CREATED, token_json(&api, &issued.context, &roles));
    let tok = HeaderValue::from_str(&issued.secret)
        .map_err(|_| ApiError::new(S, StatusCode::INTERNAL_SERVER_ERROR, "token header"))?;
    r.headers_mut().insert("x-subject-token", tok);
    Ok(r)
}

fn subject_token(headers: &HeaderMap) -> ApiResult<String> {
    headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request(S, "missing the X-Subject-Token header"))
}

/// The subject token's context, if the caller may see it (its own, or any for an admin).
async fn subject(api: &Arc<Api>, who: &Context, headers: &HeaderMap) -> ApiResult<Context> {
    let tok = subject_token(headers)?;
    let sub = blocking(api, S, move |c| c.validate(&tok))
        .await
        .map_err(|_| ApiError::not_found(S, "the subject token is not valid"))?;
    if !who.is_admin() && sub.user_id() != who.user_id() {
        return Err(ApiError::not_found(S, "the subject token is not valid"));
    }
    Ok(sub)
}

async fn validate_token(
    State(api): State<Arc<Api>>,
    who: Who,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let sub = subject(&api, &who, &headers).await?;
    let ctx = sub.clone();
    let roles = blocking(&api, S, move |c| c.list_roles(&ctx, None)).await?;
    let mut r = ok(token_json(&api, &sub, &roles));
    if let Some(v) = headers.get("x-subject-token") {
        r.headers_mut().insert("x-subject-token", v.clone());
    }
    Ok(r)
}

async fn check_token(
    State(api): State<Arc<Api>>,
    who: Who,
    headers: HeaderMap,
) -> ApiResult<Response> {
    subject(&api, &who, &headers).await?;
    Ok(empty(StatusCode::OK))
}

async fn revoke_token(
    State(api): State<Arc<Api>>,
    who: Who,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let tok = subject_token(&headers)?;
    let ctx = who.0;
    blocking(&api, S, move |c| c.revoke_token(&ctx, &tok)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn auth_catalog(State(api): State<Arc<Api>>, who: Who) -> Response {
    ok(json!({"catalog": catalog(&api.public, who.project_id(), &api.region),
              "links": {"self": format!("{}/identity/v3/auth/catalog", api.public)}}))
}

async fn auth_projects(State(api): State<Arc<Api>>, who: Who) -> ApiResult<Response> {
    let ctx = who.0;
    let p = blocking(&api, S, move |c| c.get_project(&ctx, ctx.project_id())).await?;
    Ok(ok(json!({"projects": [project_json(&api.public, &p)],
                 "links": list_links(&api.public, "auth/projects")})))
}

// ---- projects ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct ProjectCreate {
    project: ProjectBody,
}

#[derive(Deserialize)]
struct ProjectBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    domain_id: Option<String>,
    #[serde(default)]
    is_domain: Option<bool>,
}

fn check_domain(field: &str, d: Option<&str>) -> ApiResult<()> {
    match d {
        None => Ok(()),
        Some(d) if d == DEFAULT_DOMAIN_ID => Ok(()),
        Some(d) => Err(ApiError::bad_request(
            S,
            format!("invalid value for '{field}': '{d}' (hv has the one domain 'default')"),
        )),
    }
}

async fn create_project(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<ProjectCreate>(S, body).await?.project;
    check_domain("project.domain_id", b.domain_id.as_deref())?;
    if b.enabled == Some(false) || b.is_domain == Some(true) {
        return Err(ApiError::bad_request(
            S,
            "invalid value for 'project': disabled projects and domains cannot be created",
        ));
    }
    let ctx = who.0;
    let p = blocking(&api, S, move |c| {
        c.create_project(&ctx, &b.name, b.description.as_deref().unwrap_or(""))
    })
    .await?;
    Ok(json(StatusCode::CREATED, json!({"project": project_json(&api.public, &p)})))
}

async fn list_projects(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let page = Page::of(S, &q)?;
    let name = q.get("name").map(str::to_string);
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_projects(&ctx, name.as_deref())).await?;
    let (items, _) = page.apply(S, all, |p| &p.id)?;
    let items: Vec<Value> = items.iter().map(|p| project_json(&api.public, p)).collect();
    Ok(ok(json!({"projects": items, "links": list_links(&api.public, "projects")})))
}

async fn show_project(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let p = blocking(&api, S, move |c| c.get_project(&ctx, &id)).await?;
    Ok(ok(json!({"project": project_json(&api.public, &p)})))
}

async fn delete_project(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_project(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---- users -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct UserCreate {
    user: UserBody,
}

#[derive(Deserialize)]
struct UserBody {
    name: String,
    password: Option<String>,
    #[serde(default)]
    default_project_id: Option<String>,
    #[serde(default)]
    domain_id: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

async fn create_user(State(api): State<Arc<Api>>, who: Who, body: Body) -> ApiResult<Response> {
    let b = read_json::<UserCreate>(S, body).await?.user;
    check_domain("user.domain_id", b.domain_id.as_deref())?;
    if b.enabled == Some(false) {
        return Err(ApiError::bad_request(S, "invalid value for 'user.enabled': must be true"));
    }
    let password = b
        .password
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request(S, "missing 'user.password' (hv users have one)"))?;
    let new = NewUser { name: b.name, password, default_project_id: b.default_project_id };
    let ctx = who.0;
    let u = blocking(&api, S, move |c| c.create_user(&ctx, &new)).await?;
    Ok(json(StatusCode::CREATED, json!({"user": user_json(&api.public, &u)})))
}

async fn list_users(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let page = Page::of(S, &q)?;
    let name = q.get("name").map(str::to_string);
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_users(&ctx, name.as_deref())).await?;
    let (items, _) = page.apply(S, all, |u| &u.id)?;
    let items: Vec<Value> = items.iter().map(|u| user_json(&api.public, u)).collect();
    Ok(ok(json!({"users": items, "links": list_links(&api.public, "users")})))
}

async fn show_user(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let u = blocking(&api, S, move |c| c.get_user(&ctx, &id)).await?;
    Ok(ok(json!({"user": user_json(&api.public, &u)})))
}

async fn delete_user(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| c.delete_user(&ctx, &id)).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

// ---- roles and assignments ---------------------------------------------------------------

async fn list_roles(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let name = q.get("name").map(str::to_string);
    let ctx = who.0;
    let all = blocking(&api, S, move |c| c.list_roles(&ctx, name.as_deref())).await?;
    let items: Vec<Value> = all.iter().map(|r| role_json(&api.public, r)).collect();
    Ok(ok(json!({"roles": items, "links": list_links(&api.public, "roles")})))
}

/// The role with id `id`.
fn role_by_id(c: &Cloud, ctx: &Context, id: &str) -> hv_orchestrator::Result<(RoleInfo, Role)> {
    c.list_roles(ctx, None)?
        .into_iter()
        .find(|r| r.id == id)
        .and_then(|r| Role::from_name(&r.name).map(|role| (r, role)))
        .ok_or_else(|| hv_orchestrator::Error::not_found("role", id))
}

async fn show_role(
    State(api): State<Arc<Api>>,
    who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let (r, _) = blocking(&api, S, move |c| role_by_id(c, &ctx, &id)).await?;
    Ok(ok(json!({"role": role_json(&api.public, &r)})))
}

async fn grant(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((pid, uid, rid)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| {
        let (_, role) = role_by_id(c, &ctx, &rid)?;
        c.grant_role(&ctx, &pid, &uid, role)
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn check_grant(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((pid, uid, rid)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let held = blocking(&api, S, move |c| {
        Ok(c.list_assignments(&ctx, &pid)?.iter().any(|a| a.user_id == uid && a.role_id == rid))
    })
    .await?;
    if held {
        Ok(empty(StatusCode::NO_CONTENT))
    } else {
        Err(ApiError::not_found(S, "no such role assignment"))
    }
}

async fn revoke(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((pid, uid, rid)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    blocking(&api, S, move |c| {
        let (_, role) = role_by_id(c, &ctx, &rid)?;
        c.revoke_role(&ctx, &pid, &uid, role)
    })
    .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn list_user_roles(
    State(api): State<Arc<Api>>,
    who: Who,
    Path((pid, uid)): Path<(String, String)>,
) -> ApiResult<Response> {
    let ctx = who.0;
    let roles = blocking(&api, S, move |c| {
        let held: Vec<String> = c
            .list_assignments(&ctx, &pid)?
            .into_iter()
            .filter(|a| a.user_id == uid)
            .map(|a| a.role_id)
            .collect();
        let roles: Vec<RoleInfo> =
            c.list_roles(&ctx, None)?.into_iter().filter(|r| held.contains(&r.id)).collect();
        Ok(roles)
    })
    .await?;
    let items: Vec<Value> = roles.iter().map(|r| role_json(&api.public, r)).collect();
    Ok(ok(json!({"roles": items, "links": list_links(&api.public, "roles")})))
}

async fn role_assignments(
    State(api): State<Arc<Api>>,
    who: Who,
    Query(q): Query<Params>,
) -> ApiResult<Response> {
    let project = q.get("scope.project.id").map(str::to_string);
    let user = q.get("user.id").map(str::to_string);
    let role = q.get("role.id").map(str::to_string);
    let names = q.flag(S, "include_names")?.unwrap_or(false);
    let ctx = who.0;
    let rows = blocking(&api, S, move |c| {
        let projects = match project {
            Some(p) => vec![c.get_project(&ctx, &p)?],
            None => c.list_projects(&ctx, None)?,
        };
        let roles = c.list_roles(&ctx, None)?;
        let mut out = vec![];
        for p in projects {
            for a in c.list_assignments(&ctx, &p.id)? {
                if user.as_ref().is_some_and(|u| *u != a.user_id)
                    || role.as_ref().is_some_and(|r| *r != a.role_id)
                {
                    continue;
                }
                let user_name = if names {
                    records::load::<User>(c.store(), &a.user_id)?.map(|(u, _)| u.name)
                } else {
                    None
                };
                let role_name = roles.iter().find(|r| r.id == a.role_id).map(|r| r.name.clone());
                out.push((a, p.name.clone(), user_name, role_name));
            }
        }
        Ok(out)
    })
    .await?;
    let domain = json!({"id": DEFAULT_DOMAIN_ID, "name": DEFAULT_DOMAIN_NAME});
    let items: Vec<Value> = rows
        .iter()
        .map(|(a, pname, uname, rname)| {
            let mut role = json!({"id": a.role_id});
            let mut user = json!({"id": a.user_id});
            let mut project = json!({"id": a.project_id});
            if names {
                role["name"] = json!(rname);
                user["name"] = json!(uname);
                user["domain"] = domain.clone();
                project["name"] = json!(pname);
                project["domain"] = domain.clone();
            }
            json!({"role": role, "user": user, "scope": {"project": project},
                   "links": {"assignment": format!(
                       "{}/identity/v3/projects/{}/users/{}/roles/{}",
                       api.public, a.project_id, a.user_id, a.role_id)}})
        })
        .collect();
    Ok(ok(json!({"role_assignments": items, "links": list_links(&api.public, "role_assignments")})))
}

// ---- domains and regions -----------------------------------------------------------------

async fn list_domains(State(api): State<Arc<Api>>, _who: Who) -> Response {
    ok(json!({"domains": [domain_json(&api.public)], "links": list_links(&api.public, "domains")}))
}

async fn show_domain(
    State(api): State<Arc<Api>>,
    _who: Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    if id == DEFAULT_DOMAIN_ID || id == DEFAULT_DOMAIN_NAME {
        Ok(ok(json!({"domain": domain_json(&api.public)})))
    } else {
        Err(ApiError::not_found(S, format!("domain '{id}' not found")))
    }
}

async fn list_regions(State(api): State<Arc<Api>>, _who: Who) -> Response {
    ok(json!({"regions": [{"id": api.region, "description": "", "parent_region_id": null,
                            "links": {"self": format!("{}/identity/v3/regions/{}", api.public, api.region)}}],
              "links": list_links(&api.public, "regions")}))
}
