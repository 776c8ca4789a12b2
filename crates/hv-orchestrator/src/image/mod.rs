//! Images (Glance's job): records with Glance's states, visibilities, members and free-form
//! properties; the bytes live in an hv-storage directory pool, one volume per image named by
//! its id ([`upload`] streams them in and checks them, [`check`] decides what is accepted).
//!
//! Visibility: `private` (the owner only), `shared` (the owner and member projects; Glance's
//! default), `public` (everyone; setting it is the admin's), `community` (anyone who knows
//! the id; not listed to others). An image nobody may see answers like a missing one.
//! An image in use (an instance disk, [`Cloud::use_image`]) or `protected` cannot be deleted,
//! and the pool itself refuses to delete a volume another volume is backed by.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::event;
use crate::ids::{now, uuid, Timestamp};
use crate::policy::{authorize, Action, Context};
use crate::records::{list, load, to_record, Resource};
use crate::store::{Kind, Op, StoreError};
use crate::{check_name, Cloud};

pub mod check;
pub mod members;
pub mod upload;

pub use members::{ImageMember, MemberStatus};

/// Glance's image states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageStatus {
    /// Made, no data yet.
    Queued,
    /// Data being uploaded.
    Saving,
    /// Usable.
    Active,
    /// The upload failed or was refused (see `fault`).
    Killed,
    /// Deleted.
    Deleted,
}

/// Who may see an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// The owner only.
    Private,
    /// The owner and its member projects.
    Shared,
    /// Everyone.
    Public,
    /// Anyone with the id.
    Community,
}

/// The disk formats hv takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Raw disk bytes.
    Raw,
    /// qcow2, standalone.
    Qcow2,
    /// A kernel (Amazon kernel image): ELF or bzImage.
    Aki,
    /// A ramdisk (Amazon ramdisk image).
    Ari,
    /// A raw disk booted by direct kernel boot (`kernel_id`, `ramdisk_id`, `os_command_line`).
    Ami,
}

impl DiskFormat {
    /// Glance's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Aki => "aki",
            DiskFormat::Ari => "ari",
            DiskFormat::Ami => "ami",
        }
    }
}

impl FromStr for DiskFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<DiskFormat> {
        [DiskFormat::Raw, DiskFormat::Qcow2, DiskFormat::Aki, DiskFormat::Ari, DiskFormat::Ami]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "disk_format",
                    format!("'{s}' is not one of raw, qcow2, aki, ari, ami"),
                )
            })
    }
}

/// An image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// UUID.
    pub id: String,
    /// Name (not unique).
    pub name: String,
    /// The owning project.
    pub owner: String,
    /// State.
    pub status: ImageStatus,
    /// Visibility.
    pub visibility: Visibility,
    /// Disk format.
    pub disk_format: DiskFormat,
    /// Container format (`bare`, `ami`, ...; recorded, not interpreted).
    pub container_format: String,
    /// Bytes uploaded.
    pub size: Option<u64>,
    /// Guest-visible size.
    pub virtual_size: Option<u64>,
    /// MD5 of the data, hex (Glance's `checksum`).
    pub checksum: Option<String>,
    /// `sha512` once uploaded.
    pub os_hash_algo: Option<String>,
    /// SHA-512 of the data, hex.
    pub os_hash_value: Option<String>,
    /// Minimum disk, GiB.
    pub min_disk: u64,
    /// Minimum RAM, MiB.
    pub min_ram: u64,
    /// A protected image cannot be deleted.
    pub protected: bool,
    /// Free-form properties (`kernel_id`, `os_command_line`, `owner_specified.*`, ...).
    pub properties: BTreeMap<String, String>,
    /// Glance's tags: a set of free-form strings (records made before tags have none).
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Why the image was killed.
    pub fault: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl Resource for Image {
    const KIND: Kind = Kind::Image;
    const NAME: &'static str = "image";
    fn id(&self) -> &str {
        &self.id
    }
    fn project_id(&self) -> Option<&str> {
        Some(&self.owner)
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// Something holding an image (an instance's disk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUse {
    /// The consumer's id.
    pub id: String,
    /// The image.
    pub image_id: String,
    /// The consumer's project.
    pub project_id: String,
}

impl Resource for ImageUse {
    const KIND: Kind = Kind::ImageUse;
    const NAME: &'static str = "image use";
    fn id(&self) -> &str {
        &self.id
    }
    fn project_id(&self) -> Option<&str> {
        Some(&self.project_id)
    }
    fn name(&self) -> &str {
        &self.image_id
    }
}

/// What a new image record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewImage {
    /// Name.
    pub name: String,
    /// Disk format.
    pub disk_format: DiskFormat,
    /// Container format (`bare` by default).
    pub container_format: String,
    /// Visibility (`shared` by default, as Glance).
    pub visibility: Visibility,
    /// Properties.
    pub properties: BTreeMap<String, String>,
    /// Protected from deletion.
    pub protected: bool,
    /// Tags.
    pub tags: BTreeSet<String>,
}

impl NewImage {
    /// A `bare`, `shared` image of `format`.
    pub fn new(name: &str, format: DiskFormat) -> NewImage {
        NewImage {
            name: name.into(),
            disk_format: format,
            container_format: "bare".into(),
            visibility: Visibility::Shared,
            properties: BTreeMap::new(),
            protected: false,
            tags: BTreeSet::new(),
        }
    }
}

/// A change to an image (`None` and empty collections keep what is there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageUpdate {
    /// A new name.
    pub name: Option<String>,
    /// A new visibility (`public` needs the admin).
    pub visibility: Option<Visibility>,
    /// Protect or unprotect.
    pub protected: Option<bool>,
    /// Properties to set.
    pub set: BTreeMap<String, String>,
    /// Properties to remove.
    pub remove: Vec<String>,
    /// Changes to the tags, in order (Glance's JSON-patch operations on `/tags`).
    pub tags: Vec<TagPatch>,
}

/// A JSON-patch operation on an image's tags, seen as the sorted list the API shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagPatch {
    /// `add`/`replace` `/tags`: these tags and no others.
    Set(BTreeSet<String>),
    /// `add` `/tags/N` (`None`: `/tags/-`, the end).
    Add(Option<usize>, String),
    /// `replace` `/tags/N`.
    Replace(usize, String),
    /// `remove` `/tags/N`.
    Remove(usize),
    /// Removes the tag by name (`DELETE /v2/images/{id}/tags/{tag}`); not found when absent.
    Drop(String),
}

/// Applies `ops` to `tags` as JSON patch does to a list; a bad index is refused.
fn patch_tags(tags: &BTreeSet<String>, ops: &[TagPatch]) -> Result<BTreeSet<String>> {
    let mut list: Vec<String> = tags.iter().cloned().collect();
    let bad = |i: usize| Error::invalid("tags", format!("no tag at index {i}"));
    for op in ops {
        match op {
            TagPatch::Set(t) => list = t.iter().cloned().collect(),
            TagPatch::Add(None, t) => list.push(t.clone()),
            TagPatch::Add(Some(i), t) if *i <= list.len() => list.insert(*i, t.clone()),
            TagPatch::Replace(i, t) if *i < list.len() => list[*i] = t.clone(),
            TagPatch::Remove(i) if *i < list.len() => {
                list.remove(*i);
            }
            TagPatch::Drop(t) => match list.iter().position(|x| x == t) {
                Some(i) => {
                    list.remove(i);
                }
                None => return Err(Error::not_found("image tag", t)),
            },
            TagPatch::Add(Some(i), _) | TagPatch::Replace(i, _) | TagPatch::Remove(i) => {
                return Err(bad(*i))
            }
        }
    }
    let set: BTreeSet<String> = list.into_iter().collect();
    check_tags(&set)?;
    Ok(set)
}

/// Glance's default `image_tag_quota`.
pub const MAX_TAGS: usize = 128;

fn check_tags(tags: &BTreeSet<String>) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid("tags", format!("at most {MAX_TAGS}")));
    }
    tags.iter().try_for_each(|t| check_name("tag", t))
}

/// Properties reserved for Glance's own fields.
const RESERVED: &[&str] = &[
    "id",
    "name",
    "owner",
    "status",
    "visibility",
    "disk_format",
    "container_format",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "created_at",
    "updated_at",
    "protected",
    "min_disk",
    "min_ram",
    "file",
    "self",
    "schema",
    "locations",
    "direct_url",
];

fn check_properties(p: &BTreeMap<String, String>) -> Result<()> {
    if p.len() > 128 {
        return Err(Error::invalid("properties", "at most 128"));
    }
    for (k, v) in p {
        check_name("property name", k)?;
        if RESERVED.contains(&k.as_str()) {
            return Err(Error::invalid("properties", format!("'{k}' is a reserved attribute")));
        }
        if v.len() > 65535 {
            return Err(Error::invalid("properties", format!("the value of '{k}' is too long")));
        }
    }
    Ok(())
}

impl Cloud {
    /// Makes an image record (`queued`) in the caller's project.
    pub fn create_image(&self, ctx: &Context, new: &NewImage) -> Result<Image> {
        authorize(ctx, Action::ImageCreate)?;
        check_name("image name", &new.name)?;
        check_name("container_format", &new.container_format)?;
        check_properties(&new.properties)?;
        check_tags(&new.tags)?;
        if new.visibility == Visibility::Public {
            authorize(ctx, Action::ImagePublish)?;
        }
        let t = now();
        let img = Image {
            id: uuid(),
            name: new.name.clone(),
            owner: ctx.project_id().into(),
            status: ImageStatus::Queued,
            visibility: new.visibility,
            disk_format: new.disk_format,
            container_format: new.container_format.clone(),
            size: None,
            virtual_size: None,
            checksum: None,
            os_hash_algo: None,
            os_hash_value: None,
            min_disk: 0,
            min_ram: 0,
            protected: new.protected,
            properties: new.properties.clone(),
            tags: new.tags.clone(),
            fault: None,
            created_at: t,
            updated_at: t,
        };
        self.store().apply(&[
            Op::Insert(to_record(&img, 1)),
            event(
                ctx,
                &img.owner,
                "image.create",
                "image",
                &img.id,
                serde_json::json!({"name": img.name, "disk_format": img.disk_format}),
            ),
        ])?;
        Ok(img)
    }

    /// True when the caller may see `img`.
    fn image_visible(&self, ctx: &Context, img: &Image) -> Result<bool> {
        Ok(ctx.owns(&img.owner)
            || matches!(img.visibility, Visibility::Public | Visibility::Community)
            || (img.visibility == Visibility::Shared
                && load::<ImageMember>(
                    self.store(),
                    &members::member_id(&img.id, ctx.project_id()),
                )?
                .is_some()))
    }

    /// An image and its version, if the caller may see it.
    pub(crate) fn load_image(&self, ctx: &Context, id: &str) -> Result<(Image, i64)> {
        match load::<Image>(self.store(), id)? {
            Some((img, v)) if self.image_visible(ctx, &img)? => Ok((img, v)),
            _ => Err(Error::not_found("image", id)),
        }
    }

    /// An image and its version, if the caller owns it (or is admin); otherwise not found,
    /// even for an image it can see but not change.
    pub(crate) fn load_own_image(&self, ctx: &Context, id: &str) -> Result<(Image, i64)> {
        match load::<Image>(self.store(), id)? {
            Some((img, v)) if ctx.owns(&img.owner) => Ok((img, v)),
            Some((img, _)) if self.image_visible(ctx, &img)? => {
                Err(Error::Forbidden { action: Action::ImageUpdate })
            }
            _ => Err(Error::not_found("image", id)),
        }
    }

    /// One image.
    pub fn get_image(&self, ctx: &Context, id: &str) -> Result<Image> {
        authorize(ctx, Action::ImageGet)?;
        Ok(self.load_image(ctx, id)?.0)
    }

    /// The images the caller sees listed: its own, public ones, and shared ones whose
    /// membership it accepted (an admin sees all), optionally by name.
    pub fn list_images(&self, ctx: &Context, name: Option<&str>) -> Result<Vec<Image>> {
        authorize(ctx, Action::ImageList)?;
        let accepted: std::collections::HashSet<String> = if ctx.is_admin() {
            Default::default()
        } else {
            list::<ImageMember>(self.store(), Some(ctx.project_id()), None)?
                .into_iter()
                .filter(|(m, _)| m.status == MemberStatus::Accepted)
                .map(|(m, _)| m.image_id)
                .collect()
        };
        Ok(list::<Image>(self.store(), None, name)?
            .into_iter()
            .map(|(i, _)| i)
            .filter(|i| {
                ctx.owns(&i.owner)
                    || i.visibility == Visibility::Public
                    || (i.visibility == Visibility::Shared && accepted.contains(&i.id))
            })
            .collect())
    }

    /// Changes an image's name, visibility, protection and properties.
    pub fn update_image(&self, ctx: &Context, id: &str, change: &ImageUpdate) -> Result<Image> {
        let ImageUpdate { name, visibility, protected, set, remove, tags } = change;
        let (name, visibility, protected) = (name.as_deref(), *visibility, *protected);
        authorize(ctx, Action::ImageUpdate)?;
        if visibility == Some(Visibility::Public) {
            authorize(ctx, Action::ImagePublish)?;
        }
        check_properties(set)?;
        let (mut img, version) = self.load_own_image(ctx, id)?;
        if let Some(n) = name {
            check_name("image name", n)?;
            img.name = n.into();
        }
        img.visibility = visibility.unwrap_or(img.visibility);
        img.protected = protected.unwrap_or(img.protected);
        img.properties.extend(set.clone());
        for k in remove {
            img.properties.remove(k);
        }
        if !tags.is_empty() {
            img.tags = patch_tags(&img.tags, tags)?;
        }
        img.updated_at = now();
        self.store()
            .apply(&[
                Op::Update(to_record(&img, version)),
                event(ctx, &img.owner, "image.update", "image", id, serde_json::json!({})),
            ])
            .map_err(|e| match e {
                StoreError::Stale { .. } => Error::Conflict {
                    kind: "image",
                    id: id.into(),
                    reason: "changed concurrently; retry".into(),
                },
                e => e.into(),
            })?;
        Ok(img)
    }

    /// Adds `tag` to an image the caller owns (Glance's `PUT /v2/images/{id}/tags/{tag}`;
    /// adding a tag it has changes nothing).
    pub fn add_image_tag(&self, ctx: &Context, id: &str, tag: &str) -> Result<Image> {
        let add = TagPatch::Add(None, tag.to_string());
        self.update_image(ctx, id, &ImageUpdate { tags: vec![add], ..Default::default() })
    }

    /// Removes `tag` from an image the caller owns; not found when the image lacks it (as
    /// Glance's `DELETE /v2/images/{id}/tags/{tag}`).
    pub fn remove_image_tag(&self, ctx: &Context, id: &str, tag: &str) -> Result<Image> {
        let remove = TagPatch::Drop(tag.to_string());
        self.update_image(ctx, id, &ImageUpdate { tags: vec![remove], ..Default::default() })
    }

    /// Deletes an image and its data; refused while it is protected or in use.
    pub fn delete_image(&self, ctx: &Context, id: &str) -> Result<()> {
        authorize(ctx, Action::ImageDelete)?;
        let (img, _) = self.load_own_image(ctx, id)?;
        let conflict = |reason: String| Error::Conflict { kind: "image", id: id.into(), reason };
        if img.protected {
            return Err(conflict("the image is protected".into()));
        }
        if let Some((u, _)) = list::<ImageUse>(self.store(), None, Some(id))?.pop() {
            return Err(conflict(format!("the image is in use by '{}'", u.id)));
        }
        if img.status == ImageStatus::Active {
            // The pool refuses while another volume is backed by this one.
            self.image_pool_delete(id)?;
        }
        let mut ops = vec![
            Op::Delete(Kind::Image, id.into()),
            event(ctx, &img.owner, "image.delete", "image", id, serde_json::json!({})),
        ];
        for (m, _) in list::<ImageMember>(self.store(), None, Some(id))? {
            ops.push(Op::Delete(Kind::ImageMember, m.id));
        }
        self.store().apply(&ops)?;
        Ok(())
    }

    /// Records that `consumer_id` (an instance's disk) uses an active image, so it cannot be
    /// deleted until [`Cloud::release_image`].
    pub fn use_image(&self, ctx: &Context, image_id: &str, consumer_id: &str) -> Result<()> {
        authorize(ctx, Action::ImageUse)?;
        check_name("consumer id", consumer_id)?;
        let (img, _) = self.load_image(ctx, image_id)?;
        if img.status != ImageStatus::Active {
            return Err(Error::Conflict {
                kind: "image",
                id: image_id.into(),
                reason: "the image is not active".into(),
            });
        }
        let u = ImageUse {
            id: consumer_id.into(),
            image_id: image_id.into(),
            project_id: ctx.project_id().into(),
        };
        self.store().apply(&[Op::Insert(to_record(&u, 1))]).map_err(|e| match e {
            StoreError::Exists { .. } => Error::Conflict {
                kind: "image use",
                id: consumer_id.into(),
                reason: "already recorded".into(),
            },
            e => e.into(),
        })
    }

    /// Ends `consumer_id`'s use of its image.
    pub fn release_image(&self, ctx: &Context, consumer_id: &str) -> Result<()> {
        authorize(ctx, Action::ImageUse)?;
        match load::<ImageUse>(self.store(), consumer_id)? {
            Some((u, _)) if ctx.owns(&u.project_id) => {
                Ok(self.store().apply(&[Op::Delete(Kind::ImageUse, consumer_id.into())])?)
            }
            _ => Err(Error::not_found("image use", consumer_id)),
        }
    }
}
