//! Rebuilds the CLI when anything under `templates/` changes: `include_dir!` embeds the
//! folder, but cargo only tracks the files that existed at the last build.

fn main() {
    println!("cargo::rerun-if-changed=../templates");
}
