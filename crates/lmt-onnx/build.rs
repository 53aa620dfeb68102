//! Compiles ONNX's protobuf schema (`proto/onnx.proto`, the file the `onnx` Python package ships) into
//! Rust types with prost. protox is a protobuf compiler written in Rust, so the build needs no `protoc`.
fn main() {
    let proto = "proto/onnx.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=build.rs");
    let descriptors = match protox::compile([proto], ["proto"]) {
        Ok(d) => d,
        Err(e) => panic!("compiling {proto}: {e}"),
    };
    if let Err(e) = prost_build::Config::new().compile_fds(descriptors) {
        panic!("generating Rust types from {proto}: {e}");
    }
}
