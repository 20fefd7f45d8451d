//! Compiles Shoal's Mesos `.proto` files with `protox` (pure Rust, no
//! `protoc`), generates Rust types with `prost-build`, and derives
//! `prost_reflect::ReflectMessage` for every message so the crate can do
//! Mesos-style JSON through reflection.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &[
    "mesos/v1/mesos.proto",
    "mesos/v1/scheduler/scheduler.proto",
    "mesos/scheduler/scheduler.proto",
    "mesos/internal/messages.proto",
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{proto}");
    }

    let mut compiler = protox::Compiler::new([PROTO_ROOT]).unwrap_or_else(|e| panic!("{e}"));
    compiler.include_imports(true).include_source_info(true);
    compiler
        .open_files(PROTOS)
        .unwrap_or_else(|e| panic!("failed to compile .proto files: {e:?}"));

    // Descriptor set embedded in the crate for reflection (without source
    // info, which is only useful for generating doc comments).
    let mut runtime_fds = compiler.file_descriptor_set();
    for file in &mut runtime_fds.file {
        file.source_code_info = None;
    }
    fs::write(
        out_dir.join("mesos_descriptor_set.bin"),
        runtime_fds.encode_to_vec(),
    )
    .expect("write descriptor set");

    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    for message in compiler.descriptor_pool().all_messages() {
        // Map entry types are synthesized and have no Rust struct.
        if message.is_map_entry() {
            continue;
        }
        let full_name = message.full_name();
        config.type_attribute(
            full_name,
            format!(
                "#[derive(::prost_reflect::ReflectMessage)]\n\
                 #[prost_reflect(descriptor_pool = \"crate::DESCRIPTOR_POOL\", message_name = \"{full_name}\")]"
            ),
        );
    }
    config
        .compile_fds(compiler.file_descriptor_set())
        .unwrap_or_else(|e| panic!("prost-build failed: {e}"));
}
