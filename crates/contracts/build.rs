//! Compiles `proto-schemas/` with protox (pure Rust), so no system `protoc`
//! is needed to build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto-schemas");
    let proto = format!("{root}/depot/sync/v1/job.proto");
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto.as_str()], [root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
