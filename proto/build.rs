//! Compiles `seam.proto` with protox (a pure-Rust protobuf compiler), so building Seam
//! needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=seam.proto");
    println!("cargo:rerun-if-changed=etcd.proto");
    let fds = protox::compile(["seam.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // etcd's KV API, client side only: the benchmark drives etcd with it.
    let fds = protox::compile(["etcd.proto"], ["."])?;
    tonic_prost_build::configure().build_server(false).compile_fds(fds)?;
    Ok(())
}
