//! loadgen: the gateway's load generator (being written).
fn main() {}
