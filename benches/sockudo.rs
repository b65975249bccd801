#[path = "loadgen/mod.rs"]
mod loadgen;
fn main() {}
