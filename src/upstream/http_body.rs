//! What the `remote` link and a remote server's token share of reqwest:
//! an error told without its URL, and a body read up to a limit.

/// reqwest errors print the URL, which may carry credentials in its query.
pub(super) fn without_url(err: &reqwest::Error) -> String {
    let mut text = if err.is_connect() {
        "connection failed".to_owned()
    } else if err.is_timeout() {
        "timed out".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// A response's whole body, refused past `limit` bytes.
pub(super) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| format!("cannot read the response: {}", without_url(&err)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("the server's response exceeds {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
