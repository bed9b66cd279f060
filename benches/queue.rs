//! Queue store benchmark (being written).
fn main() {}
