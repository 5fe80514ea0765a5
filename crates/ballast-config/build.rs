//! `sqlx::migrate!` reads the migrations at compile time but cannot tell Cargo to watch the
//! directory: without this, a new migration file is missed by an incremental build.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
