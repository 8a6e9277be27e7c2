//! Compiles the internal Raft RPC schema with protox (pure Rust, no system
//! protoc), the same way kaon-core compiles the event schema.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let files = ["kaon/raft/v1/raft.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={proto_root}/{f}");
    }
    let fds = protox::compile(files, [proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
