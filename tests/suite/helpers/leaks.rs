//! Where a secret must never show up, as text to search: a stream's
//! entries, a directory's files, and the lines of a value worth looking
//! for (a PEM key's body lines, not its armour).

use std::path::Path;

use super::world::World;

/// Lines of `value` worth searching for: a PEM key's body lines, or the
/// value itself.
pub fn fragments(value: &str) -> Vec<&str> {
    let lines: Vec<&str> = value
        .lines()
        .map(str::trim)
        .filter(|line| line.len() >= 16 && !line.starts_with("-----"))
        .collect();
    if lines.is_empty() { vec![value] } else { lines }
}

/// Every text of `dir`'s files, recursively.
pub fn files_text(dir: &Path) -> String {
    let mut text = String::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

/// Every entry of a stream under the test's prefix, its fields as stored.
pub async fn stream_text(w: &World, stream: &str) -> String {
    let mut text = String::new();
    for (_, fields) in w.queue.stream_entries(stream).await {
        for (name, value) in fields {
            text.push_str(&format!("{name}={value}\n"));
        }
    }
    text
}
