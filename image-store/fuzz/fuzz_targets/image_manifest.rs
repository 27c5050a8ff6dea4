//! What a registry (or an imported archive) hands berth before any layer is touched:
//! manifest and index documents (`parse_document`, then `select_platform` and
//! `layer_format` on what it returns), image configs (`ConfigDoc::parse`, the `User` and
//! `rootfs.diff_ids` it carries into `parse_user` and `chain_ids`), and the image names
//! an OCI layout's index annotations carry into `ImageRef::parse`.
//!
//! The same bytes go through every parser. Errors are expected; panics, hangs and
//! unbounded allocation are bugs, and so is a broken invariant:
//! - a document that parses has only valid sha256 digests, and serialising what was
//!   parsed and parsing it again gives the same document;
//! - `select_platform` returns one of the index's own entries, of the platform asked for;
//! - a reference that parses is normalised: its display form parses to itself.
#![no_main]

use image_store::digest;
use image_store::manifest::{
    self, ConfigDoc, Descriptor, Document, LayerFormat, PlatformChoice, WASM_LAYER_TYPES,
};
use image_store::{ImageRef, parse_user};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    manifest_or_index(data);
    image_config(data);
    if let Ok(s) = std::str::from_utf8(data) {
        reference(s);
    }
});

fn manifest_or_index(data: &[u8]) {
    let Ok(doc) = manifest::parse_document(data, "fuzz") else {
        return;
    };
    match doc {
        Document::Index(entries) => {
            for d in &entries {
                check_descriptor(d);
                for key in [
                    "io.containerd.image.name",
                    "org.opencontainers.image.ref.name",
                ] {
                    if let Some(name) = d.annotations.get(key) {
                        reference(name);
                    }
                }
            }
            for choice in [PlatformChoice::Native, PlatformChoice::PreferWasm] {
                if let Some(picked) = manifest::select_platform(&entries, choice) {
                    assert!(entries.iter().any(|e| std::ptr::eq(e, picked)));
                    let p = picked.platform.as_ref().expect("picked without a platform");
                    assert!(p.is_wasm() || (p.os == "linux" && p.architecture == "amd64"));
                }
            }
            let again = serde_json::json!({ "schemaVersion": 2, "manifests": entries });
            let bytes = serde_json::to_vec(&again).unwrap();
            match manifest::parse_document(&bytes, "fuzz again") {
                Ok(Document::Index(e2)) => assert_eq!(entries, e2),
                other => panic!("re-serialised index parsed as {other:?}"),
            }
        }
        Document::Image(m) => {
            check_descriptor(&m.config);
            for l in &m.layers {
                check_descriptor(l);
                if let Ok(format) = manifest::layer_format(&l.media_type) {
                    let wasm = WASM_LAYER_TYPES.contains(&l.media_type.as_str());
                    assert_eq!(format == LayerFormat::Wasm, wasm);
                }
            }
            let again = serde_json::json!({
                "schemaVersion": 2,
                "config": m.config,
                "layers": m.layers,
            });
            let bytes = serde_json::to_vec(&again).unwrap();
            match manifest::parse_document(&bytes, "fuzz again") {
                Ok(Document::Image(m2)) => {
                    assert_eq!(m.config, m2.config);
                    assert_eq!(m.layers, m2.layers);
                }
                other => panic!("re-serialised manifest parsed as {other:?}"),
            }
        }
    }
}

fn check_descriptor(d: &Descriptor) {
    let hex = digest::hex_of(&d.digest).expect("a parsed document holds an invalid digest");
    assert_eq!(hex.len(), 64);
    // Blob file names are built from this: it must never be a path.
    assert!(!hex.contains('/') && !hex.contains('.'));
}

fn image_config(data: &[u8]) {
    let Ok((doc, _value)) = ConfigDoc::parse(data) else {
        return;
    };
    let _ = doc.platform().is_wasm();
    let user = parse_user(doc.user());
    assert!(user.uid.is_none() || user.username.is_empty());
    if let Some(rootfs) = &doc.rootfs {
        let chain = digest::chain_ids(&rootfs.diff_ids);
        assert_eq!(chain.len(), rootfs.diff_ids.len());
        if let Some(first) = chain.first() {
            assert_eq!(first, &rootfs.diff_ids[0]);
        }
    }
}

fn reference(s: &str) {
    let Ok(r) = ImageRef::parse(s) else {
        return;
    };
    let shown = r.to_string();
    let again = ImageRef::parse(&shown)
        .unwrap_or_else(|e| panic!("{s:?} parsed, but its normal form {shown:?} does not: {e}"));
    assert_eq!(r, again, "{s:?} → {shown:?}");
    let _ = (r.name(), r.tagged());
}
