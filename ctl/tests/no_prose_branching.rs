//! No code in `ctl/src` decides on the text of a field an agent produced
//! (issue 15): a sentence an agent writes may be reworded in any release,
//! so `cerectl` decides on the typed fields and shows the sentences only.
//!
//! How it is checked, without a Rust parser:
//! - The fields: every `string` field of `proto/ceres.proto`, and every
//!   string field of the status JSON (`ctl/src/status/{schema,problem}.rs`),
//!   must be classified below: prose (an agent's sentence, or a name
//!   standing for a state), data (addresses, names, keys, versions, times)
//!   or cerectl's own words. A new field fails
//!   [`every_string_field_is_classified`] until its author decides.
//! - The code: every file `cerectl` compiles outside tests (followed from
//!   `lib.rs` and `main.rs` through `mod` declarations, `#[cfg(test)]`
//!   items and modules left out), comments removed, cut into pieces at `;`,
//!   `{` and `}`. Names bound to an agent's text are followed through the
//!   file: `let`/`if let`/`for` bindings and closure parameters whose value
//!   is a prose field, directly or through calls that keep or map the text
//!   (`as_deref`, `trim`, `unwrap_or`, `iter`, `map(|e| e.error ..)`, ...).
//!   A finding is a text test — `starts_with`, `strip_prefix`,
//!   `contains("..")`, `== ".."`, `!= Some('..')`, `matches!(x, Some(".."))`,
//!   a `match` with string arms, a look-up of the text in a list
//!   (`NAMES.contains(&x.id.as_str())`), ... — whose tested expression is
//!   such text.
//!   Showing the text (`format!`, `unwrap_or("?")`) or asking whether there
//!   is any (`is_empty`, `is_some`) is fine.
//! - The check is shown to find the branches the previous release had
//!   (`ctl/tests/fixtures/status_before_typed.rs`) and a set of written
//!   cases, and to pass the ones that are fine.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Fields whose text an agent wrote as a sentence or a state's name:
/// never decided on.
const PROSE: &[&str] = &[
    "banner",
    "detail",
    "error",
    "firewall",
    "firewall_advice",
    "forward_error",
    // A watchdog check's name (`WatchCheck.id`): a name standing for the
    // check, sent for readers one release older; decide on `kind` (only
    // `ceres_proto::compat` reads the name, for an older VPS).
    "id",
    "input_filter_error",
    "last_error",
    "last_failure",
    "last_outcome",
    "message",
    "pending_step",
    "proxy",
    "reason",
    // A watchdog check's name for people.
    "title",
];

/// cerectl's own words in the status JSON (what it found and what to do):
/// not an agent's.
const OURS: &[&str] = &["fix", "problems", "subject", "text", "warnings"];

/// Fields that are data: comparing them is fine.
const DATA: &[&str] = &[
    "address",
    "agent_version",
    "at",
    "ca_certificate_pem",
    "certificate_not_after",
    "certificate_pem",
    "chain",
    "control_address",
    "csr_pem",
    "domain",
    "endpoint",
    "family",
    // A webhook's body format (`json`, `ntfy`, `gotify`): shown only.
    "format",
    "home_address",
    "home_address6",
    "hostname",
    "ifname",
    "keys_since",
    "last",
    "last_error_at",
    "last_handshake",
    "last_report",
    "lineage",
    "mail_host",
    "name",
    "next",
    "peer_public_key",
    "postfix_version",
    "public_ips",
    "public_key",
    "refused_by",
    // CERES_RELAYS in effect: a list in a syntax of its own, read with
    // `ceres_relay::parse_relays`.
    "relays",
    "remote_address",
    "serial",
    "server_certificate_not_after",
    "since",
    "sources",
    "started_at",
    "table",
    // Where an alert channel sends (a webhook's host, an address): shown only.
    "target",
    "tunnel_home_address",
    "tunnel_home_address6",
    "tunnel_vps_address",
    "tunnel_vps_address6",
    "version",
    "vps_address",
    "vps_address6",
    "vps_agent_version",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `string` fields of the protocol.
fn proto_string_fields() -> BTreeSet<String> {
    let proto = read(&root().join("../proto/ceres.proto"));
    proto
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("repeated ").unwrap_or(l);
            let rest = l.strip_prefix("string ")?;
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The string fields of the status JSON.
fn schema_string_fields() -> BTreeSet<String> {
    ["src/status/schema.rs", "src/status/problem.rs"]
        .iter()
        .flat_map(|f| {
            read(&root().join(f))
                .lines()
                .filter_map(|l| {
                    let rest = l.trim().strip_prefix("pub ")?;
                    let (name, ty) = rest.split_once(':')?;
                    (name.chars().all(is_ident) && ty.contains("String")).then(|| name.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `src` without comments, char literals as `'c'` (so a quote in one
/// starts no string); string literals and line breaks kept.
fn strip_comments(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c);
            if c == '\\' && i + 1 < b.len() {
                out.push(b[i + 1]);
                i += 2;
                continue;
            }
            if c == '"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
                i += 1;
            }
            '\'' if b.get(i + 2) == Some(&'\'') => {
                out.push_str("'c'");
                i += 3;
            }
            '\'' if b.get(i + 1) == Some(&'\\') && b.get(i + 3) == Some(&'\'') => {
                out.push_str("'c'");
                i += 4;
            }
            '/' if b.get(i + 1) == Some(&'/') => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            '/' if b.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                    if b[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
                i += 2;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Byte index just past the item starting at `from`: up to its `;`, or its
/// `{ ... }` block, whichever comes first (strings skipped).
fn item_end(code: &str, from: usize) -> usize {
    let b = code.as_bytes();
    let mut i = from;
    let mut depth = 0usize;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return i + 1;
                    }
                }
                b';' if depth == 0 => return i + 1,
                _ => {}
            }
        }
        i += 1;
    }
    b.len()
}

/// Production code of a file (its `#[cfg(test)]` items blanked, lines
/// kept) and the modules it declares: name, `#[path]`, test-only.
fn production(code: &str) -> (String, Vec<(String, Option<String>, bool)>) {
    let mut out = code.to_owned();
    let mut mods = Vec::new();
    // Test-only items.
    while let Some(at) = out.find("#[cfg(test)]") {
        let end = item_end(&out, at);
        let item = out[at..end].to_owned();
        if let Some(name) = declared_mod(&item) {
            mods.push((name, path_attr(&item), true));
        }
        let blank: String = item
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        out.replace_range(at..end, &blank);
    }
    // The other modules.
    for (i, _) in out.match_indices("mod ") {
        let before = out[..i].chars().next_back();
        if before.is_some_and(is_ident) {
            continue;
        }
        let end = item_end(&out, i);
        let item = &out[i..end];
        if item.trim_end().ends_with(';') {
            if let Some(name) = declared_mod(item) {
                let attrs_start = out[..i].rfind(['\n']).map_or(0, |n| n + 1);
                mods.push((name, path_attr(&out[attrs_start..end]), false));
            }
        }
    }
    (out, mods)
}

fn declared_mod(item: &str) -> Option<String> {
    let at = item.find("mod ")?;
    let name: String = item[at + 4..]
        .trim_start()
        .chars()
        .take_while(|c| is_ident(*c))
        .collect();
    let after = item[at + 4..].trim_start()[name.len()..].trim_start();
    (!name.is_empty() && after.starts_with(';')).then_some(name)
}

fn path_attr(item: &str) -> Option<String> {
    let at = item.find("#[path")?;
    let q1 = item[at..].find('"')? + at + 1;
    let q2 = item[q1..].find('"')? + q1;
    Some(item[q1..q2].to_owned())
}

/// Every file `cerectl` compiles, with its production code.
fn compiled_files() -> BTreeMap<PathBuf, String> {
    let src = root().join("src");
    let mut todo = vec![src.join("lib.rs"), src.join("main.rs")];
    let mut files = BTreeMap::new();
    while let Some(file) = todo.pop() {
        if files.contains_key(&file) {
            continue;
        }
        let (code, mods) = production(&strip_comments(&read(&file)));
        let dir = file.parent().unwrap().to_path_buf();
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let base = if ["lib", "main", "mod"].contains(&stem.as_str()) {
            dir.clone()
        } else {
            dir.join(&stem)
        };
        for (name, path, test_only) in mods {
            if test_only {
                continue;
            }
            let child = match path {
                Some(p) => dir.join(p),
                None if base.join(format!("{name}.rs")).exists() => base.join(format!("{name}.rs")),
                None => base.join(&name).join("mod.rs"),
            };
            assert!(child.exists(), "mod {name} of {}: no file", file.display());
            todo.push(child);
        }
        files.insert(file, code);
    }
    files
}

/// A piece of code and the line it starts on.
struct Piece {
    line: usize,
    text: String,
}

fn pieces(code: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut start_line = 1;
    let mut cur = String::new();
    let mut in_str = false;
    let mut escaped = false;
    for c in code.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_str {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        if matches!(c, ';' | '{' | '}') {
            cur.push(c);
            if !cur.trim().is_empty() {
                out.push(Piece {
                    line: start_line,
                    text: std::mem::take(&mut cur),
                });
            }
            cur.clear();
            start_line = line;
            continue;
        }
        if cur.trim().is_empty() && !c.is_whitespace() {
            start_line = line;
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(Piece {
            line: start_line,
            text: cur,
        });
    }
    out
}

/// Words of a piece outside its string literals, with what precedes each:
/// `(preceding char, word, following non-space char)`.
fn words(text: &str) -> Vec<(Option<char>, String, Option<char>)> {
    let mut plain = String::new();
    let mut in_str = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
                plain.push('"');
            }
            continue;
        }
        if c == '"' {
            in_str = true;
        }
        plain.push(c);
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !is_ident(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let before = chars[..start]
                .iter()
                .rev()
                .find(|c| !c.is_whitespace())
                .copied();
            let after = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
            out.push((before, word, after));
        } else {
            i += 1;
        }
    }
    out
}

/// The piece reads a prose field (`.error`, not a method `.error()`).
fn reads_prose(text: &str) -> bool {
    words(text).iter().any(|(before, w, after)| {
        before == &Some('.') && after != &Some('(') && PROSE.contains(&w.as_str())
    })
}

/// A name as a binding can introduce it (not a type, keyword or variant).
fn bindable(w: &str) -> bool {
    w.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && !matches!(
            w,
            "mut" | "ref" | "_" | "self" | "true" | "false" | "in" | "let" | "if" | "else"
        )
}

/// The expression `text` ends with: identifiers, `.`, `::`, `?`, `&`, `*`
/// and balanced brackets, lines broken before a `.` (`report.as_ref().x`
/// in `let y = report.as_ref().x`).
fn receiver(text: &str) -> &str {
    let b = text.as_bytes();
    let mut i = b.len();
    let mut depth = 0usize;
    while i > 0 {
        let c = b[i - 1];
        match c {
            b')' | b']' => depth += 1,
            b'(' | b'[' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            b'.' | b'?' | b'&' | b'*' | b':' | b'_' => {}
            c if c.is_ascii_alphanumeric() => {}
            c if c.is_ascii_whitespace() && text[i..].trim_start().starts_with('.') => {}
            _ => break,
        }
        i -= 1;
    }
    text[i..].trim_start()
}

/// The expression `text` starts with (the mirror of [`receiver`]).
fn operand(text: &str) -> &str {
    let text = text.trim_start();
    let b = text.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    while i < b.len() {
        let c = b[i];
        match c {
            b'(' | b'[' => depth += 1,
            b')' | b']' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            b'.' | b'?' | b'&' | b'*' | b':' | b'_' => {}
            c if c.is_ascii_alphanumeric() => {}
            c if c.is_ascii_whitespace() && text[i..].trim_start().starts_with('.') => {}
            _ => break,
        }
        i += 1;
    }
    &text[..i]
}

/// `recv.method(args)` split, when `chain` ends with a method call.
fn last_call(chain: &str) -> Option<(&str, &str, &str)> {
    let chain = chain.trim_end().trim_end_matches('?');
    if !chain.ends_with(')') {
        return None;
    }
    let b = chain.as_bytes();
    let mut depth = 0usize;
    let mut open = None;
    for i in (0..b.len()).rev() {
        match b[i] {
            b')' => depth += 1,
            b'(' => {
                depth -= 1;
                if depth == 0 {
                    open = Some(i);
                    break;
                }
            }
            _ => {}
        }
    }
    let open = open?;
    let head = &chain[..open];
    let name_start = head.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
    let dot = head[..name_start].trim_end();
    let recv = dot.strip_suffix('.')?;
    Some((recv, &head[name_start..], &chain[open + 1..chain.len() - 1]))
}

/// Whether `expr`'s value is an agent's text: a prose field, a name bound
/// from one, or either through calls that keep the text (`as_deref`,
/// `trim`, `clone`, `unwrap_or`, `iter`, ...) or map it (`map(|e|
/// e.error.as_str())`).
fn yields_prose(expr: &str, tainted: &BTreeSet<String>) -> bool {
    const KEEP: &[&str] = &[
        "as_bytes",
        "as_deref",
        "as_str",
        "as_ref",
        "as_slice",
        "borrow",
        "bytes",
        "chars",
        "clone",
        "cloned",
        "collect",
        "concat",
        "copied",
        "expect",
        "filter",
        "find",
        "first",
        "flatten",
        "get",
        "into_iter",
        "iter",
        "join",
        "last",
        "lines",
        "next",
        "next_back",
        "nth",
        "peekable",
        "rev",
        "rsplit",
        "skip",
        "split",
        "split_terminator",
        "split_whitespace",
        "splitn",
        "take",
        "to_vec",
        "to_ascii_lowercase",
        "to_lowercase",
        "to_owned",
        "to_string",
        "to_uppercase",
        "trim",
        "trim_end",
        "trim_start",
        "unwrap",
        "unwrap_or",
        "unwrap_or_default",
        "unwrap_or_else",
    ];
    const MAP: &[&str] = &[
        "and_then",
        "filter_map",
        "flat_map",
        "map",
        "map_or",
        "map_or_else",
    ];
    let e = expr
        .trim()
        .trim_end_matches(['{', ';'])
        .trim()
        .trim_start_matches(['&', '*', '!'])
        .trim();
    let e = e.strip_prefix("mut ").unwrap_or(e);
    if let Some((recv, method, args)) = last_call(e) {
        if KEEP.contains(&method) {
            return yields_prose(recv, tainted);
        }
        if MAP.contains(&method) {
            let from_recv = yields_prose(recv, tainted);
            return match closure(args) {
                Some((params, body)) => {
                    let mut inner = tainted.clone();
                    if from_recv {
                        inner.extend(names(params));
                    }
                    yields_prose(body, &inner)
                }
                None => from_recv,
            };
        }
        return false;
    }
    if e.chars().all(is_ident) {
        return tainted.contains(e);
    }
    let field_start = e.rfind(|c: char| !is_ident(c)).map_or(0, |i| i + 1);
    e[..field_start].ends_with('.') && PROSE.contains(&&e[field_start..])
}

/// The parameters and body of the closure that `args` is, if it is one.
fn closure(args: &str) -> Option<(&str, &str)> {
    let a = args.trim_start();
    let a = a.strip_prefix("move").map_or(a, str::trim_start);
    let a = a.strip_prefix('|')?;
    let close = a.find('|')?;
    Some((&a[..close], &a[close + 1..]))
}

fn names(pattern: &str) -> Vec<String> {
    words(pattern)
        .into_iter()
        .map(|(_, w, _)| w)
        .filter(|w| bindable(w))
        .collect()
}

/// Names a piece binds to an agent's text: `let PAT = EXPR` (also `if
/// let`), `for PAT in EXPR`, and the parameters of a closure called on
/// it (`.is_some_and(|o| ...)`).
fn bound_to_prose(text: &str, tainted: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(at) = text.find("let ") {
        let rest = &text[at + 4..];
        let eq = rest.match_indices('=').map(|(i, _)| i).find(|&i| {
            !rest[i + 1..].starts_with(['=', '>']) && !rest[..i].ends_with(['=', '!', '<', '>'])
        });
        if let Some(eq) = eq {
            if yields_prose(&rest[eq + 1..], tainted) {
                out.extend(names(&rest[..eq]));
            }
        }
    }
    if let Some(at) = text.find("for ") {
        if let Some(inn) = text[at..].find(" in ") {
            if yields_prose(&text[at + inn + 4..], tainted) {
                out.extend(names(&text[at + 4..at + inn]));
            }
        }
    }
    let bars: Vec<usize> = text.match_indices('|').map(|(i, _)| i).collect();
    for pair in bars.windows(2) {
        let (open, close) = (pair[0], pair[1]);
        let Some(call) = text[..open].trim_end().strip_suffix('(') else {
            continue;
        };
        // `recv.method(` — the text the closure is given.
        let chain = receiver(call);
        let recv = chain.rfind('.').map_or("", |dot| &chain[..dot]);
        if yields_prose(recv, tainted) {
            out.extend(names(&text[open + 1..close]));
        }
    }
    out
}

/// Text tests in a piece, by the expression each one tests.
fn tested_exprs(text: &str) -> Vec<&str> {
    // Methods only text has.
    const TEXT: &[&str] = &[
        "starts_with",
        "ends_with",
        "strip_prefix",
        "strip_suffix",
        "split_once",
        "rsplit_once",
        "match_indices",
        "eq_ignore_ascii_case",
    ];
    // Methods of text and of collections: text tests when given a string
    // or a char.
    const EITHER: &[&str] = &["contains", "find", "rfind", "matches", "split"];
    let mut out = Vec::new();
    for (at, _) in text.match_indices('.') {
        let rest = &text[at + 1..];
        let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        let Some(args) = rest[name.len()..].strip_prefix('(') else {
            continue;
        };
        let literal =
            args.trim_start().starts_with(['"', '\'']) || args.trim_start().starts_with("&\"");
        if TEXT.contains(&name.as_str()) || (EITHER.contains(&name.as_str()) && literal) {
            out.push(receiver(&text[..at]));
        }
        // `LIST.contains(&x)`: whether `x` is one of some words.
        if name == "contains" && !literal {
            out.push(operand(args));
        }
    }
    // `x == "..."`, `x != Some('c')`, `"..." == x`.
    for op in ["==", "!="] {
        for (at, _) in text.match_indices(op) {
            let right = text[at + 2..].trim_start();
            let literal = |t: &str| t.starts_with(['"', '\'']);
            if literal(right) || right.strip_prefix("Some(").is_some_and(literal) {
                out.push(receiver(text[..at].trim_end()));
            } else if text[..at].trim_end().ends_with(['"', '\'']) {
                out.push(operand(right));
            }
        }
    }
    // `matches!(x, Some("...") | ...)`.
    for (at, _) in text.match_indices("matches!(") {
        let inner = &text[at + 9..];
        if let Some(comma) = inner.find(',') {
            if inner[comma..].contains('"') {
                out.push(&inner[..comma]);
            }
        }
    }
    out
}

/// A match arm on a string literal: `"..." =>` or `Some("...") =>`.
fn string_arm(text: &str) -> bool {
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    squeezed.contains("\"=>") || squeezed.contains("\")=>") || squeezed.contains("\"|")
}

/// Findings in one file's production code: `line: piece`.
fn findings(code: &str) -> Vec<String> {
    let ps = pieces(code);
    // Names bound to an agent's text, to a fixed point (`let e = err.trim()`).
    let mut tainted: BTreeSet<String> = BTreeSet::new();
    loop {
        let before = tainted.len();
        for p in &ps {
            let found = bound_to_prose(&p.text, &tainted);
            tainted.extend(found);
        }
        if tainted.len() == before {
            break;
        }
    }
    let mut out = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let tests = tested_exprs(&p.text)
            .into_iter()
            .any(|e| yields_prose(e, &tainted));
        // `match EXPR {` with string arms next.
        let matched = p
            .text
            .trim_end()
            .strip_suffix('{')
            .and_then(|head| head.find("match ").map(|at| &head[at + 6..]))
            .is_some_and(|e| yields_prose(e, &tainted))
            && ps.get(i + 1).is_some_and(|next| string_arm(&next.text));
        if tests || matched {
            out.push(format!("{}: {}", p.line, p.text.trim()));
        }
    }
    out
}

#[test]
fn every_string_field_is_classified() {
    let proto = proto_string_fields();
    let schema = schema_string_fields();
    assert!(
        proto.len() > 30 && schema.len() > 30,
        "{proto:?} {schema:?}"
    );
    let unclassified: Vec<&String> = proto
        .iter()
        .chain(&schema)
        .filter(|f| {
            [PROSE, DATA, OURS]
                .iter()
                .all(|set| !set.contains(&f.as_str()))
        })
        .collect();
    assert!(
        unclassified.is_empty(),
        "classify these string fields in ctl/tests/no_prose_branching.rs as PROSE (a \
         sentence or a state's name: cerectl must not decide on its text; add an enum) or \
         DATA: {unclassified:?}"
    );
    let both: Vec<&&str> = PROSE
        .iter()
        .filter(|f| DATA.contains(f) || OURS.contains(f))
        .collect();
    assert!(both.is_empty(), "{both:?}");
}

#[test]
fn no_code_in_ctl_decides_on_an_agents_words() {
    let files = compiled_files();
    let names: Vec<String> = files
        .keys()
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    // The check looks where the agents' data is handled, and sees it.
    for f in [
        "src/status/build.rs",
        "src/status/diagnose.rs",
        "src/status/render.rs",
        "src/doctor/mail.rs",
        "src/cli.rs",
        "src/vps.rs",
    ] {
        assert!(names.iter().any(|n| n == f), "{f} not scanned: {names:?}");
    }
    for f in ["src/status/tests.rs", "src/status/compat_tests.rs"] {
        assert!(!names.iter().any(|n| n == f), "test code {f} scanned");
    }
    let prose_reads: usize = files
        .values()
        .map(|c| pieces(c).iter().filter(|p| reads_prose(&p.text)).count())
        .sum();
    assert!(
        prose_reads >= 15,
        "only {prose_reads} reads of prose fields seen"
    );
    let found: Vec<String> = files
        .iter()
        .flat_map(|(path, code)| {
            let name = path.strip_prefix(root()).unwrap().display().to_string();
            findings(code)
                .into_iter()
                .map(move |f| format!("{name}:{f}"))
        })
        .collect();
    assert!(
        found.is_empty(),
        "cerectl decides on the text of fields an agent wrote (decide on a typed field; \
         add one to ceres.proto if there is none):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_the_branches_of_the_previous_release() {
    let old = read(&root().join("tests/fixtures/status_before_typed.rs"));
    let (code, _) = production(&strip_comments(&old));
    let found = findings(&code).join("\n");
    for branch in [
        "!err.starts_with(\"disabled\")",
        "!err.starts_with(\"not installed (tunnel off)\")",
        ".is_some_and(|e| e.contains(\"CERES_TUNNEL=off\"))",
        ".is_some_and(|o| o.starts_with(\"failed\"))",
    ] {
        assert!(found.contains(branch), "missed {branch}; found:\n{found}");
    }
}

#[test]
fn the_check_tells_deciding_on_words_from_showing_them() {
    let flagged = [
        "fn f() { if let Some(err) = e.and_then(|e| e.error.as_deref()) { if !err.starts_with(\"disabled\") { x(); } } }",
        "fn f() { let off = vps.error.as_deref().is_some_and(|e| e.contains(\"CERES_TUNNEL=off\")); }",
        "fn f() { if rot.last_outcome == \"ok\" { x(); } }",
        "fn f() { if \"ok\" != rot.last_outcome { x(); } }",
        "fn f() { let step = match r.pending_step.as_str() { \"staged\" => 2, _ => 1 }; }",
        "fn f() { let why = report.forward_error.clone(); let w = why.trim(); if w.find(\"files\").is_some() { x(); } }",
        "fn f() { if p.proxy == \"proxy-v2\" { x(); } }",
        "fn f() { let w = matches!(t.error.as_deref(), Some(\"waiting for parameters from the VPS\")); }",
        "fn f() { for b in r.probes.iter().map(|p| &p.banner) { if b.ends_with(\"ESMTP\") { x(); } } }",
        "fn f() { if let Some(fw) = &h.firewall_advice { let first = fw.split_whitespace().next(); if first == Some(\"the\") { x(); } } }",
        "fn f() { let c = e.error.chars().next(); if c == Some('x') { x(); } }",
        "fn f() { let own = c.state == 3 && OWN_VERDICT.contains(&c.id.as_str()); }",
        "fn f() { for c in &s.checks { if [\"dnsbl\", \"spf\"].contains(&c.id.as_ref()) { x(); } } }",
    ];
    for case in flagged {
        let (code, _) = production(&strip_comments(case));
        assert!(!findings(&code).is_empty(), "not found: {case}");
    }
    let fine = [
        "fn f() { if e.error.is_empty() { x(); } }",
        "fn f() { out.push(Problem::egress_failed(end, e.error.as_deref())); }",
        "fn f() { let text = format!(\"the tunnel: {}\", vps.error.as_deref().unwrap_or(\"?\")); }",
        "fn f() { if domain == \"example.net\" || domain.ends_with(\".example.net\") { x(); } }",
        "fn f() { if line.starts_with(\"EHLO\") { x(); } }",
        "fn f() { if s.tunnel.vps.state == Some(TunnelState::Off) { x(); } }",
        "fn f() { if c.kind.is_some_and(|k| k.has_own_verdict()) && ports.contains(&r.port) { x(); } }",
        // A comment that quotes old code is not code.
        "fn f() { // was: e.error.starts_with(\"disabled\")\n x(); }",
        // Test code is not production code.
        "fn f() {}\n#[cfg(test)]\nmod tests { fn t() { assert!(e.error.contains(\"x\")); } }",
    ];
    for case in fine {
        let (code, _) = production(&strip_comments(case));
        assert!(
            findings(&code).is_empty(),
            "flagged: {case}: {:?}",
            findings(&code)
        );
    }
}
