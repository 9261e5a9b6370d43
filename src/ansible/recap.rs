//! Parsing `PLAY RECAP` lines and the failed task out of the output.
//!
//! Reads the text of Ansible's default stdout callback (ansible-core 2.19,
//! no colour) one line at a time, as it streams by, so the failure is kept
//! even when it scrolls out of the output tail. Pure: no I/O.
//!
//! The failed task of a host is its last failure that was not ignored: a
//! failure stops the host, so the last one is what stopped it. One handled
//! by a `rescue:` block looks like any other in the output; a later failure
//! (the rescue's own `fail`, with its message) replaces it, and a host the
//! recap shows clean (`failed=0 unreachable=0`) has none. Known limit: a
//! task of an `always:` section that fails after the real failure is
//! reported instead of it. Other stdout
//! callbacks or forced colour (`ANSIBLE_STDOUT_CALLBACK`,
//! `ANSIBLE_FORCE_COLOR`) are not understood.

use std::collections::BTreeMap;

use crate::job::{FailedTask, HostStats};
use crate::secrets::Redactor;

/// A failed task's message is cut to this many bytes (after redaction).
pub(crate) const MAX_MESSAGE_BYTES: usize = 2048;

/// A multi-line result (`{` ... `}`) is collected up to this many bytes.
const MAX_RESULT_BYTES: usize = 64 * 1024;

/// Hosts whose failure is remembered, at most (the last one per host).
const MAX_HOSTS_WITH_FAILURES: usize = 256;

/// One `fatal:`/`failed:` line, before we know whether it was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    host: String,
    task: String,
    /// The text after `=> `: usually one-line JSON.
    result: String,
}

/// Follows the output line by line; `finish` yields `stats` and `failed_task`.
#[derive(Debug, Default)]
pub(crate) struct RecapScanner {
    task: Option<String>,
    /// Failures of the current task; confirmed when the task ends unless a
    /// `...ignoring` line follows their host's result.
    pending: Vec<Failure>,
    /// Last confirmed failure per host, hosts in order of first failure.
    confirmed: Vec<Failure>,
    /// Host of the latest result line: the one a `...ignoring` refers to.
    last_result_host: Option<String>,
    /// A failure whose result spans lines (`=> {` ... `}`), being collected.
    open_result: Option<Failure>,
    in_recap: bool,
    stats: Option<BTreeMap<String, HostStats>>,
}

impl RecapScanner {
    pub(crate) fn new() -> RecapScanner {
        RecapScanner::default()
    }

    /// Feeds one line, without its line ending.
    pub(crate) fn push_line(&mut self, line: &str) {
        if let Some(open) = &mut self.open_result {
            open.result.push('\n');
            open.result.push_str(line);
            if line.trim_end() == "}" || open.result.len() > MAX_RESULT_BYTES {
                let done = self.open_result.take().expect("checked above");
                self.pending.push(done);
            }
            return;
        }
        if self.starts_section(line) {
            return;
        }
        if self.in_recap {
            if let Some((host, stats)) = recap_line(line) {
                self.stats
                    .get_or_insert_with(BTreeMap::new)
                    .insert(host, stats);
            }
            return;
        }
        self.task_line(line);
    }

    /// True if `line` starts a play, a task or the recap, which ends the
    /// current task.
    fn starts_section(&mut self, line: &str) -> bool {
        if line.starts_with("PLAY RECAP ") {
            self.end_task();
            self.in_recap = true;
            self.stats.get_or_insert_with(BTreeMap::new);
            return true;
        }
        if line.starts_with("PLAY [") {
            self.end_task();
            self.in_recap = false;
            self.task = None;
            return true;
        }
        if let Some(name) = task_header(line) {
            self.end_task();
            self.in_recap = false;
            self.task = Some(name.to_owned());
            return true;
        }
        false
    }

    /// A line of the current task: a host's result, maybe a failure, or the
    /// `...ignoring` that takes the last one back.
    fn task_line(&mut self, line: &str) {
        if line.trim_end() == "...ignoring" {
            if let Some(host) = &self.last_result_host {
                self.pending.retain(|f| &f.host != host);
            }
            return;
        }
        if let Some(host) = result_host(line) {
            self.last_result_host = Some(host.to_owned());
        }
        if let Some((host, result)) = failure_line(line) {
            let failure = Failure {
                host: host.to_owned(),
                task: self.task.clone().unwrap_or_default(),
                result: result.to_owned(),
            };
            if result.trim_end() == "{" {
                self.open_result = Some(failure);
            } else {
                self.pending.push(failure);
            }
        }
    }

    /// The recap (if one was printed) and the failure that counts.
    pub(crate) fn finish(
        mut self,
        redactor: &Redactor,
    ) -> (Option<BTreeMap<String, HostStats>>, Option<FailedTask>) {
        if let Some(open) = self.open_result.take() {
            self.pending.push(open);
        }
        self.end_task();
        let failed_task = counting_failure(&self.confirmed, self.stats.as_ref())
            .map(|failure| failed_task(failure, redactor));
        (self.stats, failed_task)
    }

    fn end_task(&mut self) {
        for failure in self.pending.drain(..) {
            let room = self.confirmed.len() < MAX_HOSTS_WITH_FAILURES;
            match self.confirmed.iter_mut().find(|f| f.host == failure.host) {
                Some(earlier) => *earlier = failure,
                None if room => self.confirmed.push(failure),
                None => {}
            }
        }
    }
}

/// The failure of the first failing host the recap does not show clean; a
/// host that ends with `failed=0 unreachable=0` had its failure rescued.
/// Without a recap (timeout, crash) the first failing host counts.
fn counting_failure<'a>(
    confirmed: &'a [Failure],
    stats: Option<&BTreeMap<String, HostStats>>,
) -> Option<&'a Failure> {
    confirmed.iter().find(|failure| match stats {
        None => true,
        Some(stats) => match stats.get(&failure.host) {
            Some(host) => host.failed > 0 || host.unreachable > 0,
            None => true,
        },
    })
}

fn failed_task(failure: &Failure, redactor: &Redactor) -> FailedTask {
    let message = redactor.redact(&result_message(&failure.result));
    FailedTask {
        host: failure.host.clone(),
        task: failure.task.clone(),
        message: cap_bytes(message, MAX_MESSAGE_BYTES),
    }
}

/// The `msg` of a JSON result, else the raw text.
pub(crate) fn result_message(result: &str) -> String {
    let trimmed = result.trim();
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(serde_json::Value::Object(map)) => match map.get("msg") {
            Some(serde_json::Value::String(msg)) => msg.clone(),
            Some(other) => other.to_string(),
            None => trimmed.to_owned(),
        },
        _ => trimmed.to_owned(),
    }
}

/// Cuts `text` to at most `max` bytes on a char boundary, marking the cut
/// with `…`.
fn cap_bytes(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    text.truncate(text.floor_char_boundary(max - '…'.len_utf8()));
    text.push('…');
    text
}

/// The name in `TASK [name] ****` or `RUNNING HANDLER [name] ****`.
pub(crate) fn task_header(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("TASK [")
        .or_else(|| line.strip_prefix("RUNNING HANDLER ["))?;
    // The name may itself contain `]`, so cut from the right.
    rest.trim_end_matches('*').trim_end().strip_suffix(']')
}

/// `host   : ok=1 changed=0 unreachable=0 failed=0 skipped=0 rescued=0 ignored=0`
pub(crate) fn recap_line(line: &str) -> Option<(String, HostStats)> {
    let (host, counters) = line.split_once(" : ")?;
    let host = host.trim();
    if host.is_empty() {
        return None;
    }
    let mut stats = HostStats::default();
    let mut saw_ok = false;
    for pair in counters.split_whitespace() {
        let (key, value) = pair.split_once('=')?;
        let value: u32 = value.parse().ok()?;
        match key {
            "ok" => {
                stats.ok = value;
                saw_ok = true;
            }
            "changed" => stats.changed = value,
            "unreachable" => stats.unreachable = value,
            "failed" => stats.failed = value,
            "skipped" => stats.skipped = value,
            "rescued" => stats.rescued = value,
            "ignored" => stats.ignored = value,
            _ => {}
        }
    }
    saw_ok.then(|| (host.to_owned(), stats))
}

/// Host and result text of `fatal: [h]: FAILED! => ...`,
/// `fatal: [h]: UNREACHABLE! => ...` or `failed: [h] (item=...) => ...`.
pub(crate) fn failure_line(line: &str) -> Option<(&str, &str)> {
    if let Some(rest) = line.strip_prefix("fatal: [") {
        let (label, result) = rest
            .split_once("]: FAILED! => ")
            .or_else(|| rest.split_once("]: UNREACHABLE! => "))?;
        return Some((inventory_host(label), result));
    }
    let rest = line.strip_prefix("failed: [")?;
    let (label, item_and_result) = rest.split_once("] (item=")?;
    // The item label is free text; the result is JSON, so prefer `) => {`.
    let result = match item_and_result.find(") => {") {
        Some(at) => &item_and_result[at + ") => ".len()..],
        None => item_and_result.split_once(") => ")?.1,
    };
    Some((inventory_host(label), result))
}

/// The host of any per-host result line (`ok: [h]`, `skipping: [h]`, ...).
fn result_host(line: &str) -> Option<&str> {
    let (status, rest) = line.split_once(": [")?;
    if !matches!(status, "ok" | "changed" | "skipping" | "failed" | "fatal") {
        return None;
    }
    let end = rest.find(']')?;
    Some(inventory_host(&rest[..end]))
}

/// `web1 -> localhost` (a delegated task) is reported under `web1`.
fn inventory_host(label: &str) -> &str {
    label.split_once(" -> ").map_or(label, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(output: &str) -> (Option<BTreeMap<String, HostStats>>, Option<FailedTask>) {
        scan_with(output, &Redactor::default())
    }

    fn scan_with(
        output: &str,
        redactor: &Redactor,
    ) -> (Option<BTreeMap<String, HostStats>>, Option<FailedTask>) {
        let mut scanner = RecapScanner::new();
        for line in output.lines() {
            scanner.push_line(line);
        }
        scanner.finish(redactor)
    }

    /// ansible-core 2.19.14, default callback, `ANSIBLE_NOCOLOR=1`: a loop
    /// failure ignored, a failure rescued, then a real failure.
    const IGNORED_RESCUED_THEN_FAILED: &str = r#"
PLAY [all] *********************************************************************

TASK [loop mixed] **************************************************************
skipping: [web1] => (item=1) 
skipping: [web2] => (item=1) 
[ERROR]: Task failed: Action failed: item 2
Origin: /tmp/ansout/pb3.yml:5:7

3   gather_facts: false
4   tasks:
5     - name: loop mixed
        ^ column 7

failed: [web1] (item=2) => {"ansible_loop_var": "item", "changed": false, "item": 2, "msg": "item 2"}
skipping: [web1] => (item=3) 
...ignoring
failed: [web2] (item=2) => {"ansible_loop_var": "item", "changed": false, "item": 2, "msg": "item 2"}
skipping: [web2] => (item=3) 
...ignoring

TASK [in block] ****************************************************************
[ERROR]: Task failed: Action failed: blockfail
Origin: /tmp/ansout/pb3.yml:11:11

 9       ignore_errors: true
10     - block:
11         - name: in block
             ^ column 11

fatal: [web1]: FAILED! => {"changed": false, "msg": "blockfail"}
fatal: [web2]: FAILED! => {"changed": false, "msg": "blockfail"}

TASK [debug] *******************************************************************
ok: [web1] => {
    "msg": "rescued"
}
ok: [web2] => {
    "msg": "rescued"
}

TASK [last] ********************************************************************
[ERROR]: Task failed: Action failed: final fail
Origin: /tmp/ansout/pb3.yml:15:7

13       rescue:
14         - debug: msg=rescued
15     - name: last
         ^ column 7

fatal: [web1]: FAILED! => {"changed": false, "msg": "final fail"}
fatal: [web2]: FAILED! => {"changed": false, "msg": "final fail"}

PLAY RECAP *********************************************************************
web1                       : ok=2    changed=0    unreachable=0    failed=1    skipped=0    rescued=1    ignored=1   
web2                       : ok=2    changed=0    unreachable=0    failed=1    skipped=0    rescued=1    ignored=1   
"#;

    /// ansible-core 2.19.14: an unreachable host.
    const UNREACHABLE: &str = r#"
PLAY [all] *********************************************************************

TASK [ping it] *****************************************************************
[ERROR]: Task failed: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.1 port 1: Connection refused
Origin: /tmp/ansout/pb2.yml:4:7

2   gather_facts: false
3   tasks:
4     - name: ping it
        ^ column 7

fatal: [bad]: UNREACHABLE! => {"changed": false, "msg": "Task failed: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.1 port 1: Connection refused", "unreachable": true}

PLAY RECAP *********************************************************************
bad                        : ok=0    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0   
"#;

    #[test]
    fn recap_lines_become_per_host_stats() {
        let (stats, _) = scan(IGNORED_RESCUED_THEN_FAILED);
        let stats = stats.unwrap();
        assert_eq!(stats.len(), 2);
        let expected = HostStats {
            ok: 2,
            failed: 1,
            rescued: 1,
            ignored: 1,
            ..HostStats::default()
        };
        assert_eq!(stats["web1"], expected);
        assert_eq!(stats["web2"], expected);
    }

    #[test]
    fn output_without_a_recap_has_no_stats() {
        let (stats, failed) = scan("PLAY [all] ***\n\nTASK [x] ***\nok: [h]\n");
        assert_eq!(stats, None);
        assert_eq!(failed, None);
    }

    #[test]
    fn ignored_and_rescued_failures_do_not_count_when_a_later_task_fails() {
        // web1 has failed=1: the failure that stopped it is its last one,
        // not the rescued one before it.
        let (_, failed) = scan(IGNORED_RESCUED_THEN_FAILED);
        let failed = failed.unwrap();
        assert_eq!(failed.host, "web1");
        assert_eq!(failed.task, "last");
        assert_eq!(failed.message, "final fail");
    }

    #[test]
    fn an_ignored_loop_failure_is_not_the_failed_task() {
        let output = IGNORED_RESCUED_THEN_FAILED
            .split("TASK [in block]")
            .next()
            .unwrap();
        assert_eq!(scan(output).1, None);
    }

    #[test]
    fn a_failure_rescued_on_a_host_that_ends_clean_is_not_reported() {
        let output = "TASK [in block] ***\n\
            fatal: [web1]: FAILED! => {\"changed\": false, \"msg\": \"blockfail\"}\n\
            \n\
            TASK [debug] ***\n\
            ok: [web1] => {\n    \"msg\": \"rescued\"\n}\n\
            \n\
            PLAY RECAP ***\n\
            web1                       : ok=1    changed=0    unreachable=0    failed=0    skipped=0    rescued=1    ignored=0   \n";
        let (stats, failed) = scan(output);
        assert_eq!(stats.unwrap()["web1"].rescued, 1);
        assert_eq!(failed, None);
    }

    #[test]
    fn an_unreachable_host_is_a_failed_task_with_the_ssh_message() {
        let (stats, failed) = scan(UNREACHABLE);
        assert_eq!(stats.unwrap()["bad"].unreachable, 1);
        let failed = failed.unwrap();
        assert_eq!(failed.host, "bad");
        assert_eq!(failed.task, "ping it");
        assert!(
            failed.message.ends_with("port 1: Connection refused"),
            "{}",
            failed.message
        );
    }

    #[test]
    fn a_failure_without_a_recap_counts_as_the_first_failure() {
        let output = "TASK [pull] ***\nfatal: [h]: FAILED! => {\"msg\": \"no\"}\n";
        let failed = scan(output).1.unwrap();
        assert_eq!(
            (failed.task.as_str(), failed.message.as_str()),
            ("pull", "no")
        );
    }

    #[test]
    fn a_multi_line_result_is_collected_until_its_closing_brace() {
        let output = "TASK [t] ***\nfatal: [h]: FAILED! => {\n    \"changed\": false,\n    \"msg\": \"multi\"\n}\n";
        assert_eq!(scan(output).1.unwrap().message, "multi");
    }

    #[test]
    fn a_result_that_is_not_json_is_kept_raw() {
        assert_eq!(result_message("something odd "), "something odd");
        assert_eq!(
            result_message(r#"{"changed": false}"#),
            r#"{"changed": false}"#
        );
        assert_eq!(result_message(r#"{"msg": ["a", "b"]}"#), r#"["a","b"]"#);
    }

    #[test]
    fn the_failed_task_message_is_redacted_then_capped_at_two_kib() {
        let secret = secrecy::SecretString::from("tok_1234567890");
        let redactor = Redactor::new([&secret]);
        let long = "é".repeat(3000);
        let output = format!(
            "TASK [clone] ***\nfatal: [h]: FAILED! => {{\"msg\": \"bad tok_1234567890 {long}\"}}\n"
        );
        let message = scan_with(&output, &redactor).1.unwrap().message;
        assert!(message.starts_with("bad *** é"), "{}", &message[..20]);
        assert!(message.len() <= MAX_MESSAGE_BYTES);
        assert!(message.ends_with('…'));
    }

    #[test]
    fn task_headers_keep_brackets_inside_the_name() {
        assert_eq!(
            task_header("TASK [say hi] *****************"),
            Some("say hi")
        );
        assert_eq!(
            task_header("TASK [role : install [x]] ***"),
            Some("role : install [x]")
        );
        assert_eq!(
            task_header("RUNNING HANDLER [restart app] ***"),
            Some("restart app")
        );
        assert_eq!(task_header("PLAY [all] ***"), None);
    }

    #[test]
    fn failure_lines_give_host_and_result() {
        assert_eq!(
            failure_line("fatal: [web1]: FAILED! => {\"msg\": \"x\"}"),
            Some(("web1", "{\"msg\": \"x\"}"))
        );
        assert_eq!(
            failure_line("fatal: [web1 -> localhost]: UNREACHABLE! => {}"),
            Some(("web1", "{}"))
        );
        assert_eq!(
            failure_line("failed: [web2] (item=a) => b) => {\"msg\": \"y\"}"),
            Some(("web2", "{\"msg\": \"y\"}"))
        );
        assert_eq!(failure_line("ok: [web1] => {}"), None);
    }

    #[test]
    fn a_recap_line_needs_counters() {
        assert_eq!(recap_line("web1 : ok=1 changed=2").unwrap().1.changed, 2);
        assert_eq!(recap_line("TASK [a : b] ***"), None);
        assert_eq!(recap_line("x : hello"), None);
    }
}
