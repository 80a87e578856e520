//! Secrets out of output: the one redaction of connection strings that everything printing or
//! logging a URL goes through (the runtime's logs and the CLI's output alike).

/// The mask put in place of a secret.
const MASK: &str = "***";

/// `text` (a URL or a `key=value` connection string) with its secrets replaced by `***`:
/// the password of `user:password@`, a token-only userinfo (`nats://token@host`, and any
/// userinfo of `nats`, `tls`, `ws` and `wss` URLs, where a lone user is a token), and the
/// values of query or keyword parameters whose name says secret (`password`, `passwd`, `pwd`,
/// `token`, `secret`, `api_key`, `apikey`, `credential`, `sig`, `signature` — also inside
/// longer names such as `client_secret` or `sslpassword`).
///
/// ```
/// use nexus_runtime::redact;
///
/// assert_eq!(redact::url("postgres://app:s3cret@db/orders"), "postgres://app:***@db/orders");
/// assert_eq!(redact::url("nats://s3cret@127.0.0.1:4222"), "nats://***@127.0.0.1:4222");
/// assert_eq!(redact::url("postgres://db/orders?password=s3cret"), "postgres://db/orders?password=***");
/// ```
pub fn url(text: &str) -> String {
    let Some(scheme_end) = text.find("://").map(|i| i + 3) else {
        return keywords(text);
    };
    let scheme = text[..scheme_end - 3].to_ascii_lowercase();
    let authority_end = text[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| scheme_end + i);
    let authority = &text[scheme_end..authority_end];
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..scheme_end]);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None if token_scheme(&scheme) => out.push_str(MASK),
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    let rest = &text[authority_end..];
    let (before_fragment, fragment) = rest
        .split_once('#')
        .map_or((rest, None), |(a, f)| (a, Some(f)));
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&parameters(query, '&'));
        }
        None => out.push_str(before_fragment),
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// `text` (free text such as an error message) with the secrets of every URL in it and of every
/// `key=value` word whose name says secret replaced by `***`, as [`url`] does for one URL.
///
/// ```
/// use nexus_runtime::redact;
///
/// assert_eq!(
///     redact::text("cannot connect to nats://s3cret@10.0.0.1:4222: timed out"),
///     "cannot connect to nats://***@10.0.0.1:4222: timed out"
/// );
/// ```
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` right before `://`.
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        // The URL ends at whitespace, a quote or a closing bracket.
        let end = rest[at + 3..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | ')' | ']')
            })
            .map_or(rest.len(), |i| at + 3 + i);
        out.push_str(&words(&rest[..start]));
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(&words(rest));
    out
}

/// `text` with the values of secret `key=value` words masked (whitespace kept as it was).
fn words(text: &str) -> String {
    if !text.contains('=') {
        return text.to_owned();
    }
    text.split_inclusive(char::is_whitespace)
        .map(|word| {
            let trimmed = word.trim_end();
            match trimmed.split_once('=') {
                Some((name, _)) if secret_name(name) => {
                    format!("{name}={MASK}{}", &word[trimmed.len()..])
                }
                _ => word.to_owned(),
            }
        })
        .collect()
}

/// An error and its causes on one line, `: `-separated, with every secret [`text`] finds
/// masked: what a log line shows of an error. Never for a response body: the causes are
/// internals.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    text(&message)
}

/// Schemes whose lone userinfo is a token, not a user name.
fn token_scheme(scheme: &str) -> bool {
    matches!(scheme, "nats" | "tls" | "ws" | "wss")
}

/// Whether a parameter of this name holds a secret.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "pwd",
        "token",
        "secret",
        "api_key",
        "apikey",
        "credential",
        "signature",
    ]
    .iter()
    .any(|word| name.contains(word))
        || matches!(name.as_str(), "sig" | "pass" | "key")
}

/// `query` (`a=1&password=x`) with the values of secret parameters masked.
fn parameters(query: &str, separator: char) -> String {
    query
        .split(separator)
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_name(name) => format!("{name}={MASK}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(&separator.to_string())
}

/// A keyword/value connection string (`host=db user=app password=x`) with secrets masked;
/// any other text comes back unchanged.
fn keywords(text: &str) -> String {
    if !text.contains('=') {
        return text.to_owned();
    }
    text.split(' ')
        .map(|word| match word.split_once('=') {
            Some((name, _)) if secret_name(name) => format!("{name}={MASK}"),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::url;

    #[derive(Debug, thiserror::Error)]
    #[error("event bus is unavailable")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_error_chain_shows_every_cause_with_its_secrets_masked() {
        let err = Outer(std::io::Error::other(
            "connect to nats://user:s3cret@10.0.0.1:4222 (tls://t0ken@b:4222) failed, password=s3cret",
        ));
        assert_eq!(
            super::error_chain(&err),
            "event bus is unavailable: connect to nats://user:***@10.0.0.1:4222 \
             (tls://***@b:4222) failed, password=***"
        );
        // No URL, nothing secret: the text as it was.
        let plain = Outer(std::io::Error::other("missed idle heartbeat"));
        assert_eq!(
            super::error_chain(&plain),
            "event bus is unavailable: missed idle heartbeat"
        );
        assert_eq!(
            super::text("missed idle heartbeat at a=b c://"),
            "missed idle heartbeat at a=b c://"
        );
    }

    #[test]
    fn every_form_of_secret_is_masked_and_nothing_else() {
        for (given, shown) in [
            // Passwords in the userinfo.
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "postgres://app:s3cret@db:5432/orders",
                "postgres://app:***@db:5432/orders",
            ),
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "postgres://app:p@ss@db/orders",
                "postgres://app:***@db/orders",
            ),
            // A lone user is a name, except where it is a token.
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            ("nats://s3cret@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
            ("NATS://s3cret@127.0.0.1:4222", "NATS://***@127.0.0.1:4222"),
            (
                "tls://s3cret@nats.example:4222",
                "tls://***@nats.example:4222",
            ),
            ("wss://s3cret@nats.example", "wss://***@nats.example"),
            (
                "nats://user:s3cret@127.0.0.1:4222",
                "nats://user:***@127.0.0.1:4222",
            ),
            // Secret query parameters.
            (
                "postgres://db/orders?user=app&password=s3cret",
                "postgres://db/orders?user=app&password=***",
            ),
            (
                "postgres://db/orders?sslmode=require&sslpassword=s3cret",
                "postgres://db/orders?sslmode=require&sslpassword=***",
            ),
            (
                "http://registry:8081/subjects?token=s3cret#top",
                "http://registry:8081/subjects?token=***#top",
            ),
            (
                "http://h/?access_token=s3cret&client_secret=s3cret&api_key=s3cret",
                "http://h/?access_token=***&client_secret=***&api_key=***",
            ),
            ("http://h/?TOKEN=s3cret", "http://h/?TOKEN=***"),
            (
                "https://bucket/obj?X-Amz-Signature=s3cret&sig=s3cret",
                "https://bucket/obj?X-Amz-Signature=***&sig=***",
            ),
            // Keyword/value connection strings.
            (
                "host=db user=app password=s3cret dbname=orders",
                "host=db user=app password=*** dbname=orders",
            ),
            // Nothing secret: unchanged.
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            (
                "postgres://db:5432/orders?user=a@b",
                "postgres://db:5432/orders?user=a@b",
            ),
            (
                "sqlite:.nexus/data/registry.db",
                "sqlite:.nexus/data/registry.db",
            ),
            ("http://127.0.0.1:8082", "http://127.0.0.1:8082"),
            (
                "http://h/path?page=2&limit=10",
                "http://h/path?page=2&limit=10",
            ),
            ("", ""),
        ] {
            assert_eq!(url(given), shown, "{given}");
            assert!(!url(given).contains("s3cret"), "{given}");
        }
    }
}
