//! The layer's own answers: `application/problem+json` documents (RFC 9457).

use std::fmt::Write as _;
use std::time::Duration;

use ::http::header::{CONTENT_TYPE, LINK, RETRY_AFTER};
use ::http::{HeaderValue, Response, StatusCode};
use bytes::Bytes;
use http_body_util::Full;

use super::body::boxed;
use super::ResponseBody;

/// What went wrong, as the layer tells the client.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) status: StatusCode,
    /// The title used with a documentation URI as the problem type (with `about:blank` the
    /// title is the status's reason phrase, as RFC 9457 asks).
    pub(crate) title: &'static str,
    /// A stable, machine-readable name for the problem (the `code` extension member).
    pub(crate) code: &'static str,
    pub(crate) detail: String,
    /// Seconds for `Retry-After`.
    pub(crate) retry_after: Option<u64>,
    /// The status of the original response (extension member `original_status`).
    pub(crate) original_status: Option<StatusCode>,
}

impl Problem {
    pub(crate) fn new(
        status: StatusCode,
        title: &'static str,
        code: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            title,
            code,
            detail: detail.into(),
            retry_after: None,
            original_status: None,
        }
    }

    pub(crate) fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(retry_after_secs(after));
        self
    }

    /// The JSON document. `problem_type` is the documentation URI, if the layer has one.
    pub(crate) fn to_json(&self, problem_type: Option<&str>) -> String {
        let (ty, title) = match problem_type {
            Some(uri) => (uri, self.title),
            None => (
                "about:blank",
                self.status.canonical_reason().unwrap_or(self.title),
            ),
        };
        let mut s = String::with_capacity(160 + self.detail.len());
        s.push_str("{\"type\":");
        push_json_str(&mut s, ty);
        s.push_str(",\"title\":");
        push_json_str(&mut s, title);
        let _ = write!(s, ",\"status\":{}", self.status.as_u16());
        s.push_str(",\"detail\":");
        push_json_str(&mut s, &self.detail);
        s.push_str(",\"code\":");
        push_json_str(&mut s, self.code);
        if let Some(original) = self.original_status {
            let _ = write!(s, ",\"original_status\":{}", original.as_u16());
        }
        s.push('}');
        s
    }

    /// The response: the status, `Content-Type: application/problem+json`, `Retry-After` where
    /// it applies and `Link: <uri>; rel="describedby"` when the layer has a documentation URI.
    pub(crate) fn into_response(
        self,
        problem_type: Option<&str>,
        link: Option<&HeaderValue>,
    ) -> Response<ResponseBody> {
        let body = Full::new(Bytes::from(self.to_json(problem_type)));
        let mut response = Response::new(boxed(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(link) = link {
            headers.insert(LINK, link.clone());
        }
        response
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Appends `v` as a JSON string literal.
fn push_json_str(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn documents() {
        let p = Problem::new(StatusCode::CONFLICT, "Busy", "in_flight", "wait \"a bit\"")
            .retry_after(Duration::from_millis(1500));
        assert_eq!(
            p.to_json(None),
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"wait \"a bit\"","code":"in_flight"}"#
        );
        assert_eq!(
            p.to_json(Some("https://example.com/idempotency")),
            r#"{"type":"https://example.com/idempotency","title":"Busy","status":409,"detail":"wait \"a bit\"","code":"in_flight"}"#
        );
        let r = p.into_response(None, None);
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/problem+json");
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }
}
