//! The harnesses' own result files: where a task's harness wrote them (read
//! off its command line, with the harness's own defaults), and what they say
//! about the benchmark itself, which a zero exit status does not: resolved,
//! unresolved or error, and the score.
//!
//! Terminal-Bench writes `<output-path>/<run-id>/results.json` (one entry
//! per trial: `is_resolved`, `failure_mode`). Harbor writes
//! `<jobs-dir>/<job-name>/result.json` when the job ends, and one
//! `result.json` per trial beside it (`verifier_result.rewards`,
//! `exception_info`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ResultsFormat;

/// What the benchmark made of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// Every trial solved the task (Terminal-Bench: resolved; Harbor: full reward).
    Resolved,
    /// The harness judged the task and it was not solved.
    Unresolved,
    /// No verdict: a trial failed for another reason (timeout, agent or
    /// harness error), or the result file is missing or unreadable.
    Error,
}

impl Verdict {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Verdict::Resolved => "resolved",
            Verdict::Unresolved => "unresolved",
            Verdict::Error => "error",
        }
    }
}

/// A task's result, as its harness's own files say.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct TaskResult {
    pub(crate) verdict: Verdict,
    /// Terminal-Bench: the share of trials resolved; Harbor: the mean
    /// reward. `None` when there is no result to score.
    pub(crate) score: Option<f64>,
    pub(crate) trials: usize,
    /// Why the verdict is `error`.
    pub(crate) detail: Option<String>,
    /// The file read (or looked for).
    pub(crate) path: PathBuf,
}

impl TaskResult {
    fn error(path: PathBuf, detail: String) -> Self {
        TaskResult { verdict: Verdict::Error, score: None, trials: 0, detail: Some(detail), path }
    }
}

/// Reads the result a task's harness wrote. Never fails: a missing or
/// malformed file is an `error` verdict saying what was wrong.
pub(crate) fn read(format: ResultsFormat, args: &[String], cwd: &Path) -> TaskResult {
    let path = match results_path(format, args, cwd) {
        Ok(path) => path,
        Err(detail) => return TaskResult::error(PathBuf::new(), detail),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => return TaskResult::error(path.clone(), format!("cannot read {}: {error}", path.display())),
    };
    let judged = match format {
        ResultsFormat::TerminalBench => terminal_bench(&text),
        ResultsFormat::Harbor => harbor(&text, &trial_results(&path)),
    };
    match judged {
        Ok(result) => TaskResult { path, ..result },
        Err(detail) => TaskResult::error(path.clone(), format!("{}: {detail}", path.display())),
    }
}

/// Where the harness writes its result, from its arguments and its defaults.
pub(crate) fn results_path(format: ResultsFormat, args: &[String], cwd: &Path) -> Result<PathBuf, String> {
    match format {
        ResultsFormat::TerminalBench => {
            let output = flag_value(args, &["--output-path"]).unwrap_or("runs");
            let run_id = flag_value(args, &["--run-id"]).ok_or(
                "the harness command has no --run-id, so its results.json cannot be found; \
                 add `--run-id {run_id}-{task}` to harness.command",
            )?;
            Ok(cwd.join(output).join(run_id).join("results.json"))
        }
        ResultsFormat::Harbor => {
            let jobs = flag_value(args, &["--jobs-dir", "-o"]).unwrap_or("jobs");
            let job = flag_value(args, &["--job-name"]).ok_or(
                "the harness command has no --job-name, so its result.json cannot be found; \
                 add `--job-name {run_id}-{task}` to harness.command",
            )?;
            Ok(cwd.join(jobs).join(job).join("result.json"))
        }
    }
}

/// The value of the last of `names` in `args` (`--name value` or
/// `--name=value`), as a command-line parser that lets the last one win.
fn flag_value<'a>(args: &'a [String], names: &[&str]) -> Option<&'a str> {
    let mut value = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        if word == "--" {
            break;
        }
        for name in names {
            if word == name {
                value = words.clone().next().map(String::as_str).or(value);
            } else if let Some(inline) = word.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
                value = Some(inline);
            }
        }
    }
    value
}

#[derive(Deserialize)]
struct TerminalBenchResults {
    results: Vec<TerminalBenchTrial>,
}

#[derive(Deserialize)]
struct TerminalBenchTrial {
    is_resolved: Option<bool>,
    #[serde(default)]
    failure_mode: Option<String>,
}

/// Terminal-Bench's verdict: resolved when every trial is; an error when an
/// unresolved trial names a failure mode (a timeout, an agent error); the
/// score is the share resolved.
fn terminal_bench(text: &str) -> Result<TaskResult, String> {
    let parsed: TerminalBenchResults = serde_json::from_str(text).map_err(|error| error.to_string())?;
    let trials = parsed.results.len();
    if trials == 0 {
        return Err("no trials in the results".to_string());
    }
    let resolved = parsed.results.iter().filter(|trial| trial.is_resolved == Some(true)).count();
    let failures: Vec<&str> = parsed
        .results
        .iter()
        .filter(|trial| trial.is_resolved != Some(true))
        .filter_map(|trial| trial.failure_mode.as_deref())
        .filter(|mode| !matches!(*mode, "unset" | "none"))
        .collect();
    let verdict = match (resolved == trials, failures.is_empty()) {
        (true, _) => Verdict::Resolved,
        (false, true) => Verdict::Unresolved,
        (false, false) => Verdict::Error,
    };
    let detail = (!failures.is_empty()).then(|| format!("failure mode: {}", failures.join(", ")));
    Ok(TaskResult { verdict, score: Some(resolved as f64 / trials as f64), trials, detail, path: PathBuf::new() })
}

#[derive(Deserialize)]
struct HarborJob {
    #[serde(default)]
    finished_at: Option<String>,
}

#[derive(Deserialize)]
struct HarborTrial {
    #[serde(default)]
    verifier_result: Option<HarborVerifier>,
    #[serde(default)]
    exception_info: Option<HarborException>,
}

#[derive(Deserialize)]
struct HarborVerifier {
    #[serde(default)]
    rewards: Option<std::collections::BTreeMap<String, f64>>,
}

#[derive(Deserialize)]
struct HarborException {
    exception_type: String,
}

/// The trials' `result.json` texts beside a Harbor job's `result.json`.
fn trial_results(job_result: &Path) -> Vec<String> {
    let Some(job_dir) = job_result.parent() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(job_dir) else { return Vec::new() };
    let mut texts: Vec<(PathBuf, String)> = entries
        .flatten()
        .map(|entry| entry.path().join("result.json"))
        .filter_map(|path| Some((path.clone(), std::fs::read_to_string(&path).ok()?)))
        .collect();
    texts.sort();
    texts.into_iter().map(|(_, text)| text).collect()
}

/// Harbor's verdict: resolved when every trial earned the full reward (1);
/// an error when a trial raised; the score is the mean reward.
fn harbor(job: &str, trials: &[String]) -> Result<TaskResult, String> {
    let job: HarborJob = serde_json::from_str(job).map_err(|error| error.to_string())?;
    if job.finished_at.is_none() {
        return Err("the job did not finish".to_string());
    }
    let trials: Vec<HarborTrial> = trials
        .iter()
        .map(|text| serde_json::from_str(text).map_err(|error| format!("a trial's result.json: {error}")))
        .collect::<Result<_, _>>()?;
    if trials.is_empty() {
        return Err("no trial results beside it".to_string());
    }
    let rewards: Vec<f64> = trials.iter().map(reward).collect();
    let score = rewards.iter().sum::<f64>() / rewards.len() as f64;
    let raised: Vec<&str> =
        trials.iter().filter_map(|trial| trial.exception_info.as_ref()).map(|e| e.exception_type.as_str()).collect();
    let verdict = match (rewards.iter().all(|reward| *reward >= 1.0), raised.is_empty()) {
        (true, _) => Verdict::Resolved,
        (false, true) => Verdict::Unresolved,
        (false, false) => Verdict::Error,
    };
    let detail = (!raised.is_empty()).then(|| format!("raised: {}", raised.join(", ")));
    Ok(TaskResult { verdict, score: Some(score), trials: trials.len(), detail, path: PathBuf::new() })
}

/// A trial's reward: `reward` when the verifier gave one by that name, else
/// the mean of the rewards it gave, else 0 (not verified).
fn reward(trial: &HarborTrial) -> f64 {
    let Some(rewards) = trial.verifier_result.as_ref().and_then(|verifier| verifier.rewards.as_ref()) else {
        return 0.0;
    };
    match (rewards.get("reward"), rewards.len()) {
        (Some(reward), _) => *reward,
        (None, 0) => 0.0,
        (None, count) => rewards.values().sum::<f64>() / count as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn result_paths_come_from_the_command_line_and_the_harness_defaults() {
        let cwd = Path::new("/work");
        let tb = words("run --dataset-path tasks --task-id hello --run-id r1-hello --output-path=out");
        let path = results_path(ResultsFormat::TerminalBench, &tb, cwd).unwrap();
        assert_eq!(path, Path::new("/work/out/r1-hello/results.json"));
        let tb = words("run --run-id a --run-id b");
        let path = results_path(ResultsFormat::TerminalBench, &tb, cwd).unwrap();
        assert_eq!(path, Path::new("/work/runs/b/results.json"));
        let harbor = words("run -p tasks --job-name r1-hello -o /abs/jobs");
        let path = results_path(ResultsFormat::Harbor, &harbor, cwd).unwrap();
        assert_eq!(path, Path::new("/abs/jobs/r1-hello/result.json"));
        let error = results_path(ResultsFormat::Harbor, &words("run --job-name"), cwd).unwrap_err();
        assert!(error.contains("--job-name {run_id}-{task}"), "{error}");
    }

    #[test]
    fn terminal_bench_resolved_unresolved_and_failure_modes() {
        let one = |resolved: &str, mode: &str| {
            format!(r#"{{"results": [{{"is_resolved": {resolved}, "failure_mode": "{mode}"}}], "accuracy": 0}}"#)
        };
        let resolved = terminal_bench(&one("true", "unset")).unwrap();
        assert_eq!((resolved.verdict, resolved.score, resolved.trials), (Verdict::Resolved, Some(1.0), 1));
        let unresolved = terminal_bench(&one("false", "unset")).unwrap();
        assert_eq!((unresolved.verdict, unresolved.score), (Verdict::Unresolved, Some(0.0)));
        let timed_out = terminal_bench(&one("null", "agent_timeout")).unwrap();
        assert_eq!(timed_out.verdict, Verdict::Error);
        assert_eq!(timed_out.detail.as_deref(), Some("failure mode: agent_timeout"));
        assert!(terminal_bench(r#"{"results": []}"#).is_err());
        assert!(terminal_bench("not json").is_err());
    }

    #[test]
    fn harbor_rewards_exceptions_and_unfinished_jobs() {
        let job = r#"{"finished_at": "2026-11-30T10:16:56"}"#;
        let trial = |reward: &str| format!(r#"{{"verifier_result": {{"rewards": {{"reward": {reward}}}}}}}"#);
        let resolved = harbor(job, &[trial("1.0")]).unwrap();
        assert_eq!((resolved.verdict, resolved.score), (Verdict::Resolved, Some(1.0)));
        let half = harbor(job, &[trial("1.0"), trial("0.0")]).unwrap();
        assert_eq!((half.verdict, half.score, half.trials), (Verdict::Unresolved, Some(0.5), 2));
        let raised = r#"{"verifier_result": null, "exception_info": {"exception_type": "AgentTimeoutError"}}"#;
        let error = harbor(job, &[raised.to_string()]).unwrap();
        assert_eq!((error.verdict, error.detail.as_deref()), (Verdict::Error, Some("raised: AgentTimeoutError")));
        assert!(harbor(r#"{"finished_at": null}"#, &[trial("1.0")]).is_err());
        assert!(harbor(job, &[]).is_err());
        let named = r#"{"verifier_result": {"rewards": {"a": 1.0, "b": 0.0}}}"#;
        assert_eq!(harbor(job, &[named.to_string()]).unwrap().score, Some(0.5));
    }

    proptest::proptest! {
        #[test]
        fn any_file_text_or_arguments_give_a_verdict_never_a_panic(text in ".{0,200}", args in ".{0,80}") {
            let _ = terminal_bench(&text);
            let _ = harbor(&text, std::slice::from_ref(&text));
            let args = words(&args);
            let _ = results_path(ResultsFormat::TerminalBench, &args, Path::new("."));
            let _ = results_path(ResultsFormat::Harbor, &args, Path::new("."));
        }
    }
}
