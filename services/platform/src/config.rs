//! Reading settings from the environment.
//!
//! Each service owns one typed config struct; these helpers only turn a variable into a
//! value or into an error that names the variable, so a misconfigured deployment fails at
//! start with a message an operator can act on.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow};

/// A variable's value, or `default` when it is unset or empty.
pub fn var_or<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => raw
            .trim()
            .parse()
            .map_err(|e| anyhow!("environment variable {name}={raw:?} is invalid: {e}")),
        _ => Ok(default),
    }
}

/// A variable that has no sensible default.
pub fn required(name: &str) -> anyhow::Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .with_context(|| format!("environment variable {name} must be set"))
}

/// A variable that may be absent; unset and empty are the same.
pub fn optional(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A duration given in milliseconds.
pub fn millis_or(name: &str, default_ms: u64) -> anyhow::Result<Duration> {
    var_or(name, default_ms).map(Duration::from_millis)
}

/// A boolean written as `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`.
pub fn flag_or(name: &str, default: bool) -> anyhow::Result<bool> {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(anyhow!(
                "environment variable {name}={raw:?} is not a boolean (use true or false)"
            )),
        },
        _ => Ok(default),
    }
}

/// A comma-separated list; empty entries are dropped.
pub fn list(name: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
