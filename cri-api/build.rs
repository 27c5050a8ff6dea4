//! Generates the CRI v1 types, clients and servers from `proto/api.proto` (see
//! `refresh.sh` for where the file comes from), with Debian's protoc.
//!
//! Debian 12's protoc (3.21) predates the `debug_redact` field option (protobuf 22) that
//! the CRI puts on registry credentials; it only affects how Go prints them, so it is
//! dropped from a copy of the file before compiling. Nothing else is changed.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let text = std::fs::read_to_string("proto/api.proto").expect("reading proto/api.proto");
    let text = text.replace(" [debug_redact = true]", "");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let dir = out.join("proto");
    std::fs::create_dir_all(&dir).expect("creating OUT_DIR/proto");
    std::fs::write(dir.join("api.proto"), text).expect("writing OUT_DIR/proto/api.proto");
    tonic_prost_build::configure()
        // The daemon shows some CRI values in its verbose JSON.
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_protos(&[dir.join("api.proto")], &[dir])
        .expect("generating the CRI bindings from proto/api.proto");
}
