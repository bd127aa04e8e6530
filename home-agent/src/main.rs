//! `ceres-home`: see the library crate for what it does.

fn main() -> std::process::ExitCode {
    ceres_home::main()
}
