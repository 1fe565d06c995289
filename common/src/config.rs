//! Layered configuration loading for the infrawatch binaries.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, environment variables
//! with the binary's prefix (`INFRAWATCH_AGENT_…`, `INFRAWATCH_AGGREGATOR_…`; `__`
//! separates nested keys, so `INFRAWATCH_AGGREGATOR_STORAGE__URL` sets `storage.url`),
//! then `--set key.path=value` flags. Every error names the field and what was
//! expected; binaries exit with [`EX_USAGE`] on any of them.

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Exit status for invalid configuration or usage (sysexits.h `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

/// One problem with the configuration, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `storage.url`.
    pub field: String,
    /// What is wrong and what was expected.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// Where a binary's configuration comes from.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSources<'a> {
    /// The TOML file, if one was given; it must exist.
    pub file: Option<&'a Path>,
    /// Environment prefix including the trailing underscore, e.g. `INFRAWATCH_AGENT_`.
    pub env_prefix: &'a str,
    /// `key.path=value` overrides from the command line, applied last.
    pub overrides: &'a [String],
}

/// Loads `T` from its defaults and the given sources.
pub fn load<T>(sources: ConfigSources<'_>) -> Result<T, ConfigErrors>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = sources.file {
        if !file.is_file() {
            return Err(ConfigError::new(
                "config file",
                format!("{} does not exist or is not a file", file.display()),
            )
            .into());
        }
        figment = figment.merge(Toml::file_exact(file));
    }
    figment = figment.merge(
        Env::prefixed(sources.env_prefix)
            .ignore(&["config_file"])
            .split("__"),
    );
    for entry in sources.overrides {
        let (key, value) = parse_override(entry)?;
        figment = figment.merge(Serialized::default(&key, value));
    }
    figment.extract::<T>().map_err(from_figment)
}

/// Splits `key.path=value` and parses the value like an environment value
/// (numbers, booleans, arrays `[a, b]`, else a string).
fn parse_override(entry: &str) -> Result<(String, figment::value::Value), ConfigError> {
    let Some((key, raw)) = entry.split_once('=') else {
        return Err(ConfigError::new(
            "--set",
            format!("`{entry}` is not of the form key.path=value"),
        ));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(ConfigError::new(
            "--set",
            format!("`{entry}` has an empty key"),
        ));
    }
    // figment's unescaping indexes by characters as if they were bytes and panics
    // on a backslash after non-ASCII text, so such values are refused here.
    if raw.contains('\\') && !raw.is_ascii() {
        return Err(ConfigError::new(
            "--set",
            format!("`{entry}`: a value with a backslash must be ASCII"),
        ));
    }
    let value = raw
        .parse::<figment::value::Value>()
        .unwrap_or_else(|never| match never {});
    Ok((key.to_string(), value))
}

fn from_figment(error: figment::Error) -> ConfigErrors {
    ConfigErrors(
        error
            .into_iter()
            .map(|e| {
                let field = if e.path.is_empty() {
                    "(top level)".to_string()
                } else {
                    e.path.join(".")
                };
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| match &m.source {
                        // Serialized values are the --set overrides (defaults never fail).
                        _ if m.name.contains("figment::value") => " (from --set)".to_string(),
                        Some(src) => format!(" (from {} {src})", m.name),
                        None => format!(" (from {})", m.name),
                    })
                    .unwrap_or_default();
                ConfigError::new(field, format!("{}{source}", e.kind))
            })
            .collect(),
    )
}

/// Every problem of several checks, so that a binary reports all of them at once.
pub fn all_of(
    checks: impl IntoIterator<Item = Result<(), ConfigErrors>>,
) -> Result<(), ConfigErrors> {
    let problems: Vec<ConfigError> = checks
        .into_iter()
        .filter_map(Result::err)
        .flat_map(|e| e.0)
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(problems))
    }
}

/// Collects validation problems so a binary can report all of them at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<ConfigError>);

impl Problems {
    /// Records a problem with `field`.
    pub fn push(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.push(ConfigError::new(field, problem));
    }

    /// Records a problem when `ok` is false.
    pub fn check(&mut self, ok: bool, field: &str, problem: impl FnOnce() -> String) {
        if !ok {
            self.push(field, problem());
        }
    }

    /// `Ok` when nothing was recorded.
    pub fn finish(self) -> Result<(), ConfigErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[derive(Debug, Default, serde::Deserialize, serde::Serialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        port: u16,
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize, serde::Serialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        name: String,
        items: Vec<String>,
    }

    fn sources<'a>(file: Option<&'a Path>, overrides: &'a [String]) -> ConfigSources<'a> {
        ConfigSources {
            file,
            env_prefix: "INFRAWATCH_CONFIG_TEST_UNSET_",
            overrides,
        }
    }

    #[test]
    fn a_non_ascii_escaped_override_is_an_error_not_a_panic() {
        let overrides = vec!["port=\"¡\\\u{e000}\"".to_string()];
        let err = load::<Sample>(sources(None, &overrides)).unwrap_err();
        assert_eq!(err.0[0].field, "--set");
    }

    #[test]
    fn file_then_overrides() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "port = 1\n[inner]\nname = \"a\"").unwrap();
        let overrides = vec!["port=2".to_string(), "inner.items=[x, y]".to_string()];
        let cfg: Sample = load(sources(Some(f.path()), &overrides)).unwrap();
        assert_eq!(cfg.port, 2);
        assert_eq!(cfg.inner.name, "a");
        assert_eq!(cfg.inner.items, vec!["x", "y"]);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "port = \"not a number\"").unwrap();
        let err = load::<Sample>(sources(Some(f.path()), &[])).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].field, "port");
        assert!(err.0[0].problem.contains("expected u16"), "{err}");
    }

    #[test]
    fn unknown_field_is_named() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[inner]\nnmae = \"typo\"").unwrap();
        let err = load::<Sample>(sources(Some(f.path()), &[])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("inner") && text.contains("nmae"), "{text}");
    }

    #[test]
    fn missing_file_and_bad_override_are_errors() {
        let err = load::<Sample>(sources(Some(Path::new("/nonexistent/x.toml")), &[])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"));
        let wrong = vec!["port=abc".to_string()];
        let err = load::<Sample>(sources(None, &wrong)).unwrap_err();
        assert!(err.to_string().contains("(from --set)"), "{err}");
        let bad = vec!["no-equals-sign".to_string()];
        let err = load::<Sample>(sources(None, &bad)).unwrap_err();
        assert_eq!(err.0[0].field, "--set");
    }
}
