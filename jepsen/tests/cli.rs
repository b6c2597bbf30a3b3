//! The `seam-jepsen check` command on the sample histories in `testdata/`:
//! verdicts, exit statuses, messages for bad input, and the report files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seam-jepsen")).arg("check").args(args).output().expect("the binary runs")
}

fn check_file(workload: &str, file: &str, extra: &[&str]) -> Output {
    let path = testdata(file);
    let path = path.to_str().expect("utf-8 path");
    let mut args = vec!["--workload", workload, "--history", path];
    args.extend_from_slice(extra);
    check(&args)
}

fn summary(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}); stderr: {}", String::from_utf8_lossy(&output.stderr))
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn verdicts_map_to_exit_statuses() {
    let relaxed = ["--budget-ms", "100", "--skew-ms", "10"];
    let cases: [(&str, &str, &[&str], i32, &str); 5] = [
        ("register", "register-valid.jsonl", &[], 0, "valid"),
        ("register", "register-stale-read.jsonl", &[], 1, "invalid"),
        ("lease", "lease-stale-token.jsonl", &[], 1, "invalid"),
        ("idempotent", "idempotent-applied-twice.jsonl", &[], 1, "invalid"),
        ("relaxed", "relaxed-stale-get.jsonl", &relaxed, 1, "invalid"),
    ];
    for (workload, file, extra, code, verdict) in cases {
        let output = check_file(workload, file, extra);
        assert_eq!(output.status.code(), Some(code), "{file}: {}", stderr(&output));
        let summary = summary(&output);
        assert_eq!(summary["verdict"], verdict, "{file}");
        assert_eq!(summary["run"]["workload"], workload, "{file}");
        if code == 1 {
            let first = &summary["results"][0]["anomalies"][0];
            assert!(first["explanation"].is_string(), "{file}: {first}");
            assert!(first["ops"].as_array().is_some_and(|ops| !ops.is_empty()));
        }
    }
}

#[test]
fn search_bound_gives_unknown_and_status_2() {
    let output = check_file("register", "register-valid.jsonl", &["--search-states-max", "1"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let summary = summary(&output);
    assert_eq!(summary["verdict"], "unknown");
    let reason = summary["results"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("search_states_max"), "{reason}");
}

#[test]
fn bad_input_gives_status_3_naming_file_and_line() {
    let output = check_file("register", "bad-line.jsonl", &[]);
    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(message.contains("bad-line.jsonl: line 2, column"), "{message}");
    assert!(output.stdout.is_empty());

    // The wrong workload for a history is a schema error on its first op.
    let output = check_file("register", "lease-stale-token.jsonl", &[]);
    assert_eq!(output.status.code(), Some(3));
    let message = stderr(&output);
    assert!(message.contains("lease-stale-token.jsonl: line 1 (op index 0, f=acquire)"), "{message}");

    let output = check_file("register", "no-such-history.jsonl", &[]);
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("no-such-history.jsonl"));

    let output = check_file("relaxed", "relaxed-stale-get.jsonl", &[]);
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("--budget-ms"), "{}", stderr(&output));

    let output = check(&["--workload", "bank", "--history", "x"]);
    assert_eq!(output.status.code(), Some(3), "usage errors are bad input");
}

#[test]
fn out_writes_summary_and_report() {
    let dir = std::env::temp_dir().join(format!("seam-jepsen-cli-{}", std::process::id()));
    let dir_arg = dir.to_str().expect("utf-8 path");
    let output = check_file(
        "register",
        "register-stale-read.jsonl",
        &["--out", dir_arg, "--seed", "7", "--nemeses", "partition,kill"],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("summary.json")).expect("summary.json written"),
    )
    .expect("summary.json parses");
    assert_eq!(written, summary(&output), "stdout and summary.json agree");
    assert_eq!(written["run"]["seed"], 7);
    assert_eq!(written["run"]["nemeses"][1], "kill");
    assert_eq!(written["fault_windows"][0]["kind"], "partition");
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html written");
    assert!(html.contains("First anomaly: nonlinearizable on key x"));
    assert!(html.contains("<svg"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
