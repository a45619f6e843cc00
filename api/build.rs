//! Generates the tunnel's gRPC code with the protoc shipped by
//! `protoc-bin-vendored`, so a build needs no protoc installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/mirrord/tunnel/v1/tunnel.proto"], &["proto"])?;
    Ok(())
}
