//! Flavors: vCPUs, RAM and disk of an instance; public, or private with per-project access.
//! A private flavor a project has no access to answers like a missing one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::event;
use crate::identity::{insert, name_record, name_taken, Project};
use crate::ids::{now, uuid, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::records::{list, load, to_record, Resource};
use crate::store::{Kind, Op, StoreError};
use crate::{check_name, Cloud};

/// A flavor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flavor {
    /// Its id (a UUID unless the admin chose one).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM, MiB.
    pub ram_mb: u64,
    /// Root disk, GiB.
    pub disk_gb: u64,
    /// Ephemeral disk, GiB.
    pub ephemeral_gb: u64,
    /// Swap, MiB.
    pub swap_mb: u64,
    /// Visible to every project.
    pub is_public: bool,
    /// Nova's `OS-FLV-DISABLED:disabled`.
    pub disabled: bool,
    /// Extra specs (`properties`).
    pub extra_specs: BTreeMap<String, String>,
    /// When it was made.
    pub created_at: Timestamp,
}

/// What a new flavor needs (validated by [`Cloud::create_flavor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFlavor {
    /// An id to use (`None`: generate one, as Nova does for `"id": null`).
    pub id: Option<String>,
    /// Name.
    pub name: String,
    /// vCPUs, 1..=1024.
    pub vcpus: u32,
    /// RAM MiB, 1..=16 TiB.
    pub ram_mb: u64,
    /// Root disk GiB, at most 64 TiB.
    pub disk_gb: u64,
    /// Public or private.
    pub is_public: bool,
}

impl NewFlavor {
    /// A public flavor.
    pub fn new(name: &str, vcpus: u32, ram_mb: u64, disk_gb: u64) -> NewFlavor {
        NewFlavor { id: None, name: name.into(), vcpus, ram_mb, disk_gb, is_public: true }
    }
}

/// A project's access to a private flavor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorAccess {
    /// `flavor:project`.
    pub id: String,
    /// The flavor.
    pub flavor_id: String,
    /// The project.
    pub project_id: String,
}

impl Resource for Flavor {
    const KIND: Kind = Kind::Flavor;
    const NAME: &'static str = "flavor";
    fn id(&self) -> &str {
        &self.id
    }
    fn project_id(&self) -> Option<&str> {
        None
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Resource for FlavorAccess {
    const KIND: Kind = Kind::FlavorAccess;
    const NAME: &'static str = "flavor access";
    fn id(&self) -> &str {
        &self.id
    }
    fn project_id(&self) -> Option<&str> {
        Some(&self.project_id)
    }
    fn name(&self) -> &str {
        &self.flavor_id
    }
}

impl Cloud {
    /// Makes a flavor (admin).
    pub fn create_flavor(&self, ctx: &Context, new: &NewFlavor) -> Result<Flavor> {
        authorize(ctx, Action::FlavorCreate)?;
        check_name("flavor name", &new.name)?;
        if !(1..=1024).contains(&new.vcpus) {
            return Err(Error::invalid("vcpus", format!("{} is outside 1..=1024", new.vcpus)));
        }
        if !(1..=16 << 20).contains(&new.ram_mb) {
            return Err(Error::invalid("ram", format!("{} MiB is outside 1..=16 TiB", new.ram_mb)));
        }
        if new.disk_gb > 64 << 10 {
            return Err(Error::invalid("disk", format!("{} GiB is above 64 TiB", new.disk_gb)));
        }
        let id = match &new.id {
            Some(id) => {
                check_name("flavor id", id)?;
                id.clone()
            }
            None => uuid(),
        };
        let f = Flavor {
            id,
            name: new.name.clone(),
            vcpus: new.vcpus,
            ram_mb: new.ram_mb,
            disk_gb: new.disk_gb,
            ephemeral_gb: 0,
            swap_mb: 0,
            is_public: new.is_public,
            disabled: false,
            extra_specs: BTreeMap::new(),
            created_at: now(),
        };
        self.store()
            .apply(&[
                insert(name_record("flavor", "", &f.name, &f.id)),
                insert(to_record(&f, 1)),
                event(
                    ctx,
                    ctx.project_id(),
                    "flavor.create",
                    "flavor",
                    &f.id,
                    serde_json::json!({"name": f.name}),
                ),
            ])
            .map_err(|e| match e {
                StoreError::Exists { kind, .. } if kind == "flavor" => Error::Conflict {
                    kind: "flavor",
                    id: f.id.clone(),
                    reason: "the id is taken".into(),
                },
                e => name_taken(e, "flavor", &new.name),
            })?;
        Ok(f)
    }

    fn flavor_access(&self, ctx: &Context, f: &Flavor) -> Result<bool> {
        if f.is_public || ctx.is_admin() {
            return Ok(true);
        }
        let key = format!("{}:{}", f.id, ctx.project_id());
        Ok(load::<FlavorAccess>(self.store(), &key)?.is_some())
    }

    /// A flavor the caller may use.
    pub fn get_flavor(&self, ctx: &Context, id: &str) -> Result<Flavor> {
        authorize(ctx, Action::FlavorGet)?;
        match load::<Flavor>(self.store(), id)? {
            Some((f, _)) if self.flavor_access(ctx, &f)? => Ok(f),
            _ => Err(Error::not_found("flavor", id)),
        }
    }

    /// The flavors the caller may use, optionally by name.
    pub fn list_flavors(&self, ctx: &Context, name: Option<&str>) -> Result<Vec<Flavor>> {
        authorize(ctx, Action::FlavorList)?;
        let mut out = vec![];
        for (f, _) in list::<Flavor>(self.store(), None, name)? {
            if self.flavor_access(ctx, &f)? {
                out.push(f);
            }
        }
        Ok(out)
    }

    /// Deletes a flavor and its access list (admin).
    pub fn delete_flavor(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::FlavorDelete)?;
        let f = self.get_flavor(ctx, id)?;
        let mut ops = vec![
            Op::Delete(Kind::Flavor, id.to_string()),
            Op::Delete(Kind::Name, name_record("flavor", "", &f.name, id).id),
            event(ctx, ctx.project_id(), "flavor.delete", "flavor", id, serde_json::json!({})),
        ];
        for (a, _) in list::<FlavorAccess>(self.store(), None, Some(id))? {
            ops.push(Op::Delete(Kind::FlavorAccess, a.id));
        }
        Ok(self.store().apply(&ops)?)
    }

    /// Lets `project_id` use private flavor `flavor_id` (admin).
    pub fn add_flavor_access(
        &self,
        ctx: &Context,
        flavor_id: &str,
        project_id: &str,
    ) -> Result<()> {
        authorize(ctx, Action::FlavorAccessAdd)?;
        let f = self.get_flavor(ctx, flavor_id)?;
        if f.is_public {
            return Err(Error::Conflict {
                kind: "flavor",
                id: flavor_id.into(),
                reason: "access lists apply to private flavors only".into(),
            });
        }
        load::<Project>(self.store(), project_id)?
            .ok_or_else(|| Error::not_found("project", project_id))?;
        let a = FlavorAccess {
            id: format!("{flavor_id}:{project_id}"),
            flavor_id: flavor_id.into(),
            project_id: project_id.into(),
        };
        match self.store().apply(&[
            insert(to_record(&a, 1)),
            event(ctx, project_id, "flavor.access.add", "flavor", flavor_id, serde_json::json!({})),
        ]) {
            Ok(()) | Err(StoreError::Exists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes `project_id`'s access to `flavor_id` away (admin).
    pub fn remove_flavor_access(
        &self,
        ctx: &Context,
        flavor_id: &str,
        project_id: &str,
    ) -> Result<()> {
        authorize(ctx, Action::FlavorAccessRemove)?;
        let id = format!("{flavor_id}:{project_id}");
        self.store()
            .apply(&[
                Op::Delete(Kind::FlavorAccess, id.clone()),
                event(
                    ctx,
                    project_id,
                    "flavor.access.remove",
                    "flavor",
                    flavor_id,
                    serde_json::json!({}),
                ),
            ])
            .map_err(|e| match e {
                StoreError::Missing { .. } => Error::not_found("flavor access", id),
                e => e.into(),
            })
    }
}
