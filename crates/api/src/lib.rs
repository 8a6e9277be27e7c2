//! kaon's public API (`proto/kaon/v1/api.proto`): generated messages, the
//! server trait (`kaon_server::KaonServer`) and the client (`kaon_client::KaonClient`).

/// Generated from `kaon/v1/api.proto`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("kaon.v1");
}

pub mod client;
pub mod codec;

/// Encoded file descriptor set of the API, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/kaon_descriptor.bin"));
