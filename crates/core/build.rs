//! Compiles kaon's protobuf schemas with protox (pure Rust, no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let files = ["kaon/events/v1/events.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={proto_root}/{f}");
    }
    let fds = protox::compile(files, [proto_root])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
