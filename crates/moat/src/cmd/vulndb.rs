//! `moat vulndb`: import OSV advisories and show the advisory database status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use moat_scan::db::VulnDb;
use moat_scan::store;

use crate::global::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum VulndbCommand {
    /// Import OSV advisories, then re-match every stored image inventory
    /// and report newly affected images and their running containers.
    #[command(after_help = "Examples:\n  \
        moat vulndb import ~/osv/Debian/all.zip\n  \
        moat vulndb import ./advisories/          # *.json and *.zip, recursively\n\n\
        Records whose content did not change since the last import are skipped;\n\
        withdrawn records are removed. New findings are appended as JSON lines to\n\
        ROOT/scan/alerts.log.")]
    Import {
        /// An OSV JSON file, an OSV `all.zip`, or a directory of either.
        path: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Download OSV's per-ecosystem exports when they changed, import them
    /// and re-match (as `import` does).
    #[command(
        after_help = "Example:\n  moat vulndb update --ecosystem Debian --ecosystem PyPI --watch 6h"
    )]
    Update(crate::cmd::vulndb_update::UpdateArgs),
    /// Show what advisories are loaded and how old they are.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn db_dir(global: &GlobalArgs) -> PathBuf {
    global.root.join("vulndb")
}

pub fn run(global: &GlobalArgs, cmd: VulndbCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        VulndbCommand::Import { path, format } => {
            let out = import_and_rematch(global, &path)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Table => print_import(&out),
            }
            Ok(ExitCode::SUCCESS)
        }
        VulndbCommand::Update(a) => {
            crate::cmd::vulndb_update::update(global, a)?;
            Ok(ExitCode::SUCCESS)
        }
        VulndbCommand::Status { format } => {
            let db = VulnDb::open(&db_dir(global))?;
            let st = db.status()?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&st)?),
                Format::Table => {
                    println!("database:      {}", st.path.display());
                    println!("advisories:    {}", st.advisories);
                    println!("package rows:  {}", st.affected_packages);
                    let age = st
                        .last_import_unix
                        .map(|t| format!(" ({} ago)", human_age(moat_scan::util::unix_now() - t)))
                        .unwrap_or_default();
                    println!(
                        "last import:   {}{age}",
                        st.last_import.as_deref().unwrap_or("never")
                    );
                    println!(
                        "last source:   {}",
                        st.last_source.as_deref().unwrap_or("-")
                    );
                    println!(
                        "newest record: {}",
                        st.newest_modified.as_deref().unwrap_or("-")
                    );
                    println!(
                        "GIT ranges skipped at last import: {}",
                        st.git_ranges_skipped
                    );
                    println!("ecosystems:");
                    for (e, n) in &st.ecosystems {
                        println!("  {e:<24} {n}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[derive(Debug, serde::Serialize)]
pub struct ImportOutcome {
    pub source: PathBuf,
    pub import: moat_scan::db::ImportReport,
    pub images_rematched: usize,
    pub alerts: Vec<store::Alert>,
}

/// Import `path` and re-match every stored inventory.
pub fn import_and_rematch(global: &GlobalArgs, path: &Path) -> anyhow::Result<ImportOutcome> {
    let tty = std::io::stderr().is_terminal();
    let mut progress = |n: u64| {
        if tty {
            eprint!("\rimporting advisories: {n} records");
        }
    };
    // A failed import changes nothing: no empty database is left behind.
    let (db, import) = VulnDb::import_into(&db_dir(global), path, &mut progress)?;
    if tty {
        eprintln!();
    }
    // Inventories of images removed since: drop them, they cannot alert.
    if let Ok(images) = moat_image::Store::open(&global.root) {
        for s in store::list(&global.root)? {
            if matches!(
                images.resolve(&s.image_id),
                Err(moat_image::StoreError::NotFound { .. })
            ) {
                store::remove(&global.root, &s.image_id)?;
            }
        }
    }
    // Images stored without an inventory (pulled, not yet scanned or
    // run): take it now, so that every stored image is matched.
    if let Ok(images) = moat_image::Store::open(&global.root) {
        for image in images.list()? {
            if store::load(&global.root, &image.config_digest)?.is_none() {
                crate::cmd::scan::record_inventory(&images, &image);
            }
        }
    }
    let images = store::list(&global.root)?.len();
    // The containers, read through the runtime core's one reader; the
    // advisories are imported already, so an untrusted run root only
    // costs the list of running containers (with a warning).
    let records = moat_runtime::record::read_all(&global.records_root()).unwrap_or_else(|e| {
        eprintln!("moat: warning: {e}; running containers are not listed in alerts");
        Vec::new()
    });
    let containers: Vec<store::ContainerImage> = records
        .into_iter()
        .map(|r| store::ContainerImage {
            container: store::ContainerRef {
                id: r.id.to_string(),
                name: r.name.to_string(),
            },
            image_id: r.image_id.to_string(),
        })
        .collect();
    let alerts = store::rematch_all(&global.root, &containers, &db)
        .context("re-matching stored image inventories")?;
    Ok(ImportOutcome {
        source: path.to_path_buf(),
        import,
        images_rematched: images,
        alerts,
    })
}

pub fn print_import(o: &ImportOutcome) {
    let r = &o.import;
    println!(
        "imported {} records from {}: {} added, {} updated, {} unchanged, {} withdrawn",
        r.records,
        o.source.display(),
        r.added,
        r.updated,
        r.unchanged,
        r.withdrawn
    );
    if r.older_skipped > 0 {
        println!(
            "kept the newer copy of {} advisories given more than once (by their `modified` time)",
            r.older_skipped
        );
    }
    println!(
        "skipped: {} GIT ranges (not comparable with package versions), {} entries in ecosystems moat cannot order",
        r.git_ranges_skipped, r.unsupported_ecosystem_entries
    );
    println!(
        "re-matched {} stored images: {} newly affected",
        o.images_rematched,
        o.alerts.len()
    );
    for a in &o.alerts {
        let name = a
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| a.image_id.clone());
        let ids: Vec<String> = a
            .new_findings
            .iter()
            .map(|f| format!("{} ({} {}, {})", f.id, f.package, f.installed, f.severity))
            .collect();
        outln!("ALERT {name} ({}): {}", a.image_id, ids.join(", "));
        if a.containers.is_empty() {
            println!("  no running containers use it");
        } else {
            for c in &a.containers {
                println!("  running container {} {}", c.id, c.name);
            }
        }
    }
}
