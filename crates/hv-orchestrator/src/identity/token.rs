//! Tokens: password authentication scoped to one project, validation, revocation.
//!
//! A token's secret is 32 random bytes (64 hex digits) handed to the caller once; the store
//! keeps only its SHA-256, so a copy of the database gives no usable token. Validation is one
//! hash and one primary-key lookup (no password hashing, no joins): the subject (user and
//! project names, roles) is stored with the token when it is issued. Changing a user's roles
//! or deleting a user or project revokes the tokens concerned, so stored roles never outlive
//! their assignment.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{password, Project, User, DEFAULT_DOMAIN_ID, DEFAULT_DOMAIN_NAME};
use crate::error::{Error, Result};
use crate::ids::{now, random_bytes, Timestamp};
use crate::policy::{authorize, Action, Context, Role};
use crate::records::{list, load};
use crate::store::{Op, TokenRow};
use crate::Cloud;

/// A user named by id, or by name in a domain (named by id or name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    /// By id.
    Id(String),
    /// By name in a domain.
    Name {
        /// The user's name.
        name: String,
        /// The domain's id or name (`default` / `Default`).
        domain: String,
    },
}

/// A project named by id, or by name in a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectRef {
    /// By id.
    Id(String),
    /// By name in a domain.
    Name {
        /// The project's name.
        name: String,
        /// The domain's id or name.
        domain: String,
    },
}

/// A password authentication request scoped to a project (Keystone's
/// `POST /v3/auth/tokens` with the `password` method and a project scope).
#[derive(Debug, Clone)]
pub struct PasswordAuth {
    /// Who.
    pub user: UserRef,
    /// The password.
    pub password: String,
    /// The project to scope the token to.
    pub project: ProjectRef,
}

impl PasswordAuth {
    /// User and project by name in the `Default` domain.
    pub fn by_name(user: &str, password: &str, project: &str) -> PasswordAuth {
        PasswordAuth {
            user: UserRef::Name { name: user.into(), domain: DEFAULT_DOMAIN_NAME.into() },
            password: password.into(),
            project: ProjectRef::Name { name: project.into(), domain: DEFAULT_DOMAIN_NAME.into() },
        }
    }
}

/// A freshly issued token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The secret to send back as `X-Auth-Token` (given out once, stored only hashed).
    pub secret: String,
    /// What it says.
    pub context: Context,
}

/// What is stored with a token.
#[derive(Debug, Serialize, Deserialize)]
struct Subject {
    user_name: String,
    project_name: String,
    roles: Vec<Role>,
}

fn domain_ok(domain: &str) -> bool {
    domain == DEFAULT_DOMAIN_ID || domain == DEFAULT_DOMAIN_NAME
}

/// The stored key of a token secret.
pub(crate) fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Cloud {
    fn find_user(&self, r: &UserRef) -> Result<Option<User>> {
        Ok(match r {
            UserRef::Id(id) => load::<User>(self.store(), id)?.map(|(u, _)| u),
            UserRef::Name { name, domain } if domain_ok(domain) => {
                list::<User>(self.store(), None, Some(name))?.into_iter().map(|(u, _)| u).next()
            }
            UserRef::Name { .. } => None,
        })
    }

    fn find_project(&self, r: &ProjectRef) -> Result<Option<Project>> {
        Ok(match r {
            ProjectRef::Id(id) => load::<Project>(self.store(), id)?.map(|(p, _)| p),
            ProjectRef::Name { name, domain } if domain_ok(domain) => {
                list::<Project>(self.store(), None, Some(name))?.into_iter().map(|(p, _)| p).next()
            }
            ProjectRef::Name { .. } => None,
        })
    }

    /// Checks a password and issues a token scoped to the requested project. Every failure
    /// (unknown user, wrong password, disabled user or project, no role on the project)
    /// answers the same [`Error::Unauthorized`], after the same password-hashing work.
    pub fn authenticate(&self, auth: &PasswordAuth) -> Result<IssuedToken> {
        let refused =
            || Error::Unauthorized("the request you have made requires authentication".into());
        let user = self.find_user(&auth.user)?;
        // Only an enabled user's right password may be remembered: an unknown or disabled user
        // always costs the full hash, so timing tells neither apart from a wrong password.
        let password_ok = match &user {
            Some(u) if u.enabled => self.passwords.verify(&auth.password, &u.password_hash),
            Some(u) => {
                // The work, not the outcome: a disabled user is refused either way.
                let _ = password::verify(&auth.password, &u.password_hash);
                false
            }
            None => {
                let _ = password::verify(&auth.password, password::decoy());
                false
            }
        };
        let Some(user) = user.filter(|_| password_ok) else {
            return Err(refused());
        };
        let project =
            self.find_project(&auth.project)?.filter(|p| p.enabled).ok_or_else(refused)?;
        let roles = self.roles_of(&project.id, &user.id)?;
        if roles.is_empty() {
            return Err(refused());
        }
        let secret = hex::encode(random_bytes::<32>());
        let issued_at = now();
        let expires_at = issued_at.plus_secs(self.config().token_ttl_secs);
        let subject = Subject {
            user_name: user.name.clone(),
            project_name: project.name.clone(),
            roles: roles.clone(),
        };
        self.store().apply(&[Op::PutToken(TokenRow {
            hash: token_hash(&secret),
            user_id: user.id.clone(),
            project_id: project.id.clone(),
            subject: serde_json::to_string(&subject).expect("subjects serialise"),
            issued_at: issued_at.0,
            expires_at: expires_at.0,
            revoked: false,
        })])?;
        let context = Context {
            user_id: user.id,
            user_name: user.name,
            project_id: project.id,
            project_name: project.name,
            roles,
            issued_at,
            expires_at,
        };
        Ok(IssuedToken { secret, context })
    }

    /// The caller a token speaks for; unknown, expired and revoked tokens are
    /// [`Error::Unauthorized`].
    pub fn validate(&self, secret: &str) -> Result<Context> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(Error::Unauthorized("malformed token".into()));
        }
        let row = self
            .store()
            .token(&token_hash(secret))?
            .ok_or_else(|| Error::Unauthorized("unknown token".into()))?;
        if row.revoked {
            return Err(Error::Unauthorized("the token was revoked".into()));
        }
        if row.expires_at <= now().0 {
            return Err(Error::Unauthorized("the token has expired".into()));
        }
        let subject: Subject = serde_json::from_str(&row.subject)
            .map_err(|_| Error::Unauthorized("unreadable token".into()))?;
        Ok(Context {
            user_id: row.user_id,
            user_name: subject.user_name,
            project_id: row.project_id,
            project_name: subject.project_name,
            roles: subject.roles,
            issued_at: Timestamp(row.issued_at),
            expires_at: Timestamp(row.expires_at),
        })
    }

    /// Revokes a token: the caller's own, or any for an admin. An unknown token, or another
    /// user's for a non-admin, is [`Error::NotFound`].
    pub fn revoke_token(&self, ctx: &Context, secret: &str) -> Result<()> {
        authorize(ctx, Action::TokenRevoke)?;
        let hash = token_hash(secret);
        let not_found = || Error::not_found("token", "(the given token)");
        let row = self.store().token(&hash)?.ok_or_else(not_found)?;
        if !ctx.is_admin() && row.user_id != ctx.user_id() {
            return Err(not_found());
        }
        self.store().revoke_token(&hash)?;
        Ok(())
    }
}
