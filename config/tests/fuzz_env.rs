//! Property-based fuzzing of `ceres.env` parsing: any file gives a parsed
//! config or an error that points at a line of that file, never a panic, and
//! files written the ways systemd accepts give back the values written.
//!
//! Bounded for CI by a fixed case count and seed; `PROPTEST_CASES` and
//! `PROPTEST_RNG_SEED` override them. Failures are kept in
//! `fuzz_env.proptest-regressions` beside this file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ceres_config::{ConfigError, EnvFile, HumanDuration, Layers, Origin, PortList, Switch};
use proptest::prelude::*;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 512;
/// Seed unless `PROPTEST_RNG_SEED` says otherwise.
const SEED: u64 = 0xCE7E_5002;
const PATH: &str = "/etc/ceres/ceres.env";

fn config() -> ProptestConfig {
    ceres_testkit::fuzz_config(CASES, SEED)
}

/// Line numbers an error may name in `text` (1-based; an empty file has none,
/// but allow line 1 so "the first line" of an empty file is not a failure).
fn lines_in(text: &str) -> usize {
    text.lines().count().max(1)
}

/// Checks that an error names the file and a line inside it.
fn names_a_line(err: &ConfigError, text: &str) -> Result<(), TestCaseError> {
    let n = lines_in(text);
    match err {
        ConfigError::Syntax { path, line, .. } => {
            prop_assert_eq!(path.as_path(), Path::new(PATH));
            prop_assert!((1..=n).contains(line), "line {} of {}", line, n);
            prop_assert!(
                err.to_string().starts_with(&format!("{PATH}:{line}:")),
                "{}",
                err
            );
        }
        ConfigError::UnknownKey { origin, .. } | ConfigError::Invalid { origin, .. } => {
            let Origin::File(path, line) = origin else {
                return Err(TestCaseError::fail(format!(
                    "origin is not the file: {err}"
                )));
            };
            prop_assert_eq!(path.as_path(), Path::new(PATH));
            prop_assert!((1..=n).contains(line), "line {} of {}", line, n);
            prop_assert!(
                err.to_string().contains(&format!("{PATH}:{line}")),
                "{}",
                err
            );
        }
        other => prop_assert!(false, "unexpected error kind: {}", other),
    }
    Ok(())
}

/// Lines that look like config lines (so the parser gets past its first
/// checks), comments, and junk.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(export )?[A-Z_][A-Z0-9_]{0,12}[ \t]?=[ \t]?[^\n]{0,24}",
        1 => "(export )?[A-Za-z0-9_ ]{0,12}=[\"']?[^\n]{0,12}[\"']?",
        1 => "[ \t]*[#;][^\n]{0,20}",
        1 => "[ \t]*",
        1 => "[^\n]{0,30}",
        1 => "CERES_[A-Z]{1,3}=[0-9.,:a-z ]{0,12}",
    ]
}

fn file_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (
            prop::collection::vec(line(), 0..12),
            prop_oneof![Just("\n"), Just("\r\n")],
            any::<bool>()
        )
            .prop_map(|(lines, sep, trailing)| {
                let mut t = lines.join(sep);
                if trailing {
                    t.push_str(sep);
                }
                t
            }),
    ]
}

/// Every typed lookup of every key: an answer or an error naming the line.
fn get_all(layers: &Layers, keys: &[String], text: &str) -> Result<(), TestCaseError> {
    macro_rules! try_type {
        ($t:ty, $key:expr) => {
            if let Err(e) = layers.get::<$t>($key, None) {
                names_a_line(&e, text)?;
            }
        };
    }
    for key in keys {
        try_type!(String, key);
        try_type!(u16, key);
        try_type!(u64, key);
        try_type!(IpAddr, key);
        try_type!(HumanDuration, key);
        try_type!(Switch, key);
        try_type!(PortList, key);
        try_type!(ipnet_like::Net, key);
    }
    Ok(())
}

/// A `FromStr` with a more involved parser than the std ones.
mod ipnet_like {
    use std::net::IpAddr;
    use std::str::FromStr;

    /// `address/prefix`.
    pub struct Net;

    impl FromStr for Net {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let (a, p) = s.split_once('/').ok_or("no /")?;
            let a: IpAddr = a.parse().map_err(|e| format!("{e}"))?;
            let p: u8 = p.parse().map_err(|e| format!("{e}"))?;
            let max = if a.is_ipv4() { 32 } else { 128 };
            if p > max {
                return Err("prefix too long".into());
            }
            Ok(Net)
        }
    }
}

/// How a generated value is written.
#[derive(Debug, Clone, Copy)]
enum Style {
    Bare,
    Double,
    Single,
}

/// A value and its spelling in the file.
fn value() -> impl Strategy<Value = (String, Style)> {
    prop_oneof![
        // Unquoted: no surrounding blanks, no quote first, no " #".
        "([A-Za-z0-9._:/,@+=-]([A-Za-z0-9._:/,@+=-]|[ ][A-Za-z0-9._:/,@+=-]){0,20})?"
            .prop_map(|v| (v, Style::Bare)),
        "[^\"\n\r]{0,24}".prop_map(|v| (v, Style::Double)),
        "[^'\n\r]{0,24}".prop_map(|v| (v, Style::Single)),
    ]
}

#[derive(Debug, Clone)]
struct Written {
    key: String,
    value: String,
    style: Style,
    export: bool,
    /// Comment and blank lines before it.
    noise: Vec<String>,
    /// Blanks around `=` and at the ends of the line.
    pad: (bool, bool),
}

fn written() -> impl Strategy<Value = Written> {
    (
        "[A-Z_][A-Z0-9_]{0,15}",
        value(),
        any::<bool>(),
        prop::collection::vec("([ \t]*|[ \t]*[#;][^\n\r]{0,16})", 0..3),
        any::<(bool, bool)>(),
    )
        .prop_map(|(key, (value, style), export, noise, pad)| Written {
            key,
            value,
            style,
            export,
            noise,
            pad,
        })
}

fn render(entries: &[Written]) -> (String, BTreeMap<String, (String, usize)>) {
    let mut text = String::new();
    let mut want = BTreeMap::new();
    let mut line = 0;
    for e in entries {
        for n in &e.noise {
            text.push_str(n);
            text.push('\n');
            line += 1;
        }
        let v = match e.style {
            Style::Bare => e.value.clone(),
            Style::Double => format!("\"{}\"", e.value),
            Style::Single => format!("'{}'", e.value),
        };
        let (around_eq, ends) = e.pad;
        let blank = |b: bool| if b { " " } else { "" };
        text.push_str(&format!(
            "{}{}{}={}{}{}\n",
            blank(ends),
            if e.export { "export " } else { "" },
            e.key,
            blank(around_eq),
            v,
            blank(ends)
        ));
        line += 1;
        want.insert(e.key.clone(), (e.value.clone(), line));
    }
    (text, want)
}

proptest! {
    #![proptest_config(config())]

    /// Any file: parsed, or a syntax error naming a line of the file.
    #[test]
    fn arbitrary_files_never_panic(text in file_text()) {
        if let Err(e) = EnvFile::parse(Path::new(PATH), &text) {
            names_a_line(&e, &text)?;
        }
    }

    /// Whatever parses can be checked against any key list and read as any
    /// type: answers or errors that name the line, never a panic.
    #[test]
    fn lookups_on_parsed_files_never_panic(
        text in file_text(),
        known in prop::collection::vec("CERES_[A-Z_]{0,8}", 0..5),
        env in prop::collection::btree_map("CERES_[A-Z]{1,4}", "[ -~]{0,10}", 0..3),
    ) {
        let Ok(file) = EnvFile::parse(Path::new(PATH), &text) else {
            return Ok(());
        };
        let keys: Vec<String> = file.keys().map(str::to_owned).collect();
        let layers = Layers::from_parts(Some(file.clone()), BTreeMap::new());
        if let Err(e) = layers.check_keys(&known) {
            names_a_line(&e, &text)?;
        }
        get_all(&layers, &keys, &text)?;
        // With an environment on top: errors from it name the environment.
        let layered = Layers::from_parts(Some(file), env.clone());
        let mut all: Vec<String> = keys.clone();
        all.extend(env.keys().cloned());
        let _ = layered.check_keys(&known);
        for key in &all {
            if let Err(e) = layered.get::<u16>(key, None) {
                let from_env = env.contains_key(key);
                match &e {
                    ConfigError::Invalid { origin: Origin::Env, .. } => prop_assert!(from_env),
                    other => {
                        prop_assert!(!from_env, "{}", other);
                        names_a_line(other, &text)?;
                    }
                }
            }
        }
    }

    /// Files written the ways systemd accepts give back every value, from
    /// the line it was written on.
    #[test]
    fn generated_files_round_trip(
        entries in prop::collection::vec(written(), 0..10)
    ) {
        // One line per key: a repeated key is an error (tested below).
        let mut seen = BTreeSet::new();
        let entries: Vec<Written> =
            entries.into_iter().filter(|e| seen.insert(e.key.clone())).collect();
        let (text, want) = render(&entries);
        let file = EnvFile::parse(Path::new(PATH), &text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(file.keys().collect::<Vec<_>>(), want.keys().map(String::as_str).collect::<Vec<_>>());
        let layers = Layers::from_parts(Some(file), BTreeMap::new());
        for (key, (value, line)) in &want {
            let (got, origin) = layers.raw(key, None).expect("set");
            prop_assert_eq!(&got, value, "{}", text);
            prop_assert_eq!(origin, Origin::File(PATH.into(), *line));
            prop_assert_eq!(layers.get::<String>(key, None).ok().flatten(), Some(value.clone()));
        }
        // Every key is known: no complaint. Without one of them: that key, at its line.
        let known: Vec<String> = want.keys().cloned().collect();
        prop_assert!(layers.check_keys(&known).is_ok());
        if let Some((first, (_, line))) = want.iter().next() {
            let rest: Vec<String> = known.iter().filter(|k| *k != first).cloned().collect();
            match layers.check_keys(&rest) {
                Err(ConfigError::UnknownKey { key, origin, .. }) if first != "RUST_LOG" => {
                    prop_assert_eq!(&key, first);
                    prop_assert_eq!(origin, Origin::File(PATH.into(), *line));
                }
                Ok(()) => prop_assert_eq!(first, "RUST_LOG"),
                other => prop_assert!(false, "{:?}", other),
            }
        }
        // The same key again later: an error on that line naming the first.
        if let Some((key, (_, line))) = want.iter().next() {
            let twice = format!("{text}{key}=again\n");
            match EnvFile::parse(Path::new(PATH), &twice) {
                Err(ConfigError::Syntax { line: at, message, .. }) => {
                    prop_assert_eq!(at, lines_in(&twice));
                    prop_assert!(message.contains(&format!("first on line {line}")), "{}", message);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }

    /// Typed values come back as the type.
    #[test]
    fn typed_values_round_trip(
        port in any::<u16>(),
        ip in any::<IpAddr>(),
        secs in 1u64..10_000_000,
        on in any::<bool>(),
        ports in prop::collection::vec(1u16.., 0..6),
    ) {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let text = format!(
            "CERES_PORT={port}\nCERES_IP={ip}\nCERES_WAIT={secs}s\nCERES_ON={}\nCERES_PORTS=\"{}\"\n",
            if on { "yes" } else { "off" },
            list.join(", "),
        );
        let layers = Layers::from_parts(
            Some(EnvFile::parse(Path::new(PATH), &text).map_err(|e| TestCaseError::fail(e.to_string()))?),
            BTreeMap::new(),
        );
        let get = |e: ConfigError| TestCaseError::fail(e.to_string());
        prop_assert_eq!(layers.require::<u16>("CERES_PORT", None).map_err(get)?, port);
        prop_assert_eq!(layers.require::<IpAddr>("CERES_IP", None).map_err(get)?, ip);
        prop_assert_eq!(
            layers.require::<HumanDuration>("CERES_WAIT", None).map_err(get)?.0,
            Duration::from_secs(secs)
        );
        prop_assert_eq!(layers.require::<Switch>("CERES_ON", None).map_err(get)?.0, on);
        prop_assert_eq!(layers.require::<PortList>("CERES_PORTS", None).map_err(get)?.0, ports);
        // And the wrong type names key, value and line.
        match layers.get::<u8>("CERES_IP", None) {
            Err(e @ ConfigError::Invalid { .. }) => {
                prop_assert!(e.to_string().contains(&format!("CERES_IP=\"{ip}\" at {PATH}:2")), "{}", e);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
