//! Typed metric families: each is declared once, as a `static`, with its
//! name, type, help and label names; an agent registers its families once
//! at start, and every scrape samples them into a [`Page`]. A sample names
//! its family by reference, never by a string, and its label values come as
//! an array the length of the family's label names — a misspelt name or a
//! missing label does not compile.
//!
//! Why not the `prometheus-client` crate: it writes only the OpenMetrics text
//! format, where a counter family drops its `_total` (`# TYPE
//! ceres_rotations counter`), every help text gets a trailing `.` and the
//! page ends in `# EOF`. The agents' pages would change under their scrapers
//! and dashboards, and `promtool check metrics`, which checks the Prometheus
//! text format the agents serve (0.0.4), rejects such a page. The values
//! here are snapshots read at scrape time (from reports and counters kept
//! elsewhere), which is all this registry has to carry.

use std::fmt::Write as _;
use std::marker::PhantomData;

mod sealed {
    pub trait Sealed {}

    /// How the registry reads a family of any type; out of reach outside
    /// this module, so only [`super::Family`] can be an
    /// [`super::AnyFamily`].
    pub trait Describe {
        fn describe(&'static self) -> super::Descriptor;
    }
}

use sealed::Describe as _;

/// What a family measures: [`Counter`] or [`Gauge`].
pub trait Kind: sealed::Sealed {
    /// The word on the family's `# TYPE` line.
    const TYPE: &'static str;
    /// What one sample holds.
    type Value: Copy;
    /// The sample value as the exposition format writes it.
    fn text(value: Self::Value) -> String;
}

/// A count that only goes up (and restarts from zero with its source).
/// Whole numbers: written exactly, however large.
#[derive(Debug)]
pub enum Counter {}

/// A value that goes up and down (a state, an age, a timestamp).
#[derive(Debug)]
pub enum Gauge {}

impl sealed::Sealed for Counter {}
impl sealed::Sealed for Gauge {}

impl Kind for Counter {
    const TYPE: &'static str = "counter";
    type Value = u64;
    fn text(value: u64) -> String {
        value.to_string()
    }
}

impl Kind for Gauge {
    const TYPE: &'static str = "gauge";
    type Value = f64;
    fn text(value: f64) -> String {
        // Rust writes `inf`; the format wants `+Inf`.
        if value.is_nan() {
            "NaN".to_owned()
        } else if value == f64::INFINITY {
            "+Inf".to_owned()
        } else if value == f64::NEG_INFINITY {
            "-Inf".to_owned()
        } else {
            value.to_string()
        }
    }
}

/// A gauge's value for a yes/no state: 1 or 0.
pub fn flag(yes: bool) -> f64 {
    if yes { 1.0 } else { 0.0 }
}

/// One metric family with `L` label names.
#[derive(Debug)]
pub struct Family<K: Kind, const L: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; L],
    kind: PhantomData<fn() -> K>,
}

impl<const L: usize> Family<Counter, L> {
    /// A counter family; `name` ends in `_total` (checked at registration).
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; L],
    ) -> Self {
        Family {
            name,
            help,
            labels,
            kind: PhantomData,
        }
    }
}

impl<const L: usize> Family<Gauge, L> {
    /// A gauge family.
    pub const fn gauge(name: &'static str, help: &'static str, labels: [&'static str; L]) -> Self {
        Family {
            name,
            help,
            labels,
            kind: PhantomData,
        }
    }
}

impl<K: Kind, const L: usize> Family<K, L> {
    /// The family's name, as the page writes it.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// A [`Family`] of either kind and any number of labels. Families of
/// different types can then stand in one table, `&[&A, &B, …]`, which
/// [`Registry::register_all`] takes: an agent lists its page once instead
/// of registering family after family. Only [`Family`] implements it.
pub trait AnyFamily: sealed::Describe + Sync {}

impl<K: Kind, const L: usize> sealed::Describe for Family<K, L> {
    fn describe(&'static self) -> Descriptor {
        Descriptor {
            name: self.name,
            help: self.help,
            kind: K::TYPE,
            labels: &self.labels,
        }
    }
}

impl<K: Kind, const L: usize> AnyFamily for Family<K, L> {}

/// A family without its type parameters, as the registry keeps it. `pub`
/// only because the sealed trait returns it; not exported, and its fields
/// stay private.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
}

/// A family that cannot be registered: a mistake in the agent's code,
/// caught when the agent starts (and by its tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// Two families with one name would write two headers for it.
    #[error("metric family {0:?} is registered twice")]
    Duplicate(&'static str),
    /// Not `[a-zA-Z_:][a-zA-Z0-9_:]*` (a label: no `:`, no leading `__`).
    #[error("{0:?} is not a valid metric or label name")]
    BadName(&'static str),
    /// Prometheus' convention, which `promtool check metrics` enforces.
    #[error("counter {0:?} must end in `_total`")]
    CounterSuffix(&'static str),
}

/// The families an agent exposes, in the order its page lists them.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    families: Vec<Descriptor>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `family` to the page. Its header is written on every scrape,
    /// with or without samples.
    pub fn register<K: Kind, const L: usize>(
        &mut self,
        family: &'static Family<K, L>,
    ) -> Result<&mut Self, MetricsError> {
        self.register_all(&[family])
    }

    /// Adds `families` to the page in the table's order, each checked as
    /// [`Registry::register`] checks it. A table is added whole or not at
    /// all: on the first family refused, the error names it and the
    /// registry is left as it was.
    pub fn register_all(
        &mut self,
        families: &[&'static dyn AnyFamily],
    ) -> Result<&mut Self, MetricsError> {
        let before = self.families.len();
        for family in families {
            if let Err(e) = self.add(family.describe()) {
                self.families.truncate(before);
                return Err(e);
            }
        }
        Ok(self)
    }

    fn add(&mut self, d: Descriptor) -> Result<(), MetricsError> {
        if !valid_name(d.name, true) {
            return Err(MetricsError::BadName(d.name));
        }
        if let Some(bad) = d.labels.iter().find(|l| !valid_name(l, false)) {
            return Err(MetricsError::BadName(bad));
        }
        if d.kind == Counter::TYPE && !d.name.ends_with("_total") {
            return Err(MetricsError::CounterSuffix(d.name));
        }
        if self.families.iter().any(|f| f.name == d.name) {
            return Err(MetricsError::Duplicate(d.name));
        }
        self.families.push(d);
        Ok(())
    }

    /// An empty page of this registry's families, to sample into.
    pub fn page(&self) -> Page<'_> {
        Page {
            registry: self,
            unregistered: Vec::new(),
            samples: vec![Vec::new(); self.families.len()],
        }
    }
}

fn valid_name(name: &str, metric: bool) -> bool {
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (metric && c == ':');
    let ok_rest = |c: char| ok_first(c) || c.is_ascii_digit();
    let mut chars = name.chars();
    chars.next().is_some_and(ok_first) && chars.all(ok_rest) && (metric || !name.starts_with("__"))
}

/// One scrape's samples: each family's samples are written together under
/// its one header, whatever order they were set in.
#[derive(Debug)]
pub struct Page<'r> {
    registry: &'r Registry,
    /// Families sampled without having been registered: still written
    /// (after the registered ones), so the page is never wrong, only less
    /// checked.
    unregistered: Vec<Descriptor>,
    /// Per family (registered ones first, then `unregistered`): label
    /// values and the value's text, in the order set.
    samples: Vec<Vec<(Vec<String>, String)>>,
}

impl Page<'_> {
    /// Sets `family`'s sample with `labels` (values, in the order of the
    /// family's label names) to `value`. Setting the same labels again
    /// replaces the value: a page never holds one series twice.
    pub fn set<K: Kind, const L: usize>(
        &mut self,
        family: &'static Family<K, L>,
        labels: [&str; L],
        value: K::Value,
    ) -> &mut Self {
        let index = self.index_of(family.describe());
        let labels: Vec<String> = labels.iter().map(|v| (*v).to_owned()).collect();
        let value = K::text(value);
        let samples = &mut self.samples[index];
        match samples.iter_mut().find(|(l, _)| *l == labels) {
            Some(existing) => existing.1 = value,
            None => samples.push((labels, value)),
        }
        self
    }

    fn index_of(&mut self, d: Descriptor) -> usize {
        let registered = self.registry.families.len();
        if let Some(i) = self.registry.families.iter().position(|f| f.name == d.name) {
            return i;
        }
        if let Some(i) = self.unregistered.iter().position(|f| f.name == d.name) {
            return registered + i;
        }
        self.unregistered.push(d);
        self.samples.push(Vec::new());
        registered + self.unregistered.len() - 1
    }

    /// The page in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = self.registry.families.iter().chain(&self.unregistered);
        for (d, samples) in families.zip(&self.samples) {
            let _ = writeln!(out, "# HELP {} {}", d.name, escape_help(d.help));
            let _ = writeln!(out, "# TYPE {} {}", d.name, d.kind);
            for (values, value) in samples {
                out.push_str(d.name);
                if !values.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in d.labels.iter().zip(values).enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

/// Help text: `\` and newline escaped.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label value: `\`, `"` and newline escaped.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    static UP: Family<Gauge, 0> = Family::gauge("x_up", "1 when up", []);
    static BYTES: Family<Counter, 1> = Family::counter("x_bytes_total", "bytes moved", ["port"]);
    static REFUSED: Family<Counter, 2> =
        Family::counter("x_refused_total", "refusals", ["port", "reason"]);

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register(&UP)
            .and_then(|r| r.register(&BYTES))
            .and_then(|r| r.register(&REFUSED))
            .unwrap();
        r
    }

    #[test]
    fn families_are_written_in_registration_order_with_their_samples_grouped() {
        let r = registry();
        let mut page = r.page();
        // Set out of order, and interleaved: the page groups them.
        page.set(&REFUSED, ["25", "rate"], 2)
            .set(&BYTES, ["25"], 10)
            .set(&UP, [], 1.0)
            .set(&BYTES, ["587"], 18_446_744_073_709_551_615);
        assert_eq!(
            page.render(),
            "# HELP x_up 1 when up\n# TYPE x_up gauge\nx_up 1\n\
             # HELP x_bytes_total bytes moved\n# TYPE x_bytes_total counter\n\
             x_bytes_total{port=\"25\"} 10\nx_bytes_total{port=\"587\"} 18446744073709551615\n\
             # HELP x_refused_total refusals\n# TYPE x_refused_total counter\n\
             x_refused_total{port=\"25\",reason=\"rate\"} 2\n"
        );
    }

    #[test]
    fn a_family_without_samples_keeps_its_header() {
        let r = registry();
        let text = r.page().render();
        assert!(text.contains("# TYPE x_refused_total counter\n"), "{text}");
        assert!(!text.contains("x_refused_total{"), "{text}");
    }

    #[test]
    fn setting_a_series_again_replaces_it() {
        let r = registry();
        let mut page = r.page();
        page.set(&BYTES, ["25"], 1).set(&BYTES, ["25"], 5);
        let text = page.render();
        assert_eq!(text.matches("x_bytes_total{port=\"25\"}").count(), 1);
        assert!(text.contains("x_bytes_total{port=\"25\"} 5\n"), "{text}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        static ODD: Family<Gauge, 1> = Family::gauge("x_odd", "a \\ and a\nnewline", ["q"]);
        let mut r = Registry::new();
        r.register(&ODD).unwrap();
        let mut page = r.page();
        page.set(&ODD, ["a\"b\\c\nd"], 0.5);
        assert_eq!(
            page.render(),
            "# HELP x_odd a \\\\ and a\\nnewline\n# TYPE x_odd gauge\n\
             x_odd{q=\"a\\\"b\\\\c\\nd\"} 0.5\n"
        );
    }

    #[test]
    fn gauge_values_use_the_formats_spelling() {
        assert_eq!(Gauge::text(f64::INFINITY), "+Inf");
        assert_eq!(Gauge::text(f64::NEG_INFINITY), "-Inf");
        assert_eq!(Gauge::text(f64::NAN), "NaN");
        assert_eq!(Gauge::text(1_700_000_000.0), "1700000000");
        assert_eq!(Gauge::text(-0.25), "-0.25");
        assert_eq!(flag(true), 1.0);
        assert_eq!(flag(false), 0.0);
    }

    #[test]
    fn bad_families_are_refused_at_registration() {
        static TWICE: Family<Gauge, 0> = Family::gauge("x_up", "again", []);
        static NOT_TOTAL: Family<Counter, 0> = Family::counter("x_bytes", "bytes", []);
        static BAD_NAME: Family<Gauge, 0> = Family::gauge("9lives", "digits first", []);
        static BAD_LABEL: Family<Gauge, 1> = Family::gauge("x_ok", "reserved label", ["__name"]);
        static COLON_LABEL: Family<Gauge, 1> = Family::gauge("x_ok2", "colon", ["a:b"]);
        let mut r = registry();
        assert_eq!(
            r.register(&TWICE).unwrap_err(),
            MetricsError::Duplicate("x_up")
        );
        assert_eq!(
            r.register(&NOT_TOTAL).unwrap_err(),
            MetricsError::CounterSuffix("x_bytes")
        );
        assert_eq!(
            r.register(&BAD_NAME).unwrap_err(),
            MetricsError::BadName("9lives")
        );
        assert_eq!(
            r.register(&BAD_LABEL).unwrap_err(),
            MetricsError::BadName("__name")
        );
        assert_eq!(
            r.register(&COLON_LABEL).unwrap_err(),
            MetricsError::BadName("a:b")
        );
        // Nothing refused was added.
        assert_eq!(r.page().render(), registry().page().render());
    }

    #[test]
    fn a_table_is_registered_in_its_order_as_by_hand() {
        let mut table = Registry::new();
        table.register_all(&[&REFUSED, &UP, &BYTES]).unwrap();
        let text = table.page().render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            names,
            [
                "x_refused_total counter",
                "x_up gauge",
                "x_bytes_total counter"
            ]
        );
        let mut by_hand = Registry::new();
        by_hand
            .register(&REFUSED)
            .and_then(|r| r.register(&UP))
            .and_then(|r| r.register(&BYTES))
            .unwrap();
        assert_eq!(text, by_hand.page().render());
        // Tables add up, in the order they are registered.
        let mut two = Registry::new();
        two.register_all(&[&UP])
            .and_then(|r| r.register_all(&[&BYTES, &REFUSED]))
            .unwrap();
        assert_eq!(two.page().render(), registry().page().render());
    }

    #[test]
    fn a_duplicate_in_a_table_is_refused_as_by_hand_and_adds_nothing() {
        static TWICE: Family<Gauge, 0> = Family::gauge("x_up", "again", []);
        let mut by_hand = Registry::new();
        by_hand.register(&UP).unwrap();
        let by_hand_err = by_hand.register(&TWICE).unwrap_err();
        assert_eq!(by_hand_err, MetricsError::Duplicate("x_up"));

        let mut r = Registry::new();
        assert_eq!(
            r.register_all(&[&UP, &BYTES, &TWICE]).unwrap_err(),
            by_hand_err
        );
        // The same family listed twice is the same mistake.
        assert_eq!(
            r.register_all(&[&BYTES, &BYTES]).unwrap_err(),
            MetricsError::Duplicate("x_bytes_total")
        );
        // Refused tables left nothing behind: the good families before the
        // duplicate were taken back, and can be registered now.
        assert_eq!(r.page().render(), "");
        r.register_all(&[&UP, &BYTES]).unwrap();
        // A table clashing with what is already registered is refused too,
        // and leaves what was there.
        assert_eq!(
            r.register_all(&[&REFUSED, &TWICE]).unwrap_err(),
            by_hand_err
        );
        let mut want = Registry::new();
        want.register_all(&[&UP, &BYTES]).unwrap();
        assert_eq!(r.page().render(), want.page().render());
    }

    #[test]
    fn an_unregistered_family_is_still_written_once() {
        static LATE: Family<Gauge, 0> = Family::gauge("x_late", "not registered", []);
        let r = registry();
        let mut page = r.page();
        page.set(&LATE, [], 2.0).set(&LATE, [], 3.0);
        let text = page.render();
        assert!(
            text.ends_with("# HELP x_late not registered\n# TYPE x_late gauge\nx_late 3\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE x_late").count(), 1);
    }
}
