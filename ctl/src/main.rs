//! `cerectl`: see the library crate for what it does.

fn main() -> std::process::ExitCode {
    cerectl::main()
}
