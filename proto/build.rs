//! Compiles `seam.proto` with protox (a pure-Rust protobuf compiler), so building Seam
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=seam.proto");
    let fds = protox::compile(["seam.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
