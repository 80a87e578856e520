//! `nexus token issue|api-key`: development tokens signed with the key `nexus up` created, and
//! fresh API keys with the digest configuration stores.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use nexus_runtime::http::access::{TokenRequest, digest_hex, generate_api_key, issue_hs256};
use serde_json::json;

use super::Outcome;
use super::auth::{DEV_AUDIENCE, DEV_ISSUER, dev_key_path};
use crate::output;

/// The longest token lifetime `issue` accepts.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a bearer token signed with the development key of `nexus up`
    /// (use it as `--token`, `NEXUS_TOKEN` or `Authorization: Bearer …`).
    Issue(IssueArgs),
    /// Print a new random API key and the `[[auth.api_keys]]` entry that accepts it.
    ApiKey(ApiKeyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// A role the token carries (repeatable): admin, writer, reader, auditor, or one of `[auth.roles]`.
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// The token's subject: who the caller is in logs, audit records and rate limits.
    #[arg(long, default_value = "dev")]
    subject: String,
    /// How long the token is valid: seconds, or a number with `s`, `m`, `h` or `d` (at most 30d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// The data folder of `nexus up` holding the development key.
    #[arg(long, default_value = ".nexus/data")]
    data_dir: PathBuf,
    /// The HS256 secret file to sign with instead of the development key.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// `iss` of the token.
    #[arg(long, default_value = DEV_ISSUER)]
    issuer: String,
    /// `aud` of the token.
    #[arg(long, default_value = DEV_AUDIENCE)]
    audience: String,
}

#[derive(Debug, Args)]
pub(crate) struct ApiKeyArgs {
    /// The key's name (its identity in logs and rate limits).
    #[arg(long)]
    id: String,
    /// A role the key holds (repeatable).
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
}

pub(crate) fn run(command: TokenCommand) -> anyhow::Result<Outcome> {
    match command {
        TokenCommand::Issue(args) => issue(&args),
        TokenCommand::ApiKey(args) => api_key(&args),
    }
}

fn issue(args: &IssueArgs) -> anyhow::Result<Outcome> {
    let path = args
        .secret_file
        .clone()
        .unwrap_or_else(|| dev_key_path(&args.data_dir));
    let secret = std::fs::read(&path).with_context(|| {
        format!(
            "failed to read the signing key {} (`nexus up` creates it in its data folder)",
            path.display()
        )
    })?;
    let token = issue_hs256(
        secret.trim_ascii(),
        &TokenRequest {
            issuer: &args.issuer,
            audience: &args.audience,
            subject: &args.subject,
            roles: &args.roles,
            roles_claim: "roles",
            ttl: args.ttl,
            kid: None,
        },
    )?;
    output::line(&token)?;
    Ok(Outcome::Clean)
}

fn api_key(args: &ApiKeyArgs) -> anyhow::Result<Outcome> {
    let key = generate_api_key().context("failed to draw random bytes")?;
    let entry = json!({"id": args.id, "sha256": digest_hex(&key), "roles": args.roles});
    output::line(&key)?;
    output::line(&format!(
        "# add to the access configuration (nexus.toml or --auth FILE); keep the key above secret:\n[[auth.api_keys]]\nid = {}\nsha256 = {}\nroles = {}",
        entry["id"], entry["sha256"], entry["roles"]
    ))?;
    Ok(Outcome::Clean)
}

/// `90`, `90s`, `15m`, `1h`, `7d`.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 1h or 7d"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    let ttl = Duration::from_secs(seconds);
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(format!("`{text}`: between 1s and 30d"));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_bounds() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("31d").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
