//! Criterion benchmarks of the pure hot paths (being written).
fn main() {}
