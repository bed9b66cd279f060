//! Small helpers that build requests and read answers.

use serde_json::{Value, json};

/// The value of a counter or gauge in a Prometheus text exposition: `name` summed over its
/// labels, or one series when `name` carries its labels (`jobs{status="queued"}`).
pub fn metric(text: &str, name: &str) -> f64 {
    let series = |line: &str| {
        if name.contains('{') {
            line.split(' ').next() == Some(name)
        } else {
            line.split(['{', ' ']).next() == Some(name)
        }
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| series(line))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether the suite runs on PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var("TEST_DATABASE_URL").is_ok_and(|url| !url.is_empty())
}

/// Decodes a PNG and returns its size.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().expect("a PNG");
    let info = reader.info();
    (info.width, info.height)
}

/// A small image request.
pub fn small_prompt(prompt: &str) -> Value {
    json!({ "prompt": prompt, "width": 64, "height": 64, "steps": 4 })
}

/// The queue positions of submissions that must all have been accepted, sorted.
pub fn accepted_positions(answers: &[(u16, Value)]) -> Vec<i64> {
    let mut positions: Vec<i64> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 202, "{body}");
            body["queue_position"].as_i64().expect("position")
        })
        .collect();
    positions.sort();
    positions
}

/// The prompts of a `GET /api/v1/messages` answer.
pub fn listed_prompts(list: &Value) -> Vec<&str> {
    list["messages"]
        .as_array()
        .expect("list")
        .iter()
        .map(|message| message["prompt"].as_str().expect("prompt"))
        .collect()
}
