//! `/jobs`: the ledger newest first, filtered by kind, status, error code,
//! request id, project and server, 50 to a page.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use crate::console::html::{self, Nav, esc, url_part};
use crate::console::{Console, Failure, Shared, Viewer};
use crate::job::{JobKind, JobStatus};
use crate::store::{JobFilter, JobRow, JobState};

/// The filter form's fields and the page, as the query string gives them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct JobsQuery {
    kind: Option<String>,
    status: Option<String>,
    error_code: Option<String>,
    request_id: Option<String>,
    project: Option<String>,
    server: Option<String>,
    page: Option<String>,
}

/// A value given and not blank, trimmed.
fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The query as a filter and a page number (1-based); a kind, status or
/// page that is not one is refused with why.
pub(crate) fn parse_query(query: &JobsQuery) -> Result<(JobFilter, u32), String> {
    let kind = match given(&query.kind) {
        None => None,
        Some(k) => Some(
            JobKind::ALL
                .into_iter()
                .find(|kind| kind.as_str() == k)
                .ok_or_else(|| format!("kind: `{k}` is not deploy or provision"))?,
        ),
    };
    let status = match given(&query.status).as_deref() {
        None => None,
        Some("running") => Some(JobState::Running),
        Some("success") => Some(JobState::Finished(JobStatus::Success)),
        Some("failed") => Some(JobState::Finished(JobStatus::Failed)),
        Some(other) => {
            return Err(format!(
                "status: `{other}` is not running, success or failed"
            ));
        }
    };
    let page = match given(&query.page) {
        None => 1,
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| format!("page: `{p}` is not a page number"))?,
    };
    let filter = JobFilter {
        kind,
        status,
        error_code: given(&query.error_code),
        request_id: given(&query.request_id),
        project: given(&query.project),
        server: given(&query.server),
    };
    Ok((filter, page))
}

/// The query string of `filter` at `page`, for the pagination links.
pub(crate) fn query_string(filter: &JobFilter, page: u32) -> String {
    let pairs = [
        ("kind", filter.kind.map(|k| k.as_str().to_owned())),
        ("status", filter.status.map(|s| s.as_str().to_owned())),
        ("error_code", filter.error_code.clone()),
        ("request_id", filter.request_id.clone()),
        ("project", filter.project.clone()),
        ("server", filter.server.clone()),
    ];
    let mut parts: Vec<String> = pairs
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", url_part(&v))))
        .collect();
    parts.push(format!("page={page}"));
    format!("?{}", parts.join("&"))
}

/// `GET /jobs`.
pub(crate) async fn page(
    State(console): State<Shared>,
    viewer: Viewer,
    Query(query): Query<JobsQuery>,
) -> Result<Response, Failure> {
    let (filter, page) =
        parse_query(&query).map_err(|why| Failure::new(StatusCode::BAD_REQUEST, why))?;
    let jobs = console.store.list_jobs(&filter, page).await?;
    let rows: String = jobs.jobs.iter().map(|job| row(&console, job)).collect();
    let rows = if rows.is_empty() {
        "<tr><td colspan=\"8\">No jobs match.</td></tr>".to_owned()
    } else {
        rows
    };
    let mut pager = String::new();
    if page > 1 {
        pager.push_str(&format!(
            "<a id=\"prev\" rel=\"prev\" href=\"/jobs{}\">Newer</a> ",
            esc(&query_string(&filter, page - 1))
        ));
    }
    pager.push_str(&format!("<span>Page {page}</span>"));
    if jobs.more {
        pager.push_str(&format!(
            " <a id=\"next\" rel=\"next\" href=\"/jobs{}\">Older</a>",
            esc(&query_string(&filter, page + 1))
        ));
    }
    let body = format!(
        "{}{}<nav class=\"pager\" aria-label=\"Pages\">{pager}</nav>",
        filter_form(&console, &filter),
        html::table(
            "jobs",
            "Jobs, newest first",
            &[
                "Kind",
                "Request id",
                "Status",
                "Error code",
                "Target",
                "Project",
                "Created",
                "Finished"
            ],
            &rows
        ),
    );
    Ok(html::respond(
        StatusCode::OK,
        html::page("Jobs", Some(Nav::Jobs), &body, Some(&viewer)),
        Some(&viewer),
    ))
}

/// A job's project: the result's or the payload's project id or name.
fn project(job: &JobRow) -> Option<String> {
    let from = |value: &Option<serde_json::Value>, key: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    from(&job.payload, "project_name")
        .or_else(|| from(&job.result, "project_id"))
        .or_else(|| from(&job.payload, "project_id"))
}

fn row(console: &Console, job: &JobRow) -> String {
    let id = console.show(&job.request_id);
    format!(
        "<tr data-request-id=\"{id}\" data-kind=\"{kind}\"><td data-col=\"kind\">{kind}</td>\
         <td data-col=\"request_id\"><a href=\"/jobs/{kind}/{href}\">{id}</a></td>\
         <td data-col=\"status\"><span class=\"status status-{status}\">{status}</span></td>\
         <td data-col=\"error_code\">{code}</td><td data-col=\"target\">{target}</td>\
         <td data-col=\"project\">{project}</td><td data-col=\"created\">{created}</td>\
         <td data-col=\"finished\">{finished}</td></tr>",
        kind = job.kind.as_str(),
        href = url_part(&job.request_id),
        status = job.status.as_str(),
        code = console.show(job.error_code.as_deref().unwrap_or("-")),
        target = console.show(job.target.as_deref().unwrap_or("-")),
        project = console.show(project(job).as_deref().unwrap_or("-")),
        created = html::time(Some(job.created_at)),
        finished = html::time(job.finished_at),
    )
}

fn filter_form(console: &Console, filter: &JobFilter) -> String {
    let select = |name: &str, label: &str, options: &[&str], chosen: Option<&str>| {
        let options: String = std::iter::once("")
            .chain(options.iter().copied())
            .map(|o| {
                let selected = if Some(o) == chosen || (o.is_empty() && chosen.is_none()) {
                    " selected"
                } else {
                    ""
                };
                let text = if o.is_empty() { "any" } else { o };
                format!("<option value=\"{o}\"{selected}>{text}</option>")
            })
            .collect();
        format!(
            "<div class=\"field\"><label for=\"f-{name}\">{label}</label>\
             <select id=\"f-{name}\" name=\"{name}\">{options}</select></div>"
        )
    };
    let text = |name: &str, label: &str, value: &Option<String>| {
        format!(
            "<div class=\"field\"><label for=\"f-{name}\">{label}</label>\
             <input id=\"f-{name}\" name=\"{name}\" type=\"text\" value=\"{}\"></div>",
            console.show(value.as_deref().unwrap_or(""))
        )
    };
    format!(
        "<form id=\"job-filters\" class=\"filters\" method=\"get\" action=\"/jobs\">{}{}{}{}{}{}\
         <div class=\"buttons\"><button type=\"submit\">Filter</button> <a href=\"/jobs\">Clear</a></div></form>",
        select(
            "kind",
            "Kind",
            &["deploy", "provision"],
            filter.kind.map(JobKind::as_str)
        ),
        select(
            "status",
            "Status",
            &["running", "success", "failed"],
            filter.status.map(JobState::as_str)
        ),
        text("error_code", "Error code", &filter.error_code),
        text("request_id", "Request id", &filter.request_id),
        text("project", "Project (id or name)", &filter.project),
        text("server", "Server (address or handle)", &filter.server),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> JobsQuery {
        let text = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", url_part(v)))
            .collect::<Vec<_>>()
            .join("&");
        serde_urlencoded_query(&text)
    }

    fn serde_urlencoded_query(text: &str) -> JobsQuery {
        let uri: axum::http::Uri = format!("/jobs?{text}").parse().unwrap();
        Query::<JobsQuery>::try_from_uri(&uri).unwrap().0
    }

    #[test]
    fn blank_fields_filter_nothing_and_the_first_page_is_one() {
        let (filter, page) = parse_query(&query(&[("kind", ""), ("server", "  ")])).unwrap();
        assert_eq!(filter, JobFilter::default());
        assert_eq!(page, 1);
    }

    #[test]
    fn every_field_becomes_a_typed_parameter() {
        let (filter, page) = parse_query(&query(&[
            ("kind", "deploy"),
            ("status", "failed"),
            ("error_code", "playbook_failed"),
            ("request_id", "r-1"),
            ("project", "app"),
            ("server", "10.0.0.5"),
            ("page", "3"),
        ]))
        .unwrap();
        assert_eq!(filter.kind, Some(JobKind::Deploy));
        assert_eq!(filter.status, Some(JobState::Finished(JobStatus::Failed)));
        assert_eq!(filter.error_code.as_deref(), Some("playbook_failed"));
        assert_eq!(filter.request_id.as_deref(), Some("r-1"));
        assert_eq!(filter.project.as_deref(), Some("app"));
        assert_eq!(filter.server.as_deref(), Some("10.0.0.5"));
        assert_eq!(page, 3);
    }

    #[test]
    fn an_unknown_kind_status_or_page_is_refused() {
        assert!(parse_query(&query(&[("kind", "build")])).is_err());
        assert!(parse_query(&query(&[("status", "done")])).is_err());
        assert!(parse_query(&query(&[("page", "0")])).is_err());
        assert!(parse_query(&query(&[("page", "x")])).is_err());
    }

    #[test]
    fn pagination_links_keep_the_filter_encoded() {
        let filter = JobFilter {
            status: Some(JobState::Running),
            server: Some("a b&c".into()),
            ..JobFilter::default()
        };
        assert_eq!(
            query_string(&filter, 2),
            "?status=running&server=a%20b%26c&page=2"
        );
        let (back, page) =
            parse_query(&serde_urlencoded_query(&query_string(&filter, 2)[1..])).unwrap();
        assert_eq!(back, filter);
        assert_eq!(page, 2);
    }
}
