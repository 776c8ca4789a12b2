//! Image members: projects a `shared` image is shared with, and whether they accepted it
//! (Glance's member statuses). A member sees the image by id at once; it is listed to the
//! member once accepted.

use serde::{Deserialize, Serialize};

use super::{Image, Visibility};
use crate::error::{Error, Result};
use crate::events::event;
use crate::identity::Project;
use crate::policy::{authorize, Action, Context};
use crate::records::{list, load, to_record, Resource};
use crate::store::{Kind, Op, StoreError};
use crate::Cloud;

/// A member's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Not answered yet.
    Pending,
    /// Listed to the member.
    Accepted,
    /// Not listed.
    Rejected,
}

/// A project an image is shared with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMember {
    /// `image:project`.
    pub id: String,
    /// The image.
    pub image_id: String,
    /// The member project.
    pub member_id: String,
    /// Its answer.
    pub status: MemberStatus,
}

impl Resource for ImageMember {
    const KIND: Kind = Kind::ImageMember;
    const NAME: &'static str = "image member";
    fn id(&self) -> &str {
        &self.id
    }
    fn project_id(&self) -> Option<&str> {
        Some(&self.member_id)
    }
    fn name(&self) -> &str {
        &self.image_id
    }
}

/// The id of `project`'s membership of `image`.
pub(crate) fn member_id(image: &str, project: &str) -> String {
    format!("{image}:{project}")
}

impl Cloud {
    /// Shares one of the caller's `shared` images with `project_id` (status `pending`).
    pub fn add_image_member(
        &self,
        ctx: &Context,
        image_id: &str,
        project_id: &str,
    ) -> Result<ImageMember> {
        authorize(ctx, Action::ImageMemberAdd)?;
        let (img, _): (Image, _) = self.load_own_image(ctx, image_id)?;
        if img.visibility != Visibility::Shared {
            return Err(Error::Conflict {
                kind: "image",
                id: image_id.into(),
                reason: "only shared images have members".into(),
            });
        }
        load::<Project>(self.store(), project_id)?
            .ok_or_else(|| Error::not_found("project", project_id))?;
        let m = ImageMember {
            id: member_id(image_id, project_id),
            image_id: image_id.into(),
            member_id: project_id.into(),
            status: MemberStatus::Pending,
        };
        self.store()
            .apply(&[
                Op::Insert(to_record(&m, 1)),
                event(
                    ctx,
                    &img.owner,
                    "image.member.add",
                    "image",
                    image_id,
                    serde_json::json!({"member": project_id}),
                ),
            ])
            .map_err(|e| match e {
                StoreError::Exists { .. } => Error::Conflict {
                    kind: "image member",
                    id: m.id.clone(),
                    reason: "already a member".into(),
                },
                e => e.into(),
            })?;
        Ok(m)
    }

    /// The members of an image: all of them for its owner, only the caller's own
    /// membership for a member.
    pub fn list_image_members(&self, ctx: &Context, image_id: &str) -> Result<Vec<ImageMember>> {
        authorize(ctx, Action::ImageMemberList)?;
        let (img, _) = self.load_image(ctx, image_id)?;
        let all =
            list::<ImageMember>(self.store(), None, Some(image_id))?.into_iter().map(|(m, _)| m);
        Ok(if ctx.owns(&img.owner) {
            all.collect()
        } else {
            all.filter(|m| m.member_id == ctx.project_id()).collect()
        })
    }

    /// The caller's project answers an image shared with it.
    pub fn set_image_member_status(
        &self,
        ctx: &Context,
        image_id: &str,
        status: MemberStatus,
    ) -> Result<()> {
        authorize(ctx, Action::ImageMemberUpdate)?;
        let id = member_id(image_id, ctx.project_id());
        let (mut m, version) = load::<ImageMember>(self.store(), &id)?
            .ok_or_else(|| Error::not_found("image", image_id))?;
        m.status = status;
        self.store().apply(&[
            Op::Update(to_record(&m, version)),
            event(
                ctx,
                ctx.project_id(),
                "image.member.update",
                "image",
                image_id,
                serde_json::json!({"status": status}),
            ),
        ])?;
        Ok(())
    }

    /// Stops sharing an image with `project_id`.
    pub fn remove_image_member(
        &self,
        ctx: &Context,
        image_id: &str,
        project_id: &str,
    ) -> Result<()> {
        authorize(ctx, Action::ImageMemberRemove)?;
        let (img, _) = self.load_own_image(ctx, image_id)?;
        let id = member_id(image_id, project_id);
        self.store()
            .apply(&[
                Op::Delete(Kind::ImageMember, id.clone()),
                event(
                    ctx,
                    &img.owner,
                    "image.member.remove",
                    "image",
                    image_id,
                    serde_json::json!({"member": project_id}),
                ),
            ])
            .map_err(|e| match e {
                StoreError::Missing { .. } => Error::not_found("image member", id),
                e => e.into(),
            })
    }
}
