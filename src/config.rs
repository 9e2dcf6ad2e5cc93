//! Serde types for benchmark files (`benchmarks/*.yaml`). Unknown fields are
//! rejected, and every error names the file, line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::errors::Error;

/// The embedded default benchmark and the harness it runs.
pub(crate) const SMOKE_BENCHMARK: &str = include_str!("../benchmarks/smoke.yaml");
pub(crate) const SMOKE_HARNESS: &str = include_str!("../scripts/smoke-harness.sh");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Benchmark {
    pub(crate) name: String,
    pub(crate) harness: Harness,
    /// Task names; without any, one task named `main`.
    #[serde(default)]
    pub(crate) tasks: Vec<String>,
    /// Tasks at once.
    #[serde(default)]
    pub(crate) concurrency: Option<usize>,
    #[serde(default)]
    pub(crate) cleanup: Cleanup,
    #[serde(default)]
    pub(crate) docker: DockerSection,
    #[serde(default)]
    pub(crate) daytona: Option<DaytonaSection>,
    /// Caps on live containers and sandboxes.
    #[serde(default)]
    pub(crate) limits: LimitsSection,
}

/// `limits:` caps on what a run has live at once.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    #[serde(default)]
    pub(crate) max_containers: Option<usize>,
    #[serde(default)]
    pub(crate) max_sandboxes: Option<usize>,
    /// Refuse creates beyond a cap at the proxy, instead of only holding new tasks back.
    #[serde(default)]
    pub(crate) hard: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Harness {
    /// Program and arguments, with placeholders `{task}`, `{run_id}`,
    /// `{task_index}` and `{benchmark_dir}` (the benchmark file's directory).
    pub(crate) command: Vec<String>,
    #[serde(default)]
    pub(crate) env: BTreeMap<String, String>,
    /// Working directory, relative to the benchmark file's directory.
    #[serde(default)]
    pub(crate) cwd: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) timeout: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) grace: Option<Duration>,
    /// The harness's own result files, read after each task for its verdict and score.
    #[serde(default)]
    pub(crate) results: Option<ResultsFormat>,
}

/// Whose result files a harness writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ResultsFormat {
    /// `tb run`: `<output-path>/<run-id>/results.json`.
    TerminalBench,
    /// `harbor run`: `<jobs-dir>/<job-name>/result.json` and one `result.json` per trial.
    Harbor,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cleanup {
    #[serde(default)]
    pub(crate) before_run: BeforeRun,
    #[serde(default)]
    pub(crate) retry: RetrySection,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BeforeRun {
    /// Owned leftovers older than this go before the run (default 1d).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) age: Option<Duration>,
    /// Container states that go regardless of age (e.g. `exited`, `dead`, `created`).
    #[serde(default)]
    pub(crate) states: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetrySection {
    pub(crate) retries: Option<u32>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) first_delay: Option<Duration>,
    pub(crate) factor: Option<f32>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) max_delay: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) deadline: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DockerSection {
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    /// Give each task its own labelling proxy as `DOCKER_HOST` (default). Off,
    /// the harness talks to the engine itself, and what it creates is known
    /// by the selectors and the creation watcher alone.
    #[serde(default = "yes")]
    pub(crate) proxy: bool,
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) stop_timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) selectors: Vec<Selector>,
    /// Remove the images the run's tasks built, pulled or imported when
    /// the run ends (never one that was there before, or that a live run
    /// or a container uses). Without it they are recorded and kept.
    #[serde(default)]
    pub(crate) remove_images: bool,
}

impl Default for DockerSection {
    fn default() -> Self {
        DockerSection { enabled: true, proxy: true, stop_timeout: None, selectors: Vec::new(), remove_images: false }
    }
}

/// Daytona sandboxes: credentials come from the environment (the variable
/// named here, never the key itself), the rest may be set here.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DaytonaSection {
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    /// The API base, with `/api` (default: `DAYTONA_API_URL`, else the public API).
    pub(crate) api_url: Option<String>,
    /// The environment variable holding the API key (default `DAYTONA_API_KEY`).
    pub(crate) api_key_env: Option<String>,
    pub(crate) target: Option<String>,
    /// Set on every sandbox a task creates without one, so the provider
    /// stops it if we are gone; unset, a default (see `settings`); `off`,
    /// none at all.
    #[serde(default, deserialize_with = "optional_interval")]
    pub(crate) auto_stop_minutes: Option<Interval<u32>>,
    /// Likewise for deletion after stopping (0: delete at once when stopped).
    #[serde(default, deserialize_with = "optional_interval")]
    pub(crate) auto_delete_minutes: Option<Interval<i64>>,
    /// How long the lease on each of the run's sandboxes lasts; renewed every third of it.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) lease: Option<Duration>,
    /// How long past its end another machine's lease still protects (the pre-run sweep's).
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) lease_grace: Option<Duration>,
}

/// `daytona.auto_stop_minutes` or `auto_delete_minutes` as the file sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interval<T> {
    Minutes(T),
    /// `off`: no default; a sandbox keeps what its create asked for.
    Off,
}

/// Where an interval the proxies set on creates comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum IntervalSource {
    /// The benchmark file's `daytona:` section.
    File,
    /// benchwarden's default, the file setting none.
    Default,
    /// `off` in the file: creates are left as the harness sends them.
    Off,
}

/// The collection intervals a run's Daytona proxies set on creates that
/// leave them unset (`None`: not set), and where each comes from: what the
/// run prints at `-v` and writes in its JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct SandboxCollection {
    pub(crate) auto_stop_minutes: Option<u32>,
    pub(crate) auto_stop_from: IntervalSource,
    pub(crate) auto_delete_minutes: Option<i64>,
    pub(crate) auto_delete_from: IntervalSource,
}

/// A number of minutes, or `off`.
fn optional_interval<'de, D, T>(deserializer: D) -> Result<Option<Interval<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
{
    let invalid = |shown: String| {
        serde::de::Error::custom(format!("expected a whole number of minutes in range, or `off`, not {shown}"))
    };
    match Option::<serde_yaml::Value>::deserialize(deserializer)? {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(word)) if word.trim().eq_ignore_ascii_case("off") => Ok(Some(Interval::Off)),
        Some(serde_yaml::Value::Number(number)) => match number.as_i64().map(T::try_from) {
            Some(Ok(minutes)) => Ok(Some(Interval::Minutes(minutes))),
            _ => Err(invalid(number.to_string())),
        },
        Some(other) => Err(invalid(serde_yaml::to_string(&other).unwrap_or_default().trim().to_string())),
    }
}

/// Says which resources a task owns when the harness does not label them.
/// Values may hold `{task}` and `{run_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SelectorEntry")]
pub(crate) enum Selector {
    /// `key=value`: containers, networks and volumes with this label.
    Label(String),
    /// Compose projects whose name starts with this: their containers, networks and volumes.
    ComposeProjectPrefix(String),
    /// Compose projects whose name fits this pattern (`*` stands for any
    /// text): their containers, networks and volumes.
    ComposeProject(String),
}

impl Selector {
    /// The same kind of selector with its value passed through `fill` (placeholders filled).
    pub(crate) fn map(&self, fill: impl Fn(&str) -> String) -> Selector {
        match self {
            Selector::Label(label) => Selector::Label(fill(label)),
            Selector::ComposeProjectPrefix(prefix) => Selector::ComposeProjectPrefix(fill(prefix)),
            Selector::ComposeProject(pattern) => Selector::ComposeProject(fill(pattern)),
        }
    }

    /// The compose-project pattern of a project selector: a prefix is
    /// itself followed by `*`.
    pub(crate) fn project_pattern(&self) -> Option<String> {
        match self {
            Selector::Label(_) => None,
            Selector::ComposeProjectPrefix(prefix) => Some(format!("{prefix}*")),
            Selector::ComposeProject(pattern) => Some(pattern.clone()),
        }
    }
}

/// The form the ledger stores a selector in: `label:K=V`,
/// `compose_project_prefix:P` or `compose_project:PATTERN`.
impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Label(label) => write!(f, "label:{label}"),
            Selector::ComposeProjectPrefix(prefix) => write!(f, "compose_project_prefix:{prefix}"),
            Selector::ComposeProject(pattern) => write!(f, "compose_project:{pattern}"),
        }
    }
}

impl std::str::FromStr for Selector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("label", label)) => Ok(Selector::Label(label.to_string())),
            Some(("compose_project_prefix", prefix)) => Ok(Selector::ComposeProjectPrefix(prefix.to_string())),
            Some(("compose_project", pattern)) => Ok(Selector::ComposeProject(pattern.to_string())),
            _ => Err(format!(
                "{text:?} is not a selector: expected label:K=V, compose_project_prefix:P or compose_project:PATTERN"
            )),
        }
    }
}

/// A selector as written: a map with exactly one of the keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorEntry {
    label: Option<String>,
    compose_project_prefix: Option<String>,
    compose_project: Option<String>,
}

impl TryFrom<SelectorEntry> for Selector {
    type Error = String;

    fn try_from(entry: SelectorEntry) -> Result<Self, String> {
        match (entry.label, entry.compose_project_prefix, entry.compose_project) {
            (Some(label), None, None) => Ok(Selector::Label(label)),
            (None, Some(prefix), None) => Ok(Selector::ComposeProjectPrefix(prefix)),
            (None, None, Some(pattern)) => Ok(Selector::ComposeProject(pattern)),
            _ => Err("a selector has exactly one of `label: K=V`, `compose_project_prefix: PREFIX` \
                      or `compose_project: PATTERN`"
                .to_string()),
        }
    }
}

fn yes() -> bool {
    true
}

fn optional_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map(|text| {
        crate::clock::parse_duration(&text)
            .map_err(|error| serde::de::Error::custom(format!("invalid duration {text:?}: {error}")))
    })
    .transpose()
}

/// The largest benchmark file read: 1 MiB, some thousand times a real one.
const MAX_BENCHMARK_FILE: u64 = 1 << 20;

/// The longest task name: it names the task's log file (`<task>.log`, at
/// most 255 bytes on Linux) and goes into owner labels and compose project
/// names, so it is kept well under every such limit.
pub(crate) const MAX_TASK_NAME: usize = 200;

/// Whether a task name can name a log file and a label value.
pub(crate) fn check_task_name(task: &str) -> Result<(), String> {
    if task.is_empty() || task.contains(['/', '\0']) || task == "." || task == ".." {
        return Err("it must not be empty, `.` or `..`, nor hold '/'".to_string());
    }
    if task.chars().any(char::is_control) {
        return Err("it must not hold control characters (tabs, newlines)".to_string());
    }
    if task.len() > MAX_TASK_NAME {
        return Err(format!("it is {} bytes long, and at most {MAX_TASK_NAME} make a log file name", task.len()));
    }
    Ok(())
}

impl Benchmark {
    /// Reads and checks a benchmark file.
    pub(crate) fn load(path: &Path) -> Result<Self, Error> {
        let io_error = |source| Error::Io { what: "read benchmark file", path: path.to_path_buf(), source };
        // A benchmark file is a few kilobytes; a huge one is a mistake (a log, a dataset) that
        // would only cost memory and time to parse.
        let size = std::fs::metadata(path).map_err(io_error)?.len();
        if size > MAX_BENCHMARK_FILE {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: format!("{size} bytes is not a benchmark file (at most {MAX_BENCHMARK_FILE}); check the path"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io_error)?;
        Self::parse(&text, path)
    }

    pub(crate) fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let config_error = |message: String| Error::Config { path: path.to_path_buf(), message };
        let benchmark: Benchmark = serde_yaml::from_str(text).map_err(|error| {
            let message = match error.location() {
                Some(location) => format!(
                    "line {}, column {}: {}",
                    location.line(),
                    location.column(),
                    strip_location(&error.to_string())
                ),
                None => error.to_string(),
            };
            config_error(message)
        })?;
        if benchmark.harness.command.is_empty() {
            return Err(config_error("harness.command is empty: give the program and its arguments as a list".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for task in &benchmark.tasks {
            if let Err(why) = check_task_name(task) {
                return Err(config_error(format!("task name {task:?} is not usable: {why}")));
            }
            if !seen.insert(task) {
                return Err(config_error(format!("task {task:?} is listed twice")));
            }
        }
        if benchmark.concurrency == Some(0) {
            return Err(config_error("concurrency must be at least 1".into()));
        }
        Ok(benchmark)
    }
}

/// serde_yaml appends " at line L column C"; we lead with it instead.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

/// Fills `{task}`, `{run_id}` and `{task_index}` in a harness argument or selector.
pub(crate) fn fill(template: &str, task: &str, run_id: &str, task_index: usize) -> String {
    template.replace("{task}", task).replace("{run_id}", run_id).replace("{task_index}", &task_index.to_string())
}

/// Whether `value` fits a template whose placeholders stand for any
/// non-empty text. Fill `{run_id}` first to ask "does this belong to run R?".
pub(crate) fn matches_template(template: &str, value: &str) -> bool {
    matches_pieces(&pieces(template, Spelling::AsWritten), value)
}

/// Whether a compose project is named by `pattern`: `*` stands for any
/// text, a placeholder for any non-empty text, and the rest is spelled as
/// compose and the harnesses spell project names (lower case; anything but
/// letters, digits, `_` and `-` becomes `-`), so a task `Hello.World` is
/// found in project `hello-world-1-of-1-…`.
pub(crate) fn compose_project_matches(pattern: &str, project: &str) -> bool {
    matches_pieces(&pieces(pattern, Spelling::ComposeProject), project)
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `*` in a compose-project pattern: any text, even none.
    AnyText,
    /// A placeholder: any non-empty text.
    Placeholder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// Literals as written; `*` is a literal star.
    AsWritten,
    /// Literals as compose spells project names; `*` is a wildcard.
    ComposeProject,
}

const PLACEHOLDERS: [&str; 3] = ["{task}", "{run_id}", "{task_index}"];

fn pieces(template: &str, spelling: Spelling) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(next) = rest.chars().next() {
        if let Some(placeholder) = PLACEHOLDERS.iter().find(|placeholder| rest.starts_with(**placeholder)) {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            pieces.push(Piece::Placeholder);
            rest = &rest[placeholder.len()..];
            continue;
        }
        match (next, spelling) {
            ('*', Spelling::ComposeProject) => {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                pieces.push(Piece::AnyText);
            }
            (_, Spelling::AsWritten) => literal.push(next),
            (_, Spelling::ComposeProject) => literal.extend(compose_spelling(next)),
        }
        rest = &rest[next.len_utf8()..];
    }
    pieces.push(Piece::Literal(literal));
    pieces.retain(|piece| piece != &Piece::Literal(String::new()));
    pieces
}

/// How compose (and Harbor, and Terminal-Bench's dots) spell one character of a project name.
fn compose_spelling(character: char) -> impl Iterator<Item = char> {
    character.to_lowercase().map(|lower| match lower {
        'a'..='z' | '0'..='9' | '_' | '-' => lower,
        _ => '-',
    })
}

/// Whether `value` is spelled by `pieces`: `fits[i]` holds at which byte
/// offsets of `value` the first `i` pieces can end; linear in the pieces
/// times the length squared at worst, never exponential.
fn matches_pieces(pieces: &[Piece], value: &str) -> bool {
    let boundaries: Vec<usize> = (0..=value.len()).filter(|offset| value.is_char_boundary(*offset)).collect();
    let mut ends: Vec<bool> = boundaries.iter().map(|offset| *offset == 0).collect();
    for piece in pieces {
        let mut next = vec![false; boundaries.len()];
        for (start_index, start) in boundaries.iter().enumerate().filter(|(index, _)| ends[*index]) {
            for (end_index, end) in boundaries.iter().enumerate().skip(start_index) {
                next[end_index] |= match piece {
                    Piece::Literal(literal) => value[*start..*end] == *literal,
                    Piece::AnyText => true,
                    Piece::Placeholder => end > start,
                };
            }
        }
        ends = next;
    }
    ends.last().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_intervals_are_minutes_or_off_and_anything_else_names_the_value() {
        let parse = |daytona: &str| {
            Benchmark::parse(&format!("name: x\nharness:\n  command: [true]\ndaytona:\n{daytona}"), Path::new("b.yaml"))
        };
        let section = |daytona: &str| parse(daytona).unwrap().daytona.unwrap();
        let both = section("  auto_stop_minutes: 45\n  auto_delete_minutes: -1\n");
        assert_eq!(both.auto_stop_minutes, Some(Interval::Minutes(45)));
        assert_eq!(both.auto_delete_minutes, Some(Interval::Minutes(-1)));
        let off = section("  auto_stop_minutes: off\n  auto_delete_minutes: \"OFF\"\n");
        assert_eq!((off.auto_stop_minutes, off.auto_delete_minutes), (Some(Interval::Off), Some(Interval::Off)));
        let unset = section("  enabled: true\n");
        assert_eq!((unset.auto_stop_minutes, unset.auto_delete_minutes), (None, None));
        for bad in ["  auto_stop_minutes: -5\n", "  auto_stop_minutes: soon\n", "  auto_delete_minutes: 1.5\n"] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("whole number of minutes") && error.contains("b.yaml"), "{bad}: {error}");
        }
    }

    #[test]
    fn task_names_that_cannot_name_a_log_file_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\nb", "tab\there", &"x".repeat(MAX_TASK_NAME + 1)] {
            assert!(check_task_name(bad).is_err(), "{bad:?}");
        }
        for good in ["hello", "fix git", "ünïcode", &"x".repeat(MAX_TASK_NAME)] {
            assert_eq!(check_task_name(good), Ok(()), "{good:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn an_accepted_task_name_makes_a_file_name_linux_takes(task in "\\PC{0,300}") {
            if check_task_name(&task).is_ok() {
                let file = format!("{task}.log");
                proptest::prop_assert!(file.len() <= 255 && !file.contains('/'));
            }
        }
    }

    #[test]
    fn the_shipped_benchmarks_parse() {
        for name in ["smoke", "terminal-bench", "harbor"] {
            let path = PathBuf::from(format!("benchmarks/{name}.yaml"));
            Benchmark::load(&path).unwrap_or_else(|error| panic!("{name}: {error}"));
        }
        Benchmark::parse(SMOKE_BENCHMARK, Path::new("smoke.yaml")).unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected_with_line_and_column() {
        let text = "name: x\nharness:\n  command: [true]\n  comand: oops\n";
        let error = Benchmark::parse(text, Path::new("b.yaml")).unwrap_err().to_string();
        assert!(error.starts_with("b.yaml: line 4, column 3: "), "{error}");
        assert!(error.contains("unknown field `comand`"), "{error}");
    }

    #[test]
    fn bad_durations_say_what_was_expected() {
        let text = "name: x\nharness:\n  command: [true]\n  timeout: soon\n";
        let error = Benchmark::parse(text, Path::new("b.yaml")).unwrap_err().to_string();
        assert!(error.contains("invalid duration \"soon\""), "{error}");
    }

    #[test]
    fn selectors_read_back_what_they_write() {
        for selector in [
            Selector::Label("a=b:c".into()),
            Selector::ComposeProjectPrefix("tb-{run_id}".into()),
            Selector::ComposeProject("{task}-*-{run_id}".into()),
        ] {
            assert_eq!(selector.to_string().parse::<Selector>(), Ok(selector));
        }
        assert!("nonsense".parse::<Selector>().is_err());
        assert!("size:3".parse::<Selector>().is_err());
    }

    #[test]
    fn compose_project_patterns_match_as_compose_spells_names() {
        let pattern = fill("{task}-*-of-*-{run_id}-{task}", "Hello.World", "20261130-1016-k3f9", 0);
        assert!(compose_project_matches(&pattern, "hello-world-1-of-1-20261130-1016-k3f9-hello-world"));
        assert!(compose_project_matches(&pattern, "hello-world-2-of-3-20261130-1016-k3f9-hello-world"));
        assert!(!compose_project_matches(&pattern, "hello-world-1-of-1-20261130-1016-zzzz-hello-world"));
        assert!(!compose_project_matches(&pattern, "other-1-of-1-20261130-1016-k3f9-hello-world"));
        // A template (sweeps): placeholders stand for any non-empty text, `*` for any.
        assert!(compose_project_matches("{task}-*-of-*-{run_id}-{task}", "a-1-of-1-r-a"));
        assert!(!compose_project_matches("{task}-*-of-*-{run_id}-{task}", "a-1-of-1--a"));
        assert!(compose_project_matches("tb*", "tb"));
        assert!(!compose_project_matches("tb", "tb-more"));
        // Outside compose-project patterns a star is just a star.
        assert!(matches_template("a*b", "a*b"));
        assert!(!matches_template("a*b", "axb"));
    }

    proptest::proptest! {
        #[test]
        fn patterns_never_panic_and_a_value_fits_itself_with_stars_between(
            pattern in "[a-zA-Z0-9*{}_. -]{0,24}",
            value in "[a-z0-9_-]{0,24}",
            cut in 0usize..24,
        ) {
            let _ = compose_project_matches(&pattern, &value);
            let _ = matches_template(&pattern, &value);
            let cut = cut.min(value.len());
            let starred = format!("{}*{}", &value[..cut], &value[cut..]);
            proptest::prop_assert!(compose_project_matches(&starred, &value));
            proptest::prop_assert!(compose_project_matches(&value.to_uppercase(), &value));
        }
    }

    #[test]
    fn placeholders_fill_and_match() {
        assert_eq!(fill("tb-{run_id}-{task}", "hello", "r1", 0), "tb-r1-hello");
        assert!(matches_template("tb-{run_id}-{task}", "tb-20261129-2304-k3f9-hello"));
        assert!(matches_template("tb-20261129-2304-k3f9-{task}", "tb-20261129-2304-k3f9-hello"));
        assert!(!matches_template("tb-20261129-2304-zzzz-{task}", "tb-20261129-2304-k3f9-hello"));
        assert!(matches_template("smoke/{task}", "smoke/a"));
        assert!(!matches_template("smoke/{task}", "smoke/"));
        assert!(!matches_template("tb-{run_id}-{task}", "other-r1-hello"));
        assert!(matches_template("fixed", "fixed"));
        assert!(!matches_template("fixed", "fixed2"));
    }
}

/// The benchmark-file parser fed mutated real files (`tests/corpus/benchmarks`: the shipped
/// benchmarks and the README's file with every key): an error or a benchmark, never a panic,
/// and every template of a parsed one filled and matched.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::corpus::{mutated, seeds};

    fn read(bytes: &[u8]) -> bool {
        let text = String::from_utf8_lossy(bytes);
        let Ok(benchmark) = Benchmark::parse(&text, Path::new("fuzzed.yaml")) else { return false };
        for (index, task) in benchmark.tasks.iter().enumerate() {
            for argument in &benchmark.harness.command {
                let filled = fill(argument, task, "20261130-1500-k3f9", index);
                let _ = matches_template(argument, &filled);
            }
            for selector in &benchmark.docker.selectors {
                let selector = selector.map(|template| fill(template, task, "20261130-1500-k3f9", index));
                if let Some(pattern) = selector.project_pattern() {
                    let _ = compose_project_matches(&pattern, task);
                }
            }
        }
        true
    }

    proptest! {
        #[test]
        fn any_benchmark_file_parses_or_is_refused_never_a_panic(file in mutated("benchmarks")) {
            read(&file);
        }
    }

    #[test]
    fn the_corpus_itself_parses() {
        assert!(seeds("benchmarks").iter().all(|file| read(file)));
    }
}
