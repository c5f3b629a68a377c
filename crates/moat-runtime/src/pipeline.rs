//! The run pipeline, one order for every front end:
//!
//! authorise and audit → compile → resolve the image → gate on
//! vulnerabilities → merge the process settings → pick the backend.
//!
//! The policy is loaded once ([`load_policy`]) and that one object is
//! what is authorised, compiled and gated: the gate never reloads it from
//! its path (which could have changed in between). The steps that need
//! the front end's context (who is asking, where the RBAC file, image
//! store and advisory data are, how notices are shown) are supplied
//! through [`Steps`].

use std::path::{Path, PathBuf};

use anyhow::bail;
use moat_policy::plan::{IsolationRequirement, MountPlan};
use moat_policy::rbac::{Decision, Request};
use moat_policy::{Plan, Policy, ProcessSpec};

use crate::id::{ContainerId, ContainerName, ImageId, ImageRef, Isolation};
use crate::process::{merge_process, Ids, ImageDefaults, ProcessArgs};

/// The backend a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedIsolation {
    Sandbox,
    Vm,
    /// `vm` where a working accelerator exists (or the policy demands it),
    /// else `sandbox`.
    Auto,
}

/// A resolved image: where its root is and what its config says.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// `sha256:<hex>`, or `rootfs:<dir>` for a root filesystem directory.
    pub image_id: ImageId,
    pub rootfs: PathBuf,
    pub defaults: ImageDefaults,
    /// The image config's `Volumes` (Docker's `VOLUME`), by path.
    pub declared_volumes: Vec<String>,
}

/// What a front end asks to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The policy, loaded once ([`load_policy`]).
    pub policy: Policy,
    pub image: ImageRef,
    pub process: ProcessArgs,
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub isolation: RequestedIsolation,
    /// `-v` and `--tmpfs`, checked against the policy's grants.
    pub mounts: MountArgs,
}

/// The mounts a front end asks for beyond the policy's own.
#[derive(Debug, Clone, Default)]
pub struct MountArgs {
    pub volumes: Vec<crate::volumes::VolumeArg>,
    pub tmpfs: Vec<crate::volumes::TmpfsArg>,
    /// The state root whose volume store holds named volumes.
    pub state_root: PathBuf,
    /// The run root; with the state root, never mounted into a container.
    pub run_root: PathBuf,
}

/// The steps that need the front end's context.
pub trait Steps {
    /// Authorises `policy` (plus `extra`) for the invoking user and
    /// audits the decision.
    fn authorize(&mut self, policy: &Policy, extra: &[Request]) -> anyhow::Result<Decision>;
    /// Resolves a store image (never called for [`ImageRef::Rootfs`])
    /// for a run under `policy`.
    fn resolve_image(&mut self, image: &ImageRef, policy: &Policy)
        -> anyhow::Result<ResolvedImage>;
    /// The policy narrowed to `image`, for policies that depend on the
    /// image (`auto`); `None` keeps the policy as authorised. Narrowing may
    /// only remove grants: the authorised policy is the widest.
    fn narrow(
        &mut self,
        _policy: &Policy,
        _image: &ResolvedImage,
    ) -> anyhow::Result<Option<Policy>> {
        Ok(None)
    }
    /// Refuses an image with vulnerabilities `policy` does not accept.
    fn vulnerability_gate(&mut self, policy: &Policy, image: &ResolvedImage) -> anyhow::Result<()>;
    /// Resolves a user spec (empty for root) inside `rootfs`.
    fn resolve_user(&mut self, rootfs: &Path, user: &str) -> anyhow::Result<Ids>;
    /// Whether `auto` should pick the vm backend.
    fn vm_accelerator_works(&mut self) -> bool;
}

/// A container ready for its backend.
#[derive(Debug, Clone)]
pub struct Ready {
    pub id: ContainerId,
    pub name: ContainerName,
    pub image: ResolvedImage,
    pub process: ProcessSpec,
    pub plan: Plan,
    /// The policy the plan was compiled from (narrowed where it depends on
    /// the image).
    pub policy: Policy,
    pub isolation: Isolation,
    /// Lines for stderr before the container starts (declared volumes it
    /// will not get, see [`crate::image_volumes`]).
    pub notices: Vec<String>,
    /// The anonymous volumes of the plan's mounts (the image's declared
    /// volumes), for the front end to create.
    pub anonymous_volumes: Vec<String>,
}

/// The outcome of [`prepare`].
#[derive(Debug)]
pub enum Prepared {
    /// The policy was refused for the invoking user (audited).
    Refused {
        policy: String,
        decision: Decision,
    },
    Ready(Box<Ready>),
}

/// The policy to run under: a file or a built-in name, else the built-in
/// `baseline` policy.
pub fn load_policy(policy: Option<&Path>) -> anyhow::Result<Policy> {
    Ok(match policy {
        Some(p) => Policy::resolve(&p.to_string_lossy())?,
        None => Policy::builtin("baseline")?,
    })
}

/// Runs the pipeline up to the backend.
pub fn prepare(req: RunRequest, steps: &mut dyn Steps) -> anyhow::Result<Prepared> {
    let policy = &req.policy;
    // A `--rootfs` directory is a grant like a volume: authorised before
    // anything starts.
    let mut extra = Vec::new();
    if let ImageRef::Rootfs(dir) = &req.image {
        extra.push(Request::Rootfs(dir.display().to_string()));
    }
    // A volume is authorised both as written and as resolved, so that a
    // symbolic link under a granted prefix does not lead elsewhere.
    for v in &policy.spec.filesystem.volumes {
        if let Ok(real) = std::fs::canonicalize(&v.source) {
            if real != Path::new(&v.source) {
                extra.push(Request::Volume(real.display().to_string()));
            }
        }
    }
    // `-v` and `--tmpfs` only narrow the policy's grants; what they name
    // is authorised with the policy.
    let store = crate::volume_store::Store::new(&req.mounts.state_root);
    let state: Vec<&Path> = [&req.mounts.state_root, &req.mounts.run_root]
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::as_path)
        .collect();
    let (flag_mounts, flag_requests) = crate::volumes::check_in(
        policy,
        &req.mounts.volumes,
        &req.mounts.tmpfs,
        &|name| store.dir_of(name).display().to_string(),
        &state,
    )?;
    extra.extend(flag_requests);
    // Authorise before anything else (no image is even materialised for a
    // refused policy); every decision is audited.
    let decision = steps.authorize(policy, &extra)?;
    if !decision.allowed {
        return Ok(Prepared::Refused {
            policy: policy.name.clone(),
            decision,
        });
    }
    moat_policy::compile(policy)?;

    let image = match &req.image {
        ImageRef::Rootfs(rootfs) => ResolvedImage {
            image_id: ImageId::Rootfs(rootfs.clone()),
            rootfs: rootfs.clone(),
            defaults: ImageDefaults::default(),
            declared_volumes: Vec::new(),
        },
        other => steps.resolve_image(other, policy)?,
    };
    // The object authorised is the object gated and compiled, unless the
    // policy depends on the image (`auto`) and was narrowed to it.
    let narrowed = steps.narrow(policy, &image)?;
    let policy = narrowed.as_ref().unwrap_or(&req.policy);
    let mut plan = moat_policy::compile(policy)?;
    crate::volumes::merge(&mut plan.mounts, flag_mounts);
    steps.vulnerability_gate(policy, &image)?;

    let id = ContainerId::generate();
    let name = ContainerName::parse(req.name.as_deref().unwrap_or(id.short()))?;
    let hostname = req.hostname.clone().unwrap_or_else(|| name.to_string());
    let rootfs = image.rootfs.clone();
    let process = merge_process(&image.defaults, &req.process, &hostname, |user| {
        steps.resolve_user(&rootfs, user)
    })?;
    let isolation = pick_isolation(req.isolation, &plan, || steps.vm_accelerator_works())?;
    let anonymous = crate::image_volumes::anonymous(
        policy,
        &plan,
        &image.declared_volumes,
        id.as_str(),
        &|name| store.dir_of(name).display().to_string(),
    );
    let anonymous_volumes = anonymous
        .iter()
        .filter_map(|m| match m {
            MountPlan::Named { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    plan.mounts.extend(anonymous);
    let notices = crate::image_volumes::notices(&plan, &image.declared_volumes);
    Ok(Prepared::Ready(Box::new(Ready {
        id,
        name,
        image,
        process,
        plan,
        policy: policy.clone(),
        isolation,
        notices,
        anonymous_volumes,
    })))
}

/// The backend for `requested` under `plan`'s isolation requirement.
pub fn pick_isolation(
    requested: RequestedIsolation,
    plan: &Plan,
    accelerator_works: impl FnOnce() -> bool,
) -> anyhow::Result<Isolation> {
    use RequestedIsolation as R;
    Ok(match (requested, plan.isolation) {
        (R::Sandbox, IsolationRequirement::Vm) => bail!(
            "policy {:?} requires vm isolation; drop --isolation sandbox",
            plan.policy_name
        ),
        (R::Vm, IsolationRequirement::Sandbox) => bail!(
            "policy {:?} requires sandbox isolation; drop --isolation vm",
            plan.policy_name
        ),
        (R::Auto, IsolationRequirement::Vm) | (R::Vm, _) => Isolation::Vm,
        // A policy that asks for the sandbox gets it under `auto` too.
        (R::Auto, IsolationRequirement::Sandbox) => Isolation::Sandbox,
        (R::Auto, _) if accelerator_works() => Isolation::Vm,
        _ => Isolation::Sandbox,
    })
}

#[cfg(test)]
mod tests;
