//! HTML by hand, escaped: the layout every page shares (skip link, nav,
//! `<main id="main">`), the escaping every value passes, and the response
//! that carries a page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::auth::Viewer;

/// The sections of the nav, in order: id, href, label.
const SECTIONS: [(Nav, &str, &str, &str); 4] = [
    (Nav::Overview, "nav-overview", "/", "Overview"),
    (Nav::Jobs, "nav-jobs", "/jobs", "Jobs"),
    (Nav::Dead, "nav-dead", "/dead", "Dead letters"),
    (Nav::Servers, "nav-servers", "/servers", "Servers"),
];

/// Which section a page belongs to (marked `aria-current`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Jobs,
    Dead,
    Servers,
}

/// `text` safe inside an element or a quoted attribute.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment or query value, percent-encoded (then safe in HTML too).
pub(crate) fn url_part(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, URL_PART).to_string()
}

/// RFC 3986 unreserved characters stay literal.
const URL_PART: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `2026-01-31 12:00:00 UTC`, or `-`.
pub(crate) fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// A whole page: `title` as `<title>` and `<h1>`, `body` (already
/// escaped) inside `<main id="main">`.
pub(crate) fn page(title: &str, nav: Option<Nav>, body: &str, viewer: Option<&Viewer>) -> String {
    let links: String = SECTIONS
        .iter()
        .map(|(section, id, href, label)| {
            let current = if Some(*section) == nav {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<li><a id=\"{id}\" href=\"{href}\"{current}>{label}</a></li>")
        })
        .collect();
    let logout = match viewer {
        Some(viewer) if viewer.logged_in => format!(
            "<form class=\"logout\" method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Log out</button></form>",
            esc(&viewer.csrf)
        ),
        _ => String::new(),
    };
    let title = esc(title);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} - infra-service console</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header class=\"top\"><span class=\"brand\">infra-service console</span>\
         <nav aria-label=\"Sections\"><ul>{links}</ul></nav>{logout}</header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{title}</h1>\n{body}</main></body></html>\n"
    )
}

/// A page as a response (with the viewer's cookie, if it needs one).
pub(crate) fn respond(status: StatusCode, page: String, viewer: Option<&Viewer>) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response();
    if let Some(cookie) = viewer.and_then(Viewer::set_cookie)
        && let Ok(value) = HeaderValue::from_str(&cookie)
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// A flash message for the top of a page.
pub(crate) fn flash(text: &str) -> String {
    format!(
        "<p id=\"flash\" class=\"flash\" role=\"status\">{}</p>",
        esc(text)
    )
}

/// A table in its scrolling wrapper: `id`, a caption, column headings and
/// rows (already escaped `<tr>`s).
pub(crate) fn table(id: &str, caption: &str, columns: &[&str], rows: &str) -> String {
    let heads: String = columns
        .iter()
        .map(|c| format!("<th scope=\"col\">{}</th>", esc(c)))
        .collect();
    format!(
        "<div class=\"table-wrap\"><table id=\"{id}\"><caption>{}</caption>\
         <thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table></div>",
        esc(caption)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_are_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("plain text"), "plain text");
    }

    #[test]
    fn a_url_part_cannot_break_out_of_its_attribute_or_path() {
        assert_eq!(url_part("a b/\"<"), "a%20b%2F%22%3C");
        assert_eq!(url_part("r-1.x_2:3"), "r-1.x_2%3A3");
    }

    #[test]
    fn every_page_has_the_landmarks_the_tests_select_on() {
        let page = page("Jobs", Some(Nav::Jobs), "<p>x</p>", None);
        for needle in [
            "<html lang=\"en\">",
            "href=\"#main\"",
            "<main id=\"main\"",
            "<nav aria-label=\"Sections\">",
            "id=\"nav-jobs\" href=\"/jobs\" aria-current=\"page\"",
            "id=\"nav-overview\"",
            "id=\"nav-dead\"",
            "id=\"nav-servers\"",
            "<h1>Jobs</h1>",
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
    }
}
