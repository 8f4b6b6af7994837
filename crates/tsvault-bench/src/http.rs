//! The one HTTP client every system is driven with.

use std::time::Duration;

use anyhow::{Context, ensure};

/// A client that returns error statuses as responses, so that their bodies can be reported.
/// It asks for answers uncompressed: tsvault does not compress them, VictoriaMetrics and
/// InfluxDB gzip them when asked, and on loopback that would only add the compression and
/// decompression (on the same cores) to their query times.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .accept_encoding(ureq::config::AutoHeaderValue::None)
        .timeout_global(Some(Duration::from_secs(900)))
        .build()
        .into()
}

/// The body of a response, limited to 1 GiB.
fn read(mut r: ureq::http::Response<ureq::Body>, what: &str) -> anyhow::Result<String> {
    let status = r.status().as_u16();
    let text = r
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .with_context(|| format!("reading the answer to {what}"))?;
    ensure!(
        (200..300).contains(&status),
        "{what} answered {status}: {}",
        text.chars().take(2000).collect::<String>()
    );
    Ok(text)
}

/// `GET url` with query parameters, the body of a 2xx answer or an error naming the request.
pub fn get(agent: &ureq::Agent, url: &str, params: &[(&str, String)]) -> anyhow::Result<String> {
    let r = agent
        .get(url)
        .query_pairs(params.iter().map(|(k, v)| (*k, v.as_str())))
        .call()
        .with_context(|| format!("GET {url}"))?;
    read(r, &format!("GET {url} {params:?}"))
}

/// `POST url` with a body, the body of a 2xx answer or an error naming the request.
pub fn post(
    agent: &ureq::Agent,
    url: &str,
    content_type: &str,
    body: &[u8],
) -> anyhow::Result<String> {
    let r = agent
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .with_context(|| format!("POST {url}"))?;
    read(r, &format!("POST {url}"))
}
