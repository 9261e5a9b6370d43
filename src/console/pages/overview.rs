//! `/`: per queue its length, pending entries, lag and consumers with
//! their idle time; the last hour's finished jobs by status and error
//! code (an SVG chart with a table beside it); servers by status.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use crate::console::html::{self, Nav};
use crate::console::{Console, Failure, Shared, Viewer};
use crate::queue::QueueInfo;
use crate::store::{FinishedCount, JobState};

/// `GET /`.
pub(crate) async fn page(
    State(console): State<Shared>,
    viewer: Viewer,
) -> Result<Response, Failure> {
    let (queues, finished, servers) = tokio::join!(
        console.inspector.queues(),
        console.store.finished_last_hour(),
        console.store.servers_by_status(),
    );
    let (queues, finished, servers) = (queues?, finished?, servers?);
    let body = format!(
        "<section aria-labelledby=\"h-queues\"><h2 id=\"h-queues\">Queues</h2>{}{}</section>\
         <section aria-labelledby=\"h-finished\"><h2 id=\"h-finished\">Finished in the last hour</h2>{}</section>\
         <section aria-labelledby=\"h-servers\"><h2 id=\"h-servers\">Servers</h2>{}</section>",
        queue_table(&console, &queues),
        consumer_table(&console, &queues),
        finished_chart(&console, &finished),
        servers_table(&console, &servers),
    );
    Ok(html::respond(
        StatusCode::OK,
        html::page("Overview", Some(Nav::Overview), &body, Some(&viewer)),
        Some(&viewer),
    ))
}

fn queue_table(console: &Console, queues: &[QueueInfo]) -> String {
    let rows: String = queues
        .iter()
        .map(|q| {
            let group = q.group.as_ref();
            let number = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
            format!(
                "<tr data-queue=\"{name}\"><th scope=\"row\">{name}</th>\
                 <td data-col=\"length\">{}</td><td data-col=\"pending\">{}</td>\
                 <td data-col=\"lag\">{}</td><td data-col=\"consumers\">{}</td></tr>",
                q.length,
                number(group.map(|g| g.pending)),
                number(group.and_then(|g| g.lag)),
                group.map_or(0, |g| g.consumers.len()),
                name = console.show(&q.name),
            )
        })
        .collect();
    let caption = format!("Job queues, consumer group {}", console.redis.group);
    html::table(
        "queues",
        &caption,
        &["Queue", "Length", "Pending", "Lag", "Consumers"],
        &rows,
    )
}

fn consumer_table(console: &Console, queues: &[QueueInfo]) -> String {
    let rows: String = queues
        .iter()
        .flat_map(|q| {
            let consumers = q.group.as_ref().map(|g| g.consumers.as_slice()).unwrap_or(&[]);
            consumers.iter().map(move |c| {
                format!(
                    "<tr data-queue=\"{}\" data-consumer=\"{name}\"><td>{}</td><th scope=\"row\">{name}</th>\
                     <td>{}</td><td data-col=\"idle\">{}</td></tr>",
                    console.show(&q.name),
                    console.show(&q.name),
                    c.pending,
                    idle(c.idle_ms),
                    name = console.show(&c.name),
                )
            })
        })
        .collect();
    let rows = if rows.is_empty() {
        "<tr><td colspan=\"4\">No consumers: no worker has read these queues.</td></tr>".to_owned()
    } else {
        rows
    };
    html::table(
        "consumers",
        "Consumers (workers) and their idle time",
        &["Queue", "Consumer", "Pending", "Idle"],
        &rows,
    )
}

/// `850 ms`, `12 s`, `3 min`, `2 h`.
pub(crate) fn idle(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

/// What a bar is labelled: `success` or `failed: <error code>`.
fn label(count: &FinishedCount) -> String {
    match &count.error_code {
        Some(code) => format!("{}: {code}", count.status.as_str()),
        None => count.status.as_str().to_owned(),
    }
}

/// An inline SVG bar chart (presentation attributes only: the CSP allows
/// no inline style) and the same numbers as a table.
fn finished_chart(console: &Console, counts: &[FinishedCount]) -> String {
    const BAR: i64 = 24;
    const LABEL_W: i64 = 260;
    const BARS_W: i64 = 380;
    let total: i64 = counts.iter().map(|c| c.count).sum();
    let max = counts.iter().map(|c| c.count).max().unwrap_or(0).max(1);
    let height = (counts.len() as i64).max(1) * (BAR + 8) + 8;
    let bars: String = if counts.is_empty() {
        "<text x=\"8\" y=\"24\" fill=\"#1f2328\">No job finished in the last hour.</text>"
            .to_owned()
    } else {
        counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let y = 8 + i as i64 * (BAR + 8);
                let width = (c.count * BARS_W / max).max(2);
                let fill = match c.status {
                    JobState::Finished(crate::job::JobStatus::Success) => "#1a7f37",
                    _ => "#b42318",
                };
                format!(
                    "<text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\" fill=\"#1f2328\">{label}</text>\
                     <rect x=\"{LABEL_W}\" y=\"{y}\" width=\"{width}\" height=\"{BAR}\" fill=\"{fill}\"></rect>\
                     <text x=\"{cx}\" y=\"{ty}\" fill=\"#1f2328\">{count}</text>",
                    lx = LABEL_W - 8,
                    ty = y + BAR - 7,
                    cx = LABEL_W + width + 6,
                    label = console.show(&label(c)),
                    count = c.count,
                )
            })
            .collect()
    };
    let rows: String = counts
        .iter()
        .map(|c| {
            format!(
                "<tr data-status=\"{}\" data-error-code=\"{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                c.status.as_str(),
                console.show(c.error_code.as_deref().unwrap_or("")),
                c.status.as_str(),
                console.show(c.error_code.as_deref().unwrap_or("-")),
                c.count
            )
        })
        .collect();
    let width = LABEL_W + BARS_W + 60;
    format!(
        "<figure class=\"chart\"><svg id=\"finished-chart\" role=\"img\" \
         aria-labelledby=\"finished-chart-title\" viewBox=\"0 0 {width} {height}\" \
         width=\"100%\" preserveAspectRatio=\"xMinYMin meet\" font-size=\"14\">\
         <title id=\"finished-chart-title\">Jobs finished in the last hour by status and error code: {total} in all</title>\
         {bars}</svg><figcaption>{total} jobs finished in the last hour; the table below has the same numbers.</figcaption></figure>{}",
        html::table(
            "finished",
            "Jobs finished in the last hour",
            &["Status", "Error code", "Jobs"],
            &rows
        )
    )
}

fn servers_table(console: &Console, by_status: &[(String, i64)]) -> String {
    let rows: String = by_status
        .iter()
        .map(|(status, count)| {
            format!(
                "<tr data-status=\"{s}\"><th scope=\"row\">{s}</th><td data-col=\"count\">{count}</td></tr>",
                s = console.show(status)
            )
        })
        .collect();
    let rows = if rows.is_empty() {
        "<tr><td colspan=\"2\">No servers registered.</td></tr>".to_owned()
    } else {
        rows
    };
    html::table(
        "servers-by-status",
        "Servers by status",
        &["Status", "Servers"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_reads_in_a_fitting_unit() {
        assert_eq!(idle(850), "850 ms");
        assert_eq!(idle(12_500), "12 s");
        assert_eq!(idle(180_000), "3 min");
        assert_eq!(idle(7_200_000), "2 h");
    }
}
