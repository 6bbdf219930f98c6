//! Compiles `proto/crt.proto` with protox (pure Rust, no `protoc` needed).
const HEX: &str = "#[serde(serialize_with = \"crate::images::hex\")]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/crt.proto");
    let fds = protox::compile(["proto/crt.proto"], ["proto"])?;
    prost_build::Config::new()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .field_attribute("crt.images.Thread.regs", HEX)
        .field_attribute("crt.images.Thread.xsave", HEX)
        .field_attribute("crt.images.SigInfo.raw", HEX)
        .field_attribute("crt.images.Thread.cpu_affinity", HEX)
        .field_attribute("crt.images.RegFile.ghost_data", HEX)
        .field_attribute("crt.images.UnixInflightFd.blob", HEX)
        .field_attribute("crt.images.Vma.blob", HEX)
        .field_attribute("crt.images.Fd.blob", HEX)
        .compile_fds(fds)?;
    Ok(())
}
