//! The checked-in generated code must be exactly what `ceres.proto` produces.
//!
//! Checking the code in means a normal build needs no `protoc`; this test keeps
//! the two from drifting. Run with `CERES_REGENERATE=1` to rewrite the file.

use std::path::Path;

use ceres_proto::SECRET_MESSAGES;

#[test]
fn checked_in_code_matches_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().unwrap());
    // Messages that carry secrets get a hand-written, masking `Debug`
    // (proto/src/lib.rs), so a `{:?}` in a log line leaks nothing.
    config.skip_debug(SECRET_MESSAGES.iter().map(|m| format!(".ceres.v1.{m}")));
    tonic_prost_build::configure()
        .out_dir(out.path())
        .emit_rerun_if_changed(false)
        .compile_with_config(config, &[root.join("ceres.proto")], &[root.to_path_buf()])
        .unwrap();
    let fresh = std::fs::read_to_string(out.path().join("ceres.v1.rs")).unwrap();
    let checked_in_path = root.join("src/gen/ceres.v1.rs");
    if std::env::var_os("CERES_REGENERATE").is_some() {
        std::fs::write(&checked_in_path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap();
    assert!(
        fresh == checked_in,
        "proto/src/gen/ceres.v1.rs is stale: run `CERES_REGENERATE=1 cargo test -p ceres-proto \
         --test generated` and commit the result"
    );
}
