//! `berth image import PATH`: loads an OCI layout or a docker-archive into the image store
//! of a stopped daemon (the metadata store admits one process at a time).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use image_store::ImageStore;
use meta_store::MetaStore;

use crate::config::Config;

/// Imports the images in `path` and prints one line per image: its names and id.
pub async fn import(config: &Config, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.root_dir)
        .with_context(|| format!("creating {}", config.root_dir.display()))?;
    let meta = MetaStore::open(&config.meta_store_path())
        .context("opening the metadata store (is berth running? stop it first)")?;
    let images = ImageStore::open(
        &config.root_dir.join("images"),
        Arc::new(meta),
        config.registry.clone(),
        image_store::Limits::default(),
    )?;
    let imported = images
        .import(path)
        .await
        .with_context(|| format!("importing {}", path.display()))?;
    for rec in imported {
        let names = if rec.repo_tags.is_empty() {
            "<untagged>".to_string()
        } else {
            rec.repo_tags.join(",")
        };
        println!("imported {names} {}", rec.id);
    }
    Ok(())
}
