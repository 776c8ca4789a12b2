//! Typed records over the store's JSON bodies: each resource type says its kind, id, owner
//! and name, and these helpers turn it into a [`Record`] and back.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::{Kind, Record, Store};

/// A resource kept in the `resources` table.
pub trait Resource: Serialize + DeserializeOwned {
    /// Its kind.
    const KIND: Kind;
    /// The name errors use ("image", "flavor", ...).
    const NAME: &'static str;
    /// Its id.
    fn id(&self) -> &str;
    /// The owning project, if it has one.
    fn project_id(&self) -> Option<&str>;
    /// Its name.
    fn name(&self) -> &str;
}

/// The record of `r` at `version` (1 for an insert, the read version for an update).
pub fn to_record<T: Resource>(r: &T, version: i64) -> Record {
    Record {
        kind: T::KIND,
        id: r.id().to_string(),
        project_id: r.project_id().map(str::to_string),
        name: r.name().to_string(),
        // Serialising plain structs of strings, numbers and maps cannot fail.
        body: serde_json::to_string(r).expect("records serialise"),
        version,
    }
}

/// Reads a record back into its type.
pub fn from_record<T: Resource>(r: &Record) -> Result<T> {
    serde_json::from_str(&r.body).map_err(|source| Error::Corrupt {
        kind: T::NAME,
        id: r.id.clone(),
        source,
    })
}

/// A resource by id, with its version.
pub fn load<T: Resource>(store: &dyn Store, id: &str) -> Result<Option<(T, i64)>> {
    match store.get(T::KIND, id)? {
        Some(r) => Ok(Some((from_record(&r)?, r.version))),
        None => Ok(None),
    }
}

/// Resources of a type, optionally of one project and/or name.
pub fn list<T: Resource>(
    store: &dyn Store,
    project_id: Option<&str>,
    name: Option<&str>,
) -> Result<Vec<(T, i64)>> {
    store
        .list(T::KIND, project_id, name)?
        .iter()
        .map(|r| Ok((from_record(r)?, r.version)))
        .collect()
}

/// Implements [`Resource`] for a struct with `id` and `name` fields and an owner expression.
macro_rules! impl_resource {
    ($t:ty, $kind:expr, $name:expr, |$s:ident| $project:expr) => {
        impl $crate::records::Resource for $t {
            const KIND: $crate::store::Kind = $kind;
            const NAME: &'static str = $name;
            fn id(&self) -> &str {
                &self.id
            }
            fn project_id(&self) -> Option<&str> {
                let $s = self;
                $project
            }
            fn name(&self) -> &str {
                &self.name
            }
        }
    };
}
pub(crate) use impl_resource;
