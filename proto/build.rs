//! Generates the `infrawatch.v1` code with a vendored `protoc`, so a fresh machine
//! needs no system protobuf compiler to build this crate.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/infrawatch/v1/model.proto",
        "proto/infrawatch/v1/agent.proto",
        "proto/infrawatch/v1/query.proto",
        "proto/infrawatch/v1/events.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallBufferCodec")
        .file_descriptor_set_path(out_dir.join("infrawatch_descriptor.bin"))
        .compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
