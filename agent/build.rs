//! Builds the eBPF programs in `ebpf/` for bpfel-unknown-none (nightly, build-std, bpf-linker)
//! and leaves the object in OUT_DIR, where `src/kernel/enforce/mod.rs` embeds it (with the
//! `ebpf` feature, on by default). `cargo xtask setup` installs the toolchain this needs.

fn main() -> anyhow::Result<()> {
    // The fuzz targets use the library without the programs (and without the toolchain
    // they need).
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return Ok(());
    }
    let package = aya_build::Package {
        name: "skillgate-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|err| {
        anyhow::anyhow!(
            "cannot build the eBPF programs ({err:#}); run `cargo xtask setup` to install the \
             nightly toolchain, rust-src and bpf-linker"
        )
    })
}
