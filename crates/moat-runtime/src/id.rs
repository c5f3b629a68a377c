//! Typed identities: container ID and name, image reference and image
//! ID, isolation.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use moat_image::digest::Digest;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid container ID {0:?}: expected 16 to 64 lowercase hex digits")]
    InvalidId(String),
    #[error("invalid container name {0:?}: use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit")]
    InvalidName(String),
}

/// A container ID: 16 to 64 lowercase hex digits (64 for the sandbox, 16
/// for the vm backend), so always one plain path component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

/// Whether `s` is a container ID (see [`ContainerId`]).
pub fn is_valid_id(s: &str) -> bool {
    (16..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ContainerId {
    pub fn parse(s: &str) -> Result<ContainerId, IdError> {
        if is_valid_id(s) {
            Ok(ContainerId(s.to_string()))
        } else {
            Err(IdError::InvalidId(s.to_string()))
        }
    }

    /// A new random ID: 64 hex digits.
    pub fn generate() -> ContainerId {
        let mut bytes = [0u8; 32];
        let ok =
            File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut bytes));
        if ok.is_err() {
            // Fall back to time and pid: unique enough on one host.
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let seed = t.as_nanos() ^ ((std::process::id() as u128) << 64);
            bytes[..16].copy_from_slice(&seed.to_le_bytes());
        }
        ContainerId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits: the default name and what `moat ps` shows.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl TryFrom<String> for ContainerId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        ContainerId::parse(&s)
    }
}

impl From<ContainerId> for String {
    fn from(id: ContainerId) -> String {
        id.0
    }
}

impl std::ops::Deref for ContainerId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A container name chosen by the user (`--name`) or derived from the ID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerName(String);

impl ContainerName {
    pub fn parse(name: &str) -> Result<ContainerName, IdError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if ok {
            Ok(ContainerName(name.to_string()))
        } else {
            Err(IdError::InvalidName(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ContainerName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        ContainerName::parse(&s)
    }
}

impl From<ContainerName> for String {
    fn from(n: ContainerName) -> String {
        n.0
    }
}

impl std::ops::Deref for ContainerName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// What a user names as a container's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `name[:tag]` in the image store.
    Name(String),
    /// An image ID or unique ID prefix (hex, with or without `sha256:`).
    Id(String),
    /// `name@sha256:<hex>`.
    Digest(String),
    /// A root filesystem directory (`--rootfs`), already checked.
    Rootfs(PathBuf),
}

impl ImageRef {
    /// Classifies a store reference (`--rootfs` directories are built as
    /// [`ImageRef::Rootfs`] by the front end after its checks).
    pub fn parse(reference: &str) -> ImageRef {
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        if reference.contains('@') {
            ImageRef::Digest(reference.to_string())
        } else if let Some(h) = reference.strip_prefix("sha256:") {
            if hex(h) {
                ImageRef::Id(reference.to_string())
            } else {
                ImageRef::Name(reference.to_string())
            }
        } else if reference.len() >= 4
            && hex(reference)
            && reference.bytes().all(|b| !b.is_ascii_uppercase())
        {
            ImageRef::Id(reference.to_string())
        } else {
            ImageRef::Name(reference.to_string())
        }
    }

    /// The reference as the user wrote it (the directory for a rootfs).
    pub fn as_written(&self) -> String {
        match self {
            ImageRef::Name(s) | ImageRef::Id(s) | ImageRef::Digest(s) => s.clone(),
            ImageRef::Rootfs(p) => p.display().to_string(),
        }
    }
}

/// What a container runs, as its records keep it: a stored image by its
/// config digest, or a root filesystem directory (`--rootfs`, an OCI
/// bundle's root). Written and read as the string records have always
/// held, `sha256:<64 hex digits>` or `rootfs:<absolute dir>`, so older
/// `state.json` and `spec.json` files load unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ImageId {
    /// The image config digest of a stored image.
    Digest(Digest),
    /// A root filesystem directory (absolute).
    Rootfs(PathBuf),
}

/// A string that is not an image ID (see [`ImageId`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image ID {0:?}: expected sha256:<64 lowercase hex digits> (an image config digest) or rootfs:<absolute directory>")]
pub struct ImageIdError(pub String);

impl ImageId {
    /// Checks `s`: a digest, or `rootfs:` and an absolute path.
    pub fn parse(s: &str) -> Result<ImageId, ImageIdError> {
        if let Some(dir) = s.strip_prefix("rootfs:") {
            return match dir.starts_with('/') {
                true => Ok(ImageId::Rootfs(PathBuf::from(dir))),
                false => Err(ImageIdError(s.to_string())),
            };
        }
        Digest::parse(s)
            .map(ImageId::Digest)
            .map_err(|_| ImageIdError(s.to_string()))
    }

    /// The digest of a stored image; `None` for a root directory.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            ImageId::Digest(d) => Some(d),
            ImageId::Rootfs(_) => None,
        }
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageId::Digest(d) => f.write_str(d.as_str()),
            ImageId::Rootfs(dir) => write!(f, "rootfs:{}", dir.display()),
        }
    }
}

impl std::str::FromStr for ImageId {
    type Err = ImageIdError;
    fn from_str(s: &str) -> Result<ImageId, ImageIdError> {
        ImageId::parse(s)
    }
}

impl TryFrom<String> for ImageId {
    type Error = ImageIdError;
    fn try_from(s: String) -> Result<ImageId, ImageIdError> {
        ImageId::parse(&s)
    }
}

impl From<ImageId> for String {
    fn from(id: ImageId) -> String {
        id.to_string()
    }
}

impl From<Digest> for ImageId {
    fn from(d: Digest) -> ImageId {
        ImageId::Digest(d)
    }
}

/// The isolation backend a container runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Hardened namespace sandbox on this host's kernel.
    Sandbox,
    /// Own micro-VM with its own minimal kernel.
    Vm,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Sandbox => "sandbox",
            Isolation::Vm => "vm",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_to_64_lowercase_hex() {
        assert!(ContainerId::parse(&"a".repeat(16)).is_ok());
        assert!(ContainerId::parse(&"0".repeat(64)).is_ok());
        for bad in [
            "",
            "abc",
            "../../etc/passwd1",
            &"A".repeat(16),
            &"a".repeat(65),
        ] {
            assert!(ContainerId::parse(bad).is_err(), "{bad:?}");
        }
        let id = ContainerId::generate();
        assert_eq!(id.len(), 64);
        assert_eq!(id.short().len(), 12);
        assert!(serde_json::from_str::<ContainerId>("\"/etc/x0000000000000\"").is_err());
    }

    #[test]
    fn names_are_checked() {
        ContainerName::parse("web-1.a_b").unwrap();
        assert_eq!(
            ContainerName::parse("../x").unwrap_err().to_string(),
            "invalid container name \"../x\": use 1-64 characters from [a-zA-Z0-9_.-], starting with a letter or digit"
        );
        assert!(ContainerName::parse("").is_err());
        assert!(ContainerName::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn image_refs_are_classified() {
        assert_eq!(ImageRef::parse("busybox"), ImageRef::Name("busybox".into()));
        assert_eq!(
            ImageRef::parse("busybox:1.36"),
            ImageRef::Name("busybox:1.36".into())
        );
        assert_eq!(ImageRef::parse("3f2a9c"), ImageRef::Id("3f2a9c".into()));
        assert_eq!(
            ImageRef::parse("sha256:3f2a"),
            ImageRef::Id("sha256:3f2a".into())
        );
        assert_eq!(
            ImageRef::parse("busybox@sha256:00"),
            ImageRef::Digest("busybox@sha256:00".into())
        );
        assert_eq!(ImageRef::parse("cafe"), ImageRef::Id("cafe".into()));
        assert_eq!(ImageRef::parse("caf"), ImageRef::Name("caf".into()));
    }

    #[test]
    fn isolation_serialises_as_before() {
        assert_eq!(serde_json::to_string(&Isolation::Vm).unwrap(), "\"vm\"");
        assert_eq!(
            serde_json::from_str::<Isolation>("\"sandbox\"").unwrap(),
            Isolation::Sandbox
        );
    }
}
