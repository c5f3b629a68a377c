//! `moat image`: import, list, inspect, export and remove images.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use moat_image::import::{ImportOptions, NoProgress, Progress};
use moat_image::{Image, Limits, RemoveOptions, Store, UnpackOptions};

use crate::global::GlobalArgs;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable table or text.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an image from an OCI layout directory, an OCI archive, a
    /// `docker save` archive or a plain rootfs tarball.
    #[command(after_help = "Examples:
  moat dev test-image -o busybox.oci.tar && moat image import busybox.oci.tar
  podman save --format oci-archive -o alpine.tar alpine && moat image import alpine.tar
  moat image import ./layout-dir --name myapp:1.0
  moat image import rootfs.tar.zst --name scratch-rootfs

Layers may be gzip, zstd or uncompressed; from a multi-platform index the
linux/amd64 image is taken. The import is atomic: an interrupted import
leaves nothing visible, and the next moat command removes its leftovers.")]
    Import(ImportArgs),
    /// List images.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show an image's config, layers and sizes.
    #[command(
        after_help = "IMAGE is a name[:tag], an image ID (config digest), a manifest
digest, or a unique prefix of at least 4 hex digits of either."
    )]
    Inspect(InspectArgs),
    /// Remove images (or just a name, when the image has several).
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
    /// Write an image as an OCI archive (readable by skopeo and podman).
    #[command(after_help = "Example:
  moat image export busybox -o busybox.tar && skopeo inspect oci-archive:busybox.tar")]
    Export(ExportArgs),
    /// Remove unnamed images, unreferenced blobs and abandoned staging data.
    Prune(PruneArgs),
    /// The host's trust roots: which image sources and signers it accepts.
    #[command(subcommand)]
    Trust(crate::cmd::trust_roots::TrustCommand),
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Layout directory or archive file to import.
    pub path: PathBuf,
    /// Name for the image (NAME[:TAG], `:latest` when no tag). Defaults to
    /// the name recorded in the archive, else the file name.
    #[arg(long, short = 'n')]
    pub name: Option<String>,
    /// Create device nodes and FIFOs found in layers (refused by default).
    #[arg(long)]
    pub allow_devices: bool,
    /// Apply `security.*` and `trusted.*` extended attributes from layers
    /// (file capabilities, SELinux labels). Skipped by default: a file
    /// capability in the store would be a privileged binary on the host.
    #[arg(long)]
    pub keep_security_xattrs: bool,
    /// Refuse images that unpack to more than this many bytes (a
    /// decompression bomb stops here).
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    pub max_bytes: u64,
    /// Refuse images with more than this many tar entries over all layers.
    #[arg(long, default_value_t = Limits::default().max_entries)]
    pub max_entries: u64,
    /// Output format of the result.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Print image IDs only.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image name, ID or digest (prefix).
    pub image: String,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Images to remove (name, ID or digest prefix). A name of an image that
    /// has several names only removes that name.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove even if a container uses the image.
    #[arg(long, short = 'f')]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Image to export.
    pub image: String,
    /// Output file (written atomically).
    #[arg(long, short = 'o')]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

pub fn run(global: &GlobalArgs, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    if let ImageCommand::Trust(c) = cmd {
        return crate::cmd::trust_roots::run(global, c);
    }
    let store = Store::open(&global.root)?;
    match cmd {
        ImageCommand::Import(a) => import(&store, a),
        ImageCommand::Ls(a) => ls(&store, a),
        ImageCommand::Inspect(a) => inspect(&store, a),
        ImageCommand::Rm(a) => rm(global, &store, a),
        ImageCommand::Export(a) => export(&store, a),
        ImageCommand::Prune(a) => prune(global, &store, a),
        ImageCommand::Trust(_) => unreachable!("handled above"),
    }
}

/// A progress bar on stderr when it is a terminal.
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn phase(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

fn import(store: &Store, a: ImportArgs) -> anyhow::Result<ExitCode> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("template is valid")
            .progress_chars("=> "),
        );
        Bar(pb)
    });
    let opts = ImportOptions {
        name: a.name,
        unpack: UnpackOptions {
            limits: Limits {
                max_bytes: a.max_bytes,
                max_entries: a.max_entries,
            },
            allow_devices: a.allow_devices,
            keep_security_xattrs: a.keep_security_xattrs,
        },
        progress: bar
            .as_ref()
            .map(|b| b as &dyn Progress)
            .unwrap_or(&NoProgress),
        source: None,
        materialise: true,
    };
    let result = store.import(&a.path, &opts);
    if let Some(b) = &bar {
        b.0.finish_and_clear();
    }
    let image = result.context("import failed")?;
    crate::cmd::scan::record_inventory(store, &image);
    crate::cmd::auto::record_at_import(store, &image);
    match a.format {
        Format::Json => println!(
            "{}",
            crate::display::json(serde_json::to_string_pretty(&image)?)
        ),
        Format::Table => outln!(
            "imported {} (image ID {}, manifest {})",
            image.names.join(", "),
            image.config_digest,
            image.manifest_digest
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// 1.9 MB style sizes (decimal, as podman shows them).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ls(store: &Store, a: LsArgs) -> anyhow::Result<ExitCode> {
    let images = store.list()?;
    if a.format == Format::Json {
        println!(
            "{}",
            crate::display::json(serde_json::to_string_pretty(&images)?)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if a.quiet {
        for i in &images {
            println!("{}", i.short_id());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "IMAGE ID".into(),
        "MANIFEST".into(),
        "LAYERS".into(),
        "SIZE".into(),
        "IMPORTED".into(),
    ]];
    for i in &images {
        let names = if i.names.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.names.clone()
        };
        for n in names {
            rows.push([
                n,
                i.short_id().to_string(),
                moat_image::digest::short(&i.manifest_digest).to_string(),
                i.layers.len().to_string(),
                human_size(i.size),
                i.imported.clone(),
            ]);
        }
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == N {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", crate::display::line(line.trim_end()));
    }
}

fn inspect(store: &Store, a: InspectArgs) -> anyhow::Result<ExitCode> {
    let image = store.resolve(&a.image)?;
    let profile = crate::cmd::auto::stored(store, &image);
    if a.format == Format::Json {
        let mut v = serde_json::to_value(&image)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("profile".into(), serde_json::to_value(&profile)?);
        }
        println!(
            "{}",
            crate::display::json(serde_json::to_string_pretty(&v)?)
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_image(&image);
    match &profile {
        Some(p) => {
            let lines = crate::cmd::auto::describe(p);
            outln!("Profile:      {}", lines[0]);
            for l in &lines[1..] {
                outln!("  {l}");
            }
        }
        None => outln!(
            "Profile:      (none stored; `moat profile static {} --all` makes it)",
            a.image
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_image(i: &Image) {
    let c = &i.config;
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            serde_json::to_string(v).unwrap_or_default()
        }
    };
    outln!(
        "Names:        {}",
        if i.names.is_empty() {
            "<none>".into()
        } else {
            i.names.join(", ")
        }
    );
    outln!("Image ID:     {}", i.config_digest);
    outln!("Manifest:     {}", i.manifest_digest);
    outln!(
        "Platform:     {}/{}",
        if c.os.is_empty() { "linux" } else { &c.os },
        if c.architecture.is_empty() {
            "amd64"
        } else {
            &c.architecture
        }
    );
    if let Some(created) = &c.created {
        outln!("Created:      {created}");
    }
    outln!("Imported:     {} from {}", i.imported, i.source);
    outln!("Size:         {} ({} bytes)", human_size(i.size), i.size);
    outln!("Entrypoint:   {}", list(&c.entrypoint));
    outln!("Cmd:          {}", list(&c.cmd));
    outln!(
        "WorkingDir:   {}",
        if c.working_dir.is_empty() {
            "/"
        } else {
            &c.working_dir
        }
    );
    outln!(
        "User:         {}",
        if c.user.is_empty() { "(root)" } else { &c.user }
    );
    outln!("Env:");
    for e in &c.env {
        outln!("  {e}");
    }
    if !c.labels.is_empty() {
        outln!("Labels:");
        for (k, v) in &c.labels {
            outln!("  {k}={v}");
        }
    }
    outln!("Layers:");
    for (n, l) in i.layers.iter().enumerate() {
        outln!(
            "  {:>2}  {}  {:>9}  {}",
            n + 1,
            l.digest,
            human_size(l.size),
            l.media_type
        );
    }
}

fn rm(global: &GlobalArgs, store: &Store, a: RmArgs) -> anyhow::Result<ExitCode> {
    let opts = RemoveOptions {
        force: a.force,
        containers: match a.force {
            true => None,
            false => Some(containers(global)?),
        },
    };
    for reference in &a.images {
        let removed = store.remove(reference, &opts)?;
        for n in &removed.untagged {
            println!("untagged {n}");
        }
        for d in &removed.images {
            println!("removed {d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The containers and their images, read through the runtime core's one
/// reader (an untrusted run root is refused there, naming the fix).
fn containers(global: &GlobalArgs) -> anyhow::Result<Vec<moat_image::ContainerUse>> {
    let run_root = global.records_root();
    let dir = moat_runtime::record::containers_dir(&run_root);
    Ok(moat_runtime::record::read_all(&run_root)?
        .into_iter()
        .map(|r| moat_image::ContainerUse {
            state: dir.join(r.id.as_str()).join("state.json"),
            container: r.name.to_string(),
            image_id: r.image_id.to_string(),
        })
        .collect())
}

fn export(store: &Store, a: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut image = store.resolve(&a.image)?;
    // The name the user gave goes into the archive, when it is one.
    let given = moat_image::store::normalize_name(&a.image).ok();
    if let Some(pos) = image.names.iter().position(|n| Some(n) == given.as_ref()) {
        let n = image.names.remove(pos);
        image.names.insert(0, n);
    }
    store.export(&image, &a.output)?;
    println!(
        "exported {} to {}",
        image
            .names
            .first()
            .map(String::as_str)
            .unwrap_or(image.short_id()),
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn prune(global: &GlobalArgs, store: &Store, a: PruneArgs) -> anyhow::Result<ExitCode> {
    let mut removed = store.prune(Some(&containers(global)?))?;
    // VM build stages and per-run disks whose owner died (`kill -9`).
    removed.staging += moat_vm::rootfs::sweep(&global.root);
    if a.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&removed)?);
    } else {
        println!(
            "removed {} images, {} blobs ({}), {} staging directories",
            removed.images.len(),
            removed.blobs,
            human_size(removed.bytes),
            removed.staging
        );
    }
    Ok(ExitCode::SUCCESS)
}
