//! Safe provider-side defaults, through the Daytona contract server: the
//! collection intervals on the create bodies the server received, for each
//! way of setting them (by the harness, by the benchmark file, defaulted
//! from the task's timeout, turned off), what the run reports (`-v`, the
//! JSON report), and every sandbox gone by listing afterwards.

use std::path::PathBuf;

use daytona_contract::ContractConfig;
use serde_json::{json, Value};

use crate::common::daytona::Org;
use crate::common::{venv_python, CliOutput};
use crate::daytona::creates_by_task;
use crate::run::report_json;

/// `harness.py TASK`: one create straight to the API the run gives it,
/// labelled `fixture: <variant>/<task>`; task `own` sets both intervals
/// itself, task `bare` neither.
const HARNESS: &str = r#"
import json, os, sys, urllib.request

task = sys.argv[1]
body = {"labels": {"fixture": os.environ["VARIANT"] + "/" + task}}
if task == "own":
    body.update(autoStopInterval=5, autoDeleteInterval=7)
request = urllib.request.Request(
    os.environ["DAYTONA_API_URL"] + "/sandbox",
    data=json.dumps(body).encode(),
    headers={"Authorization": "Bearer " + os.environ["DAYTONA_API_KEY"], "Content-Type": "application/json"},
)
with urllib.request.urlopen(request) as answer:
    print("created " + json.load(answer)["id"], flush=True)
"#;

/// A benchmark named `variant` whose `daytona:` section holds `daytona` (the lines under it).
fn benchmark(org: &Org, variant: &str, daytona: &str) -> PathBuf {
    let dir = org.state_dir().join("defaults");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("harness.py"), HARNESS).unwrap();
    let yaml = format!(
        "name: {variant}\n\
         harness:\n  command: [\"{python}\", harness.py, \"{{task}}\"]\n  cwd: .\n  env: {{VARIANT: {variant}}}\n\
         tasks: [bare, own]\n\
         docker:\n  enabled: false\n\
         daytona:\n  enabled: true\n{daytona}",
        python = venv_python("json").display(),
    );
    let path = dir.join(format!("{variant}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn run(org: &Org, variant: &str, daytona: &str, flags: &[&str]) -> CliOutput {
    let path = benchmark(org, variant, daytona);
    let mut args = vec!["-v", "run", path.to_str().unwrap(), "-j", "2"];
    args.extend(flags);
    let output = org.cli(&args).await;
    output.assert_code(0);
    output
}

/// The intervals of the one create the server received from `variant`'s
/// task `task`: each a number, or null when the body left it out.
fn received(org: &Org, variant: &str, task: &str) -> (Value, Value) {
    let creates = creates_by_task(&org.server);
    let bodies = creates.get(&format!("{variant}/{task}")).unwrap_or_else(|| panic!("no create of {variant}/{task}"));
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let body = &bodies[0];
    let field = |name: &str| body.get(name).cloned().unwrap_or(Value::Null);
    (field("autoStopInterval"), field("autoDeleteInterval"))
}

#[tokio::test(flavor = "multi_thread")]
async fn collection_intervals_are_the_harnesss_the_files_defaulted_from_the_timeout_or_off() {
    let org = Org::start(ContractConfig::default()).await;

    // The file says nothing: the task's timeout plus 30 minutes, and a day.
    let defaulted = run(&org, "silent", "", &["--timeout", "10m"]).await;
    assert_eq!(received(&org, "silent", "bare"), (json!(40), json!(1440)), "{defaulted}");
    assert_eq!(received(&org, "silent", "own"), (json!(5), json!(7)), "the harness's own values stand");
    let expected = json!({"auto_stop_minutes": 40, "auto_stop_from": "default",
                          "auto_delete_minutes": 1440, "auto_delete_from": "default"});
    assert_eq!(report_json(&defaulted)["daytona"], expected, "{defaulted}");
    assert!(
        defaulted.stderr.contains("autoStopInterval 40 min (default), autoDeleteInterval 1440 min (default)"),
        "-v does not print the values in effect\n{defaulted}"
    );

    // No timeout: an hour; the file's auto-delete stands beside the default auto-stop.
    let untimed = run(&org, "untimed", "  auto_delete_minutes: 120\n", &[]).await;
    assert_eq!(received(&org, "untimed", "bare"), (json!(60), json!(120)), "{untimed}");
    let report = &report_json(&untimed)["daytona"];
    assert_eq!((&report["auto_stop_from"], &report["auto_delete_from"]), (&json!("default"), &json!("file")));

    // Set by the file.
    let from_file =
        run(&org, "file", "  auto_stop_minutes: 15\n  auto_delete_minutes: 0\n", &["--timeout", "10m"]).await;
    assert_eq!(received(&org, "file", "bare"), (json!(15), json!(0)), "{from_file}");
    assert_eq!(received(&org, "file", "own"), (json!(5), json!(7)));

    // Turned off: the body goes as the harness sent it.
    let off = run(&org, "off", "  auto_stop_minutes: off\n  auto_delete_minutes: off\n", &["--timeout", "10m"]).await;
    assert_eq!(received(&org, "off", "bare"), (Value::Null, Value::Null), "{off}");
    assert_eq!(received(&org, "off", "own"), (json!(5), json!(7)));
    let expected = json!({"auto_stop_minutes": null, "auto_stop_from": "off",
                          "auto_delete_minutes": null, "auto_delete_from": "off"});
    assert_eq!(report_json(&off)["daytona"], expected, "{off}");
    assert!(off.stderr.contains("autoStopInterval off (the benchmark file), autoDeleteInterval off"), "{off}");

    assert_eq!(org.server.stats().creates, 8);
    assert!(org.left().is_empty(), "sandboxes left on the server: {:?}", org.left());
}
