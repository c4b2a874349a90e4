//! Generates the protobuf messages and the async ttrpc services from
//! `protos/*.proto` into OUT_DIR with the pure-Rust parser (no `protoc`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

/// The API files, in the order their modules appear in the crate.
const PROTOS: &[&str] = &["health", "sandbox", "containers", "devices", "network"];

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let proto_dir = Path::new("protos");
    let inputs: Vec<PathBuf> = PROTOS
        .iter()
        .map(|name| proto_dir.join(format!("{name}.proto")))
        .collect();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    Codegen::new()
        .out_dir(&out_dir)
        .inputs(&inputs)
        .include(proto_dir)
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating the agent API from protos/ failed");

    // Generated files carry inner attributes, which `include!` cannot take
    // inside a module: declare them as modules with absolute #[path]s instead.
    // The codegen's own casts (a message's computed size to the u32 it caches)
    // are not ours to change: the lossy-cast lint of lib.rs is off for them.
    let mut modules = String::new();
    for name in PROTOS {
        for suffix in ["", "_ttrpc"] {
            let file = out_dir.join(format!("{name}{suffix}.rs"));
            assert!(file.exists(), "codegen did not write {}", file.display());
            writeln!(
                modules,
                "#[path = {:?}]\n#[allow(clippy::all, clippy::cast_possible_truncation, missing_docs)]\npub mod {name}{suffix};",
                file.display().to_string()
            )
            .expect("writing to a String cannot fail");
        }
    }
    std::fs::write(out_dir.join("generated.rs"), modules).expect("write generated.rs");
}
