// `sqlx::migrate!` embeds `migrations/` at compile time, but cargo does not know the macro
// reads that directory: without this, a change to a migration alone would not rebuild the
// binary that applies them.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
