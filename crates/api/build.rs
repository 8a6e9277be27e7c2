//! Compiles the public API with protox (no system protoc). Event messages
//! are the core's own types (extern_path), so the API never copies them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../../proto";
    println!("cargo:rerun-if-changed={root}/kaon/v1/api.proto");
    println!("cargo:rerun-if-changed={root}/kaon/events/v1/events.proto");
    let fds = protox::compile(["kaon/v1/api.proto"], [root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kaon_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .extern_path(".kaon.events.v1", "::kaon_core::events::pb")
        // Malformed requests are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
