//! `ceres.env`: one `KEY=value` file per host, usable as a systemd
//! `EnvironmentFile=`, layered under the process environment and flags.
//!
//! Every `CERES_*` key is also a `--flag` (the clap definition of a command
//! is the list of keys), unknown keys and bad values are errors that name the
//! key and where it came from, and config errors exit with [`EXIT_CONFIG`].

pub mod manual;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Exit code for configuration errors (`EX_CONFIG` from sysexits.h), distinct
/// from usage errors (2) and runtime failures (1), so scripts and systemd
/// units can tell "fix the file" from "it crashed".
pub const EXIT_CONFIG: i32 = 78;

/// Default config file.
pub const DEFAULT_CONFIG: &str = "/etc/ceres/ceres.env";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ceres";

/// Keys that may appear in the file besides `CERES_*` ones.
const FOREIGN_KEYS_ALLOWED: &[&str] = &["RUST_LOG"];

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(String),
    /// The process environment.
    Env,
    /// A line of the config file.
    File(PathBuf, usize),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
            Origin::Env => f.write_str("the environment"),
            Origin::File(path, line) => write!(f, "{}:{line}", path.display()),
        }
    }
}

/// A configuration error. Its message names the key and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A line is not `KEY=value`.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A key CERES does not know.
    #[error("unknown key {key} at {origin}{hint}")]
    UnknownKey {
        /// The key.
        key: String,
        /// Where it was set.
        origin: Origin,
        /// ", did you mean X?" or a pointer to the list of keys.
        hint: String,
    },
    /// A state file that does not parse. Starting anyway would silently
    /// forget what it held (used keys, a pending rotation, home's peer), so
    /// the agent stops and says which file and what to do.
    #[error("state file {path} is damaged ({detail}); {advice}")]
    DamagedState {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
        /// What the operator can do.
        advice: String,
    },
    /// The state directory lacks what the command needs (no enrolment, no
    /// CA): only an operator's step fixes it, so a service manager must not
    /// restart the agent in a loop (exit 78, like any other config error).
    #[error("{dir} {lacks}: {advice}")]
    StateNotSetUp {
        /// The state directory (or the config file `init` has not written yet).
        dir: PathBuf,
        /// What is missing ("holds no credentials").
        lacks: String,
        /// The command that sets it up.
        advice: String,
    },
    /// A value that does not parse.
    #[error("{key}={value:?} at {origin}: {message}")]
    Invalid {
        /// The key.
        key: String,
        /// The raw value.
        value: String,
        /// Where it was set.
        origin: Origin,
        /// Why it is wrong.
        message: String,
    },
    /// A required key is not set anywhere.
    #[error("{key} is not set: add `{key}=...` to {file} or pass --{flag}")]
    Missing {
        /// The key.
        key: String,
        /// The flag spelling.
        flag: String,
        /// The config file looked at.
        file: String,
    },
}

/// One `KEY=value` line.
#[derive(Debug, Clone)]
struct Entry {
    value: String,
    line: usize,
}

/// A parsed `ceres.env`.
#[derive(Debug, Clone, Default)]
pub struct EnvFile {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

impl EnvFile {
    /// Parses `text` as read from `path`.
    ///
    /// Accepts what systemd's `EnvironmentFile=` accepts in practice: blank
    /// lines, `#` and `;` comments, `KEY=value`, optional `export ` prefix,
    /// values in single or double quotes.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut entries = BTreeMap::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let syntax = |message: String| ConfigError::Syntax {
                path: path.to_owned(),
                line,
                message,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            let trimmed = trimmed.strip_prefix("export ").unwrap_or(trimmed);
            let Some((key, value)) = trimmed.split_once('=') else {
                return Err(syntax(format!("expected KEY=value, found {trimmed:?}")));
            };
            let key = key.trim();
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                || key.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(syntax(format!(
                    "{key:?} is not a valid key (keys are upper case, like CERES_DOMAIN)"
                )));
            }
            let value = unquote(value.trim()).map_err(|m| syntax(format!("{key}: {m}")))?;
            if let Some(prev) = entries.get(key) {
                let prev: &Entry = prev;
                return Err(syntax(format!(
                    "{key} is set twice (first on line {})",
                    prev.line
                )));
            }
            entries.insert(key.to_owned(), Entry { value, line });
        }
        Ok(Self {
            path: path.to_owned(),
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keys in the file, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

fn unquote(value: &str) -> Result<String, String> {
    for q in ['"', '\''] {
        if let Some(rest) = value.strip_prefix(q) {
            return rest
                .strip_suffix(q)
                .map(str::to_owned)
                .ok_or_else(|| format!("unterminated {q} quote"));
        }
    }
    // An unquoted value ends at an inline comment.
    let v = match value.find(" #") {
        Some(i) => value[..i].trim_end(),
        None => value,
    };
    Ok(v.to_owned())
}

/// The layers a value can come from: flags (given per lookup), the process
/// environment's `CERES_*` variables, and the config file.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    file: Option<EnvFile>,
    env: BTreeMap<String, String>,
    file_label: String,
}

impl Layers {
    /// Loads the config file and the process environment.
    ///
    /// A missing file is fine when it is the default path (every key can come
    /// from flags); a missing file the user named with `--config` is an error.
    pub fn load(config: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match config {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => Some(EnvFile::parse(&path, &text)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
            Err(error) => return Err(ConfigError::Io { path, error }),
        };
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with("CERES_"))
            .collect();
        Ok(Self {
            file,
            env,
            file_label: path.display().to_string(),
        })
    }

    /// Loads `path`; when it does not exist and `missing_ok` (the default
    /// path, or a command that creates the file), only flags and environment count.
    pub fn load_path(path: &Path, missing_ok: bool) -> Result<Self, ConfigError> {
        match Self::load(Some(path)) {
            Err(ConfigError::Io { error, .. })
                if error.kind() == std::io::ErrorKind::NotFound && missing_ok =>
            {
                let env = std::env::vars()
                    .filter(|(k, _)| k.starts_with("CERES_"))
                    .collect();
                Ok(Self {
                    file: None,
                    env,
                    file_label: path.display().to_string(),
                })
            }
            other => other,
        }
    }

    /// Layers from a parsed file and an explicit environment (for tests).
    pub fn from_parts(file: Option<EnvFile>, env: BTreeMap<String, String>) -> Self {
        let file_label = file
            .as_ref()
            .map(|f| f.path.display().to_string())
            .unwrap_or_default();
        Self {
            file,
            env,
            file_label,
        }
    }

    /// The file, if one was read.
    pub fn file(&self) -> Option<&EnvFile> {
        self.file.as_ref()
    }

    /// Refuses keys in the file or the environment that are not in `known`.
    pub fn check_keys(&self, known: &[String]) -> Result<(), ConfigError> {
        let file_keys = self.file.iter().flat_map(|f| {
            f.entries
                .iter()
                .map(|(k, e)| (k.as_str(), Origin::File(f.path.clone(), e.line)))
        });
        let env_keys = self.env.keys().map(|k| (k.as_str(), Origin::Env));
        for (key, origin) in file_keys.chain(env_keys) {
            if known.iter().any(|k| k == key) || FOREIGN_KEYS_ALLOWED.contains(&key) {
                continue;
            }
            let best = known
                .iter()
                .map(|k| (strsim::jaro_winkler(k, key), k))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            let hint = match best {
                Some((score, k)) if score > 0.85 => format!(", did you mean {k}?"),
                _ => format!(" (known keys: {})", known.join(", ")),
            };
            return Err(ConfigError::UnknownKey {
                key: key.to_owned(),
                origin,
                hint,
            });
        }
        Ok(())
    }

    /// The raw value of `key` and where it came from: `flag` first, then the
    /// environment, then the file.
    pub fn raw(&self, key: &str, flag: Option<&str>) -> Option<(String, Origin)> {
        if let Some(v) = flag {
            return Some((v.to_owned(), Origin::Flag(flag_for_key(key))));
        }
        if let Some(v) = self.env.get(key) {
            return Some((v.clone(), Origin::Env));
        }
        let f = self.file.as_ref()?;
        let e = f.entries.get(key)?;
        Some((e.value.clone(), Origin::File(f.path.clone(), e.line)))
    }

    /// Parses `key` if set anywhere.
    pub fn get<T>(&self, key: &str, flag: Option<&str>) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.raw(key, flag) {
            None => Ok(None),
            Some((value, origin)) => {
                value
                    .parse::<T>()
                    .map(Some)
                    .map_err(|e| ConfigError::Invalid {
                        key: key.to_owned(),
                        value,
                        origin,
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Parses `key`, or `default` when it is not set.
    pub fn get_or<T>(&self, key: &str, flag: Option<&str>, default: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(key, flag)? {
            Some(v) => Ok(v),
            None => default.parse::<T>().map_err(|e| ConfigError::Invalid {
                key: key.to_owned(),
                value: default.to_owned(),
                origin: Origin::Flag("(built-in default)".into()),
                message: e.to_string(),
            }),
        }
    }

    /// Parses a key that must be set.
    pub fn require<T>(&self, key: &str, flag: Option<&str>) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.get(key, flag)?.ok_or_else(|| ConfigError::Missing {
            key: key.to_owned(),
            flag: flag_for_key(key),
            file: self.file_label.clone(),
        })
    }
}

/// `CERES_PUBLIC_IP` -> `public-ip`.
pub fn flag_for_key(key: &str) -> String {
    key.trim_start_matches("CERES_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

/// `public-ip` or `public_ip` -> `CERES_PUBLIC_IP`.
pub fn key_for_flag(flag: &str) -> String {
    format!("CERES_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// The config keys of a clap command: one per long flag, except the ones
/// that only make sense on a command line.
pub fn keys_of(cmd: &clap::Command, exclude: &[&str]) -> Vec<String> {
    cmd.get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !exclude.contains(l) && *l != "help" && *l != "version")
        .map(key_for_flag)
        .collect()
}

/// A duration in human form: `90s`, `30m`, `1h`, `7d`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("{e} (write durations like 90s, 30m, 1h, 7d)"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// `on`/`off` (also yes/no, true/false, 1/0).
#[derive(Debug, Clone, Copy)]
pub struct Switch(pub bool);

impl std::str::FromStr for Switch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" | "yes" | "true" | "1" => Ok(Switch(true)),
            "off" | "no" | "false" | "0" => Ok(Switch(false)),
            _ => Err("expected on or off".into()),
        }
    }
}

/// A comma-separated list of ports.
#[derive(Debug, Clone)]
pub struct PortList(pub Vec<u16>);

impl std::str::FromStr for PortList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ports: Result<Vec<u16>, _> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u16>())
            .collect();
        let ports = ports.map_err(|e| format!("{e}: expected ports separated by commas"))?;
        if ports.contains(&0) {
            return Err("port 0 is not a port".into());
        }
        Ok(PortList(ports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(text: &str) -> Result<Layers, ConfigError> {
        Ok(Layers::from_parts(
            Some(EnvFile::parse(Path::new("/etc/ceres/ceres.env"), text)?),
            BTreeMap::new(),
        ))
    }

    #[test]
    fn parses_systemd_style_lines() {
        let l = layers("# c\n\nCERES_DOMAIN=example.com\nexport CERES_A=\"x y\"\nCERES_B='z' \nCERES_C=v # note\n").unwrap();
        assert_eq!(l.raw("CERES_DOMAIN", None).unwrap().0, "example.com");
        assert_eq!(l.raw("CERES_A", None).unwrap().0, "x y");
        assert_eq!(l.raw("CERES_B", None).unwrap().0, "z");
        assert_eq!(l.raw("CERES_C", None).unwrap().0, "v");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = layers("CERES_DOMAIN=example.com\nthis is not a line\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/ceres/ceres.env:2:"), "{err}");
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let err = layers("CERES_X=1\nCERES_X=2\n").unwrap_err().to_string();
        assert!(err.contains("set twice") && err.contains(":2:"), "{err}");
    }

    #[test]
    fn unknown_key_suggests_the_near_one() {
        let l = layers("CERES_DOMIAN=example.com\n").unwrap();
        let err = l
            .check_keys(&["CERES_DOMAIN".into(), "CERES_PUBLIC_IP".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown key CERES_DOMIAN") && err.contains("did you mean CERES_DOMAIN"),
            "{err}"
        );
        assert!(err.contains("ceres.env:1"), "{err}");
    }

    #[test]
    fn bad_value_names_key_value_and_line() {
        let l = layers("\nCERES_PUBLIC_IP=300.1.1.1\n").unwrap();
        let err = l
            .get::<std::net::IpAddr>("CERES_PUBLIC_IP", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CERES_PUBLIC_IP=\"300.1.1.1\"") && err.contains("ceres.env:2"),
            "{err}"
        );
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let file = EnvFile::parse(Path::new("f"), "CERES_X=file\n").unwrap();
        let env = BTreeMap::from([("CERES_X".to_owned(), "env".to_owned())]);
        let l = Layers::from_parts(Some(file.clone()), env);
        assert_eq!(l.raw("CERES_X", Some("flag")).unwrap().0, "flag");
        assert_eq!(l.raw("CERES_X", None).unwrap().0, "env");
        let l = Layers::from_parts(Some(file), BTreeMap::new());
        assert_eq!(l.raw("CERES_X", None).unwrap().0, "file");
    }

    #[test]
    fn missing_required_key_says_how_to_set_it() {
        let l = layers("").unwrap();
        let err = l
            .require::<String>("CERES_DOMAIN", None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CERES_DOMAIN=") && err.contains("--domain"),
            "{err}"
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Layers::load(Some(Path::new("/nonexistent/ceres.env")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ceres.env"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(
            "7d".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(7 * 86400)
        );
        assert!(
            "soon"
                .parse::<HumanDuration>()
                .unwrap_err()
                .contains("like 90s")
        );
    }

    #[test]
    fn flag_key_mapping() {
        assert_eq!(flag_for_key("CERES_PUBLIC_IP"), "public-ip");
        assert_eq!(key_for_flag("public-ip"), "CERES_PUBLIC_IP");
    }
}
