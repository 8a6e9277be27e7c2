//! Compiles kaon's protobuf schemas with protox (pure Rust, no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let files = ["kaon/events/v1/events.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={proto_root}/{f}");
    }
    let fds = protox::compile(files, [proto_root])?;
    let mut config = prost_build::Config::new();
    // State embeds these enums and is hashed via serde (State::digest).
    for e in ["TaskState", "KillCause", "FailureCause"] {
        config.type_attribute(
            format!(".kaon.events.v1.{e}"),
            "#[derive(serde::Serialize, serde::Deserialize)]",
        );
    }
    config.compile_fds(fds)?;
    Ok(())
}
