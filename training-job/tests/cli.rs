//! The `mlops` binary on the embedded local default: bad input gets clear errors naming the file,
//! line and column (never a panic), and the train → registry → predict loop works.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../tests/support/webhook_receiver.rs"]
mod webhook_receiver;
use webhook_receiver::{Receiver, mlops_signature};

fn shared(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(file)
}

fn mlops(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlops"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("MLOPS_STORE")
        .env_remove("MLOPS_TRACKING_URI")
        .env_remove("MLFLOW_TRACKING_URI")
        .env_remove("MLOPS_BATCH_QUEUE")
        .env_remove("MLOPS_BATCH_JOB_DEFINITION")
        .env_remove("AWS_BATCH_JOB_ARRAY_INDEX")
        .output()
        .expect("run mlops")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "mlops failed:\n{}", stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a failing command and returns its error output, checking it is an error, not a panic.
fn fails(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure, got {:?}:\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

const HEADER: &str = "longitude,latitude,housing_median_age,total_rooms,total_bedrooms,population,households,median_income,median_house_value,ocean_proximity";
const ROW: &str = "-122.23,37.88,41.0,880.0,129.0,322.0,126.0,8.3252,452600.0,NEAR BAY";

#[test]
fn malformed_data_files_get_errors_naming_file_line_and_column() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            write("empty.csv", b""),
            vec!["empty.csv: the file is empty"],
        ),
        (
            write(
                "missing.csv",
                HEADER.replace(",ocean_proximity", "").as_bytes(),
            ),
            vec!["missing.csv: line 1 (header): column 'ocean_proximity' is missing"],
        ),
        (
            write(
                "ragged.csv",
                format!("{HEADER}\n{ROW}\n-122.2,37.8,41\n").as_bytes(),
            ),
            vec!["ragged.csv: line 3: expected 10 fields (as in the header), found 3"],
        ),
        (
            write(
                "type.csv",
                format!("{HEADER}\n{}\n", ROW.replace("8.3252", "rich")).as_bytes(),
            ),
            vec![
                "type.csv: 1 invalid value(s)",
                "line 2, column 'median_income': expected a number, found 'rich'",
            ],
        ),
        (
            write(
                "range.csv",
                format!("{HEADER}\n{}\n", ROW.replace("37.88", "95.0")).as_bytes(),
            ),
            vec!["line 2, column 'latitude': 95 is above the maximum 42.5"],
        ),
        (
            write(
                "category.csv",
                format!("{HEADER}\n{}\n", ROW.replace("NEAR BAY", "ON MARS")).as_bytes(),
            ),
            vec!["line 2, column 'ocean_proximity': unknown category 'ON MARS'"],
        ),
        (
            write(
                "utf8.csv",
                &[
                    format!("{HEADER}\n").as_bytes(),
                    &ROW.as_bytes()[..ROW.len() - 3],
                    b"\xff\xfe\n",
                ]
                .concat(),
            ),
            vec!["utf8.csv: line 2, column 'ocean_proximity': the text is not valid UTF-8"],
        ),
    ];
    for (path, wants) in cases {
        let out = mlops(
            dir,
            &[
                "data",
                "validate",
                "california_housing",
                "--data",
                path.to_str().unwrap(),
            ],
        );
        let err = fails(&out);
        for want in wants {
            assert!(
                err.contains(want),
                "{}: want {want:?} in:\n{err}",
                path.display()
            );
        }
    }
    let out = mlops(dir, &["data", "validate", "nope"]);
    assert!(fails(&out).contains("unknown data set 'nope'"));
}

#[test]
fn a_single_100_mb_line_is_rejected_quickly() {
    let home = tempfile::tempdir().unwrap();
    let path = home.path().join("huge.csv");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{HEADER}").unwrap();
    let chunk = vec![b'7'; 1 << 20];
    for _ in 0..100 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let started = std::time::Instant::now();
    let err = fails(&mlops(
        home.path(),
        &[
            "data",
            "validate",
            "california_housing",
            "--data",
            path.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("huge.csv: line 2 is longer than 1048576 bytes"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
fn fetch_from_a_local_copy_verifies_the_checksum() {
    let home = tempfile::tempdir().unwrap();
    let out = ok(&mlops(
        home.path(),
        &[
            "data",
            "fetch",
            "telco_churn",
            "--from",
            shared("telco_churn.csv").to_str().unwrap(),
        ],
    ));
    let cached = PathBuf::from(out.trim());
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(shared("telco_churn.csv")).unwrap()
    );
    let dvc = std::fs::read_to_string(home.path().join("data/telco_churn.csv.dvc")).unwrap();
    assert!(
        dvc.contains("hash: md5") && dvc.contains("size: 970457"),
        "{dvc}"
    );

    // The wrong file is refused and nothing is kept.
    let home = tempfile::tempdir().unwrap();
    let err = fails(&mlops(
        home.path(),
        &[
            "data",
            "fetch",
            "telco_churn",
            "--from",
            shared("california_housing.csv").to_str().unwrap(),
        ],
    ));
    assert!(err.contains("SHA-256 mismatch"), "{err}");
    assert!(!home.path().join("data/telco_churn.csv").exists());
}

#[test]
fn train_register_promote_predict_and_rollback_locally() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let data = shared("telco_churn.csv");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "telco_churn",
            "--data",
            data.to_str().unwrap(),
            "--candidates",
            "linear",
        ];
        args.extend_from_slice(extra);
        ok(&mlops(h, &args))
    };
    let out = train(&["--promote", "challenger"]);
    assert!(out.contains("registered telco_churn version 1"), "{out}");
    assert!(out.contains("roc_auc"), "{out}");
    train(&["--idempotency-key", "job-42"]);
    let again = train(&["--idempotency-key", "job-42"]);
    assert!(
        again.contains("registered telco_churn version 2"),
        "an idempotent retry returns the first registration: {again}"
    );

    let list = ok(&mlops(h, &["registry", "list", "telco_churn"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.starts_with("VERSION  KIND"), "{list}");
    assert!(list.lines().nth(1).unwrap().contains("challenger"));
    let listed: serde_json::Value = serde_json::from_str(&ok(&mlops(
        h,
        &["registry", "list", "telco_churn", "--json"],
    )))
    .unwrap();
    assert_eq!(listed[0]["aliases"], serde_json::json!(["challenger"]));
    // The champion named by another alias.
    let promoted: serde_json::Value = serde_json::from_str(&ok(&mlops(
        h,
        &[
            "registry",
            "--json",
            "promote",
            "telco_churn",
            "challenger",
            "--alias",
            "candidate",
        ],
    )))
    .unwrap();
    assert_eq!(
        (promoted["alias"].as_str(), promoted["to"].as_u64()),
        (Some("candidate"), Some(1))
    );
    // Right after training, `show` says there is no champion and shows the latest version.
    let shown = mlops(h, &["registry", "show", "telco_churn"]);
    assert!(
        stderr(&shown).contains("no champion yet"),
        "{}",
        stderr(&shown)
    );
    assert!(ok(&shown).contains("\"version\": 2"));

    for v in ["1", "2"] {
        ok(&mlops(
            h,
            &[
                "registry",
                "card",
                "telco_churn",
                v,
                "--intended-use",
                "tests",
                "--limitations",
                "test data",
                "--approve",
                "--by",
                "lead",
            ],
        ));
        ok(&mlops(
            h,
            &["registry", "promote", "telco_churn", v, "--by", "lead"],
        ));
    }
    // Traffic: percentages that add up to 100, approved versions only, and `--json` prints
    // exactly the body `PUT /v1/models/{name}/traffic` takes.
    let err = fails(&mlops(
        h,
        &[
            "registry",
            "traffic",
            "telco_churn",
            "champion=80,challenger=30",
        ],
    ));
    assert!(err.contains("add up to 110"), "{err}");
    let split = ok(&mlops(
        h,
        &[
            "registry",
            "traffic",
            "telco_churn",
            "champion=75,challenger=25",
            "--json",
        ],
    ));
    let split: serde_json::Value = serde_json::from_str(&split).unwrap();
    assert_eq!(
        split,
        serde_json::json!({"weights": {"champion": 75, "challenger": 25}})
    );
    let table = ok(&mlops(h, &["registry", "traffic", "telco_churn"]));
    assert!(
        table.starts_with("ALIAS") && table.contains("75.0%"),
        "{table}"
    );
    let rolled = ok(&mlops(
        h,
        &[
            "registry",
            "rollback",
            "telco_churn",
            "--by",
            "lead",
            "--reason",
            "bad",
        ],
    ));
    assert!(rolled.contains("v2 → v1"), "{rolled}");
    let err = fails(&mlops(h, &["registry", "rollback", "telco_churn"]));
    assert!(err.contains("no earlier version to roll back to"), "{err}");
    let show: serde_json::Value =
        serde_json::from_str(&ok(&mlops(h, &["registry", "show", "telco_churn"]))).unwrap();
    assert_eq!(show["version"]["version"], 1);
    assert_eq!(show["card"]["approval"]["approved_by"], "lead");
    assert_eq!(
        show["version"]["lineage"]["data_sha256"],
        "16320c9c1ec72448db59aa0a26a0b95401046bef5d02fd3aeb906448e3055e91"
    );

    // Predict from CSV: the data file itself (ids come from customerID).
    let out = ok(&mlops(
        h,
        &["predict", "telco_churn", "--csv", data.to_str().unwrap()],
    ));
    assert_eq!(out.lines().count(), 7043);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    // The API's shape: 1-based row, id, class name and probabilities.
    assert_eq!(
        (first["row"].as_u64(), first["id"].as_str()),
        (Some(1), Some("7590-VHVEG"))
    );
    let label = first["label"].as_str().unwrap();
    assert!(label == "Yes" || label == "No", "{first}");
    let p = first["probabilities"].as_object().unwrap();
    assert!((p["Yes"].as_f64().unwrap() + p["No"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    assert_eq!(p["Yes"], first["prediction"]);

    // Every bad row is reported; with --skip-invalid the others are predicted (exit status 3),
    // in CSV with batch prediction's columns, and the problems go to the errors file.
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines: Vec<String> = text.lines().take(6).map(str::to_string).collect();
    lines[2] = lines[2]
        .replacen("Female", "Robot", 1)
        .replacen("Male", "Robot", 1);
    lines[4] = lines[4].replacen(",No,", ",Maybe,", 1);
    let mixed = h.join("mixed.csv");
    std::fs::write(&mixed, lines.join("\n") + "\n").unwrap();
    let err = fails(&mlops(
        h,
        &["predict", "telco_churn", "--csv", mixed.to_str().unwrap()],
    ));
    assert!(
        err.contains("2 invalid rows")
            && err.contains("row 2 (line 3)")
            && err.contains("row 4 (line 5)"),
        "{err}"
    );
    assert!(err.contains("nothing was predicted"), "{err}");
    let errors = h.join("errors.csv");
    let out = mlops(
        h,
        &[
            "predict",
            "telco_churn",
            "--csv",
            mixed.to_str().unwrap(),
            "--skip-invalid",
            "--errors",
            errors.to_str().unwrap(),
            "--format",
            "csv",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let csv_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        csv_out.starts_with("row,id,prediction,label,probability_No,probability_Yes\n1,"),
        "{csv_out}"
    );
    assert_eq!(csv_out.lines().count(), 4, "{csv_out}");
    let listed = std::fs::read_to_string(&errors).unwrap();
    assert!(
        listed.starts_with("row,line,field,message\n2,3,gender,"),
        "{listed}"
    );
    // A category outside the schema's list is a field error (not silently all zeros).
    assert!(listed.contains("4,5,"), "{listed}");

    // Bad JSON records name every bad field.
    let rows = h.join("bad.json");
    std::fs::write(
        &rows,
        r#"[{"gender": 3, "tenure": "long", "colour": "red"}]"#,
    )
    .unwrap();
    let err = fails(&mlops(
        h,
        &["predict", "telco_churn", "--json", rows.to_str().unwrap()],
    ));
    for want in [
        "row 1: 'gender' expected a string, got a number",
        "row 1: 'tenure' expected a number",
        "row 1: 'colour' is not an input of this model",
        "row 1: 'Partner' is required",
    ] {
        assert!(err.contains(want), "want {want:?} in {err}");
    }

    // A corrupted bundle in the store is refused.
    let bundles = h.join("store/models/telco_churn/bundles");
    for entry in std::fs::read_dir(&bundles).unwrap() {
        std::fs::write(entry.unwrap().path().join("model.json"), b"{}").unwrap();
    }
    let err = fails(&mlops(
        h,
        &["predict", "telco_churn", "--csv", data.to_str().unwrap()],
    ));
    assert!(err.contains("model.json' is corrupt or truncated"), "{err}");
}

#[test]
fn bad_arguments_are_explained() {
    let home = tempfile::tempdir().unwrap();
    let data = shared("telco_churn.csv");
    let d = data.to_str().unwrap();
    let err = fails(&mlops(
        home.path(),
        &["train", "telco_churn", "--data", d, "--candidates", "svm"],
    ));
    assert!(err.contains("unknown candidate 'svm'"), "{err}");
    let err = fails(&mlops(
        home.path(),
        &[
            "train",
            "telco_churn",
            "--data",
            d,
            "--test-fraction",
            "1.5",
        ],
    ));
    assert!(
        err.contains("--test-fraction must be between 0 and 0.9"),
        "{err}"
    );
    let err = fails(&mlops(
        home.path(),
        &[
            "train",
            "telco_churn",
            "--data",
            d,
            "--model-name",
            "Bad Name",
        ],
    ));
    assert!(err.contains("invalid model name 'Bad Name'"), "{err}");
    let err = fails(&mlops(
        home.path(),
        &["train", "telco_churn", "--data", "/nonexistent.csv"],
    ));
    assert!(
        err.contains("data file /nonexistent.csv does not exist"),
        "{err}"
    );
    let err = fails(&mlops(home.path(), &["predict", "nothing", "--json", "-"]));
    assert!(err.contains("no such model 'nothing'"), "{err}");
}

#[test]
fn quickstart_trains_registers_promotes_and_predicts() {
    let home = tempfile::tempdir().unwrap();
    let data = shared("california_housing.csv");
    let out = ok(&mlops(
        home.path(),
        &["quickstart", "--data", data.to_str().unwrap()],
    ));
    let rmse: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("rmse"))
        .expect("test rmse printed")
        .trim()
        .parse()
        .unwrap();
    assert!(rmse <= 0.45, "quickstart test RMSE {rmse}\n{out}");
    assert!(out.contains("champion → v1"), "{out}");
    assert!(out.contains("predicted"), "{out}");
    let next = format!("mlops --home {} serve", home.path().display());
    assert!(out.contains(&next), "the next steps keep --home: {out}");
    let list = ok(&mlops(home.path(), &["registry", "list"]));
    assert_eq!(
        list.lines()
            .nth(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["california_housing", "1", "champion→v1"]),
        "{list}"
    );
    let err = fails(&mlops(home.path(), &["registry", "show", "california"]));
    assert!(
        err.contains("no such model 'california' (known: california_housing)"),
        "{err}"
    );
    let completions = ok(&mlops(home.path(), &["completions", "bash"]));
    assert!(completions.contains("batch-predict") && completions.contains("--home"));
}

#[test]
fn predict_explains_with_contributions_that_sum_to_the_margin() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let data = shared("california_housing.csv");
    let d = data.to_str().unwrap();
    ok(&mlops(
        h,
        &[
            "train",
            "california_housing",
            "--data",
            d,
            "--candidates",
            "lightgbm",
            "--promote",
            "challenger",
        ],
    ));
    let rows = h.join("rows.json");
    std::fs::write(
        &rows,
        r#"{"longitude": -122.23, "latitude": 37.88, "housing_median_age": 41, "total_rooms": 880, "total_bedrooms": null,
           "population": 322, "households": 126, "median_income": 8.3252, "ocean_proximity": "NEAR BAY"}"#,
    )
    .unwrap();
    let out = ok(&mlops(
        h,
        &[
            "predict",
            "california_housing",
            "--version",
            "challenger",
            "--json",
            rows.to_str().unwrap(),
            "--explain",
        ],
    ));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The API's explanation shape: margin, bias, [{feature, contribution}].
    let e = &line["explanation"];
    let value = |c: &serde_json::Value| c["contribution"].as_f64().unwrap();
    let sum: f64 = e["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(value)
        .sum::<f64>()
        + e["bias"].as_f64().unwrap();
    assert!((sum - e["margin"].as_f64().unwrap()).abs() < 1e-9, "{e}");
    let top = e["contributions"]
        .as_array()
        .unwrap()
        .iter()
        .max_by(|a, b| value(a).abs().total_cmp(&value(b).abs()))
        .unwrap();
    assert_eq!(
        top["feature"], "median_income",
        "a high income drives this prediction: {e}"
    );
}

/// The champion–challenger gate: the first model becomes champion, a better one replaces it, a
/// worse one stays challenger; both models are scored only on rows neither trained on (the
/// champion with seed 42, the challengers with other seeds); every decision and both scores
/// land in the audit log and in `train`'s summary.
#[test]
fn gate_promotes_better_models_only() {
    let home = tempfile::tempdir().unwrap();
    let data = shared("california_housing.csv");
    let train = |candidate: &str, seed: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "california_housing",
            "--data",
            data.to_str().unwrap(),
            "--candidates",
            candidate,
            "--seed",
            seed,
            "--gate-margin",
            "0.01",
        ];
        args.extend_from_slice(extra);
        let out = mlops(home.path(), &args);
        (ok(&out), stderr(&out))
    };
    // Without card fields the winner is held back (its card cannot be approved).
    let (held, _) = train("linear", "42", &[]);
    assert!(held.contains("no champion yet"), "{held}");
    assert!(
        held.contains("not promoted: its card has no intended use or limitations"),
        "{held}"
    );
    assert!(
        held.contains("registry card california_housing 1 --intended-use"),
        "{held}"
    );
    let card = ["--intended-use", "demo", "--limitations", "1990 census"];
    let (first, _) = train("linear", "42", &card);
    assert!(
        first.contains("no champion yet") && first.contains("→ promoted"),
        "{first}"
    );
    // 20,640 rows, 4,128 held out by seed 7, of which the seed-42 champion trained on ~80 %.
    let (better, log) = train("lightgbm", "7", &["--idempotency-key", "k1"]);
    assert!(better.contains("→ promoted"), "{better}");
    let rows = gate_rows(&better);
    assert!((700..=950).contains(&rows), "{rows} rows: {better}");
    assert!(
        log.contains(&format!("gate: scoring on {rows} of 4128 held-out rows")),
        "{log}"
    );
    let (worse, _) = train("linear", "11", &[]);
    assert!(worse.contains("→ not promoted"), "{worse}");
    assert!((700..=950).contains(&gate_rows(&worse)), "{worse}");
    // A rerun of the job that made the champion says so (not "no champion yet").
    let (again, _) = train("lightgbm", "7", &["--idempotency-key", "k1"]);
    assert!(
        again.contains("this version is champion already"),
        "{again}"
    );

    let show = |alias: &str| {
        ok(&mlops(
            home.path(),
            &["registry", "show", "california_housing", alias],
        ))
    };
    assert!(
        show("champion").contains("\"version\": 3"),
        "{}",
        show("champion")
    );
    let audit = ok(&mlops(
        home.path(),
        &["registry", "audit", "california_housing"],
    ));
    let line = audit
        .lines()
        .find(|l| l.contains("v4") && l.contains("challenger"))
        .unwrap_or_else(|| panic!("{audit}"));
    assert!(
        line.contains("not promoted") && line.contains("vs champion"),
        "{audit}"
    );
    // The worse model's score and the champion's are both recorded.
    let rmse: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .collect();
    assert!(rmse.len() >= 2 && rmse[0] > rmse[1], "{audit}");
}

/// Rows in "gate: … on N rows neither model trained on".
fn gate_rows(out: &str) -> usize {
    let at = out
        .find(" rows neither model trained on")
        .unwrap_or_else(|| panic!("no gate row count in {out}"));
    out[..at].rsplit(' ').next().unwrap().parse().unwrap()
}

/// The gate refuses when it cannot know which rows the champion trained on: here the champion's
/// data file is gone and differs from the challenger's.
#[test]
fn gate_refuses_without_rows_outside_both_training_sets() {
    let home = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(shared("california_housing.csv")).unwrap();
    let trimmed = home.path().join("trimmed.csv");
    let lines: Vec<&str> = original.lines().collect();
    std::fs::write(&trimmed, lines[..lines.len() - 100].join("\n") + "\n").unwrap();
    let train = |data: &Path| {
        mlops(
            home.path(),
            &[
                "train",
                "california_housing",
                "--data",
                data.to_str().unwrap(),
                "--candidates",
                "linear",
                "--gate-margin",
                "0",
                "--intended-use",
                "demo",
                "--limitations",
                "tests",
            ],
        )
    };
    ok(&train(&trimmed));
    std::fs::remove_file(&trimmed).unwrap();
    let err = fails(&train(&shared("california_housing.csv")));
    assert!(err.contains("gate refused"), "{err}");
    assert!(
        err.contains("neither this run's data nor readable here"),
        "{err}"
    );
    assert!(err.contains("--gate-data"), "{err}");
}

/// The training job from a spec: registers and gates; rerunning the same job id registers no
/// second version; a bad spec names its file and field.
#[test]
fn job_spec_runs_idempotently_and_bad_specs_are_named() {
    let home = tempfile::tempdir().unwrap();
    let data = shared("california_housing.csv");
    let spec = home.path().join("job.toml");
    std::fs::write(
        &spec,
        format!(
            "dataset = \"california_housing\"\ndata = \"{}\"\ncandidates = [\"linear\"]\njob_id = \"job-123\"\n[promotion]\ngate_margin = 0.0\n",
            data.display()
        ),
    )
    .unwrap();
    let run = || {
        ok(&mlops(
            home.path(),
            &["job", "--spec", spec.to_str().unwrap()],
        ))
    };
    let first = run();
    assert!(
        first.contains("registered california_housing version 1"),
        "{first}"
    );
    assert!(first.contains("no champion yet"), "{first}");
    let again = run();
    assert!(
        again.contains("registered california_housing version 1"),
        "{again}"
    );
    let list = ok(&mlops(
        home.path(),
        &["registry", "list", "california_housing"],
    ));
    assert_eq!(
        list.lines().filter(|l| l.contains("linear")).count(),
        1,
        "{list}"
    );

    let bad = home.path().join("bad.toml");
    std::fs::write(
        &bad,
        "dataset = \"california_housing\"\ncandidtes = [\"linear\"]\n",
    )
    .unwrap();
    let err = fails(&mlops(
        home.path(),
        &["job", "--spec", bad.to_str().unwrap()],
    ));
    assert!(
        err.contains("bad.toml") && err.contains("candidtes"),
        "{err}"
    );
}

/// `mlops serve` running in the background; killed when dropped.
struct Server {
    child: std::process::Child,
    url: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(home: &Path, args: &[&str]) -> Server {
        Self::start_with(home, args, &[])
    }

    fn start_with(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlops"))
            .envs(env.iter().copied())
            .arg("--home")
            .arg(home)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("MLOPS_STORE")
            .env_remove("MLOPS_API_KEYS_SECRET")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start mlops serve");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(rest) = line.split(" on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(format!("http://{addr}"));
                }
            }
        });
        let url = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("serve did not start:\n{}", log.lock().unwrap()));
        Server { child, url, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// GET `path` with an optional key: (status, body).
    fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let url = format!("{}{path}", self.url);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut request = reqwest::Client::new().get(url);
            if let Some(k) = key {
                request = request.header("x-api-key", k);
            }
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serve started before any key exists refuses every request; a key created while it runs is
/// enforced within the refresh interval, without a restart: no key → 401, wrong key → 403,
/// the new key → 200. Health probes answer without a key.
#[test]
fn serve_requires_keys_created_after_it_started() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &["--keys-refresh-seconds", "0.5"]);
    assert!(server.log().contains("none exists yet"), "{}", server.log());
    assert_eq!(server.get("/v1/models", None).0, 401);
    assert_eq!(server.get("/health/live", None).0, 200);

    let key = ok(&mlops(
        home.path(),
        &["keys", "create", "--name", "test", "--scope", "predict"],
    ));
    let key = key.trim();
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    assert_eq!(server.get("/v1/models", None).0, 401);
    let wrong = format!("{}0", &key[..key.len() - 1]);
    let wrong = if wrong == key {
        format!("{}1", &key[..key.len() - 1])
    } else {
        wrong
    };
    assert_eq!(server.get("/v1/models", Some(&wrong)).0, 403);
    let (status, body) = server.get("/v1/models", Some(key));
    assert_eq!(status, 200, "{body}");

    // Revoking takes effect the same way.
    let id = &key["mlk_".len().."mlk_".len() + 12];
    ok(&mlops(home.path(), &["keys", "revoke", id]));
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    assert_eq!(server.get("/v1/models", Some(key)).0, 403);
    // Refused requests are logged like any other (and counted in the metrics).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log();
    let statuses: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request" && v["route"] == "/v1/models")
        .filter_map(|v| v["status"].as_u64())
        .collect();
    assert!(
        statuses.contains(&401) && statuses.contains(&403),
        "{statuses:?}\n{log}"
    );
    assert!(!log.contains(key), "the key must never be logged");
}

/// `--no-auth` is the only way to turn keys off, and it says so at start and on readiness.
#[test]
fn serve_without_auth_says_so_loudly() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start(home.path(), &["--no-auth"]);
    assert!(
        server.log().contains("WARNING: API keys are OFF"),
        "{}",
        server.log()
    );
    assert_eq!(server.get("/v1/models", None).0, 200);
    let (_, ready) = server.get("/health/ready", None);
    assert!(ready.contains("\"auth\":\"off\""), "{ready}");
    // Request logs: one JSON object per request, no terminal colours in a pipe.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.log();
    let request = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "request" && v["route"] == "/v1/models")
        .unwrap_or_else(|| panic!("no JSON request line in:\n{log}"));
    assert_eq!(request["status"], 200, "{request}");
    assert!(request["request_id"].is_string(), "{request}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a pipe:\n{log}");
}

/// The data directory is found when the command runs: a binary run outside any checkout does not
/// read the checkout it was built in; `MLOPS_DATA` points it at a directory; inside a checkout,
/// `../shared/data` beside the checkout is found from any subdirectory.
#[test]
fn the_data_directory_is_resolved_at_run_time() {
    let home = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let run = |cwd: &Path, data: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mlops"));
        command
            .current_dir(cwd)
            .arg("--home")
            .arg(home.path())
            .args(["data", "validate", "california_housing"])
            .env_remove("MLOPS_DATA");
        if let Some(d) = data {
            command.env("MLOPS_DATA", d);
        }
        command.output().unwrap()
    };
    let err = fails(&run(outside.path(), None));
    assert!(
        err.contains("data set 'california_housing' not found"),
        "{err}"
    );
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert!(
        !err.contains(&built_in.display().to_string()),
        "a compiled-in path: {err}"
    );
    let data_dir = shared("california_housing.csv")
        .parent()
        .unwrap()
        .to_path_buf();
    let out = run(outside.path(), Some(&data_dir));
    assert!(out.status.success(), "{}", stderr(&out));
    // From a subdirectory of this checkout, ../shared/data beside it.
    let deep = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/commands");
    let out = run(&deep, None);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Slow clients cannot hold `mlops serve`: 500 connections trickling a byte at a time — 400
/// in their headers, 100 in their bodies — are closed at the header timeout or answered 408 at
/// the body timeout, silent and kept-alive idle connections are closed too, and normal requests
/// sent meanwhile keep their p99. (With tokio's default listen backlog of 128 the burst overflowed
/// the accept queue: some connections were closed a second late, a silent one never.)
#[test]
fn slow_clients_are_cut_off_and_others_are_served() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    const TIMEOUT: Duration = Duration::from_secs(2);
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        home.path(),
        &["--no-auth", "--header-timeout-seconds", "2"],
        &[("MLOPS_BODY_TIMEOUT_SECONDS", "2")],
    );
    let addr = server.url.trim_start_matches("http://").to_string();
    // `n` requests one after another, each on a new connection: their latencies, sorted.
    let latencies = |n: usize| {
        let mut took: Vec<Duration> = (0..n)
            .map(|_| {
                let started = Instant::now();
                let mut s = TcpStream::connect(&addr).unwrap();
                s.write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut answer = Vec::new();
                s.read_to_end(&mut answer).unwrap();
                assert!(answer.starts_with(b"HTTP/1.1 200"));
                started.elapsed()
            })
            .collect();
        took.sort();
        took
    };
    let p99 = |sorted: &[Duration]| sorted[sorted.len() * 99 / 100];
    let baseline = latencies(200);
    let trickle = |prefix: &'static [u8]| {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            s.write_all(prefix).unwrap();
            let mut answer = Vec::new();
            // One byte every 150 ms, until the server answers or closes. A server closing with
            // bytes of ours unread resets the connection, which may drop its answer here.
            let mut reset = false;
            while started.elapsed() < Duration::from_secs(15) {
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => {
                        reset = e.kind() == std::io::ErrorKind::ConnectionReset;
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
                if s.write_all(b"x").is_err() {
                    reset = true;
                    break;
                }
            }
            let answer = String::from_utf8_lossy(&answer).into_owned();
            (
                started.elapsed(),
                if reset && answer.is_empty() {
                    "reset".into()
                } else {
                    answer
                },
            )
        })
    };
    let headers: Vec<_> = (0..400)
        .map(|_| trickle(b"GET /health/live HTTP/1.1\r\nHost: a\r\nX-Slow: "))
        .collect();
    let bodies: Vec<_> = (0..100)
        .map(|_| {
            trickle(
                b"POST /v1/models/m/predict HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[",
            )
        })
        .collect();
    let idle: Vec<_> = (0..20)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                let _ = s.read(&mut [0u8; 16]);
                started.elapsed()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let attack_started = Instant::now();
    let during = latencies(200);
    let measured_in = attack_started.elapsed();
    assert!(
        measured_in < TIMEOUT - Duration::from_millis(300),
        "the normal requests ({measured_in:?}) outlasted the attack: no measurement"
    );
    assert!(
        p99(&during) <= p99(&baseline) * 2 + Duration::from_millis(20),
        "normal requests: p99 {:?} under attack, {:?} before",
        p99(&during),
        p99(&baseline)
    );
    let mut closed: Vec<Duration> = headers.into_iter().map(|h| h.join().unwrap().0).collect();
    closed.sort();
    let worst = closed[closed.len() - 1];
    assert!(
        worst < TIMEOUT + Duration::from_secs(1),
        "a trickling connection lived {worst:?}"
    );
    let (mut answered, mut resets) = (Vec::new(), 0);
    for b in bodies {
        let (took, answer) = b.join().unwrap();
        assert!(took < TIMEOUT + Duration::from_secs(1), "{took:?} {answer}");
        if answer == "reset" {
            resets += 1;
        } else {
            assert!(
                answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"),
                "{answer}"
            );
        }
        answered.push(took);
    }
    answered.sort();
    assert!(resets < 50, "{resets} of 100 trickled bodies saw no 408");
    for i in idle {
        let lived = i.join().unwrap();
        assert!(
            lived < TIMEOUT + Duration::from_secs(1),
            "an idle connection lived {lived:?}"
        );
    }
    // A keep-alive connection left idle after a request is closed at the header timeout.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = kept.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let lived = started.elapsed();
    assert!(
        lived < TIMEOUT + Duration::from_secs(1),
        "a kept-alive idle connection lived {lived:?}"
    );
    eprintln!(
        "400 header tricklers closed after {:?} (median) – {worst:?} (max); 100 body tricklers ended after {:?} – {:?} ({} with 408, {resets} reset first); normal requests p50/p99 {:?}/{:?} before, {:?}/{:?} during",
        closed[200],
        answered[50],
        answered[99],
        100 - resets,
        baseline[100],
        p99(&baseline),
        during[100],
        p99(&during)
    );
}

/// California Housing rows as JSON records (no target), every `step`-th row.
fn housing_records(step: usize) -> Vec<serde_json::Value> {
    let mut reader = csv::Reader::from_path(shared("california_housing.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .step_by(step)
        .map(|r| {
            let r = r.unwrap();
            let mut record = serde_json::Map::new();
            for (name, value) in headers.iter().zip(r.iter()) {
                let v = match (name, value.parse::<f64>()) {
                    ("median_house_value", _) => continue,
                    (_, Ok(x)) => serde_json::json!(x),
                    (_, Err(_)) if value.is_empty() => serde_json::Value::Null,
                    _ => serde_json::json!(value),
                };
                record.insert(name.to_owned(), v);
            }
            serde_json::Value::Object(record)
        })
        .collect()
}

/// `mlops monitor` over what `mlops serve` logged: a window of inputs like the training data
/// shows no drift; a later window with higher incomes and older houses flags those two features
/// and no other, and the predictions they raise; its alerts reach a webhook, signed, once.
#[test]
fn monitor_flags_the_features_shifted_in_served_traffic() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let data = shared("california_housing.csv");
    ok(&mlops(
        h,
        &[
            "train",
            "california_housing",
            "--data",
            data.to_str().unwrap(),
            "--candidates",
            "linear",
        ],
    ));
    ok(&mlops(
        h,
        &[
            "registry",
            "card",
            "california_housing",
            "1",
            "--intended-use",
            "tests",
            "--limitations",
            "test data only",
            "--approve",
            "--by",
            "tests",
        ],
    ));
    ok(&mlops(
        h,
        &["registry", "promote", "california_housing", "1"],
    ));
    let server = Server::start_with(
        h,
        &["--no-auth"],
        &[("MLOPS_PREDICTION_LOG_FLUSH_SECONDS", "0.2")],
    );
    let post = |records: &[serde_json::Value]| {
        let url = format!("{}/v1/models/california_housing/predict", server.url);
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            for chunk in records.chunks(500) {
                let r = reqwest::Client::new()
                    .post(&url)
                    .json(&chunk)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            }
        })
    };
    let records = housing_records(9);
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    post(&records);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let middle = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let shifted: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["median_income"] =
                serde_json::json!(r["median_income"].as_f64().unwrap() * 1.6 + 1.0);
            r["housing_median_age"] =
                serde_json::json!(r["housing_median_age"].as_f64().unwrap() + 20.0);
            r
        })
        .collect();
    post(&shifted);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let end = chrono::Utc::now();
    let (since, until) = (middle.to_rfc3339(), end.to_rfc3339());
    let shifted_window = |extra: &[&str]| {
        let args = [
            &["monitor", "--model", "california_housing"][..],
            &["--since", &since, "--until", &until],
            extra,
        ]
        .concat();
        mlops(h, &args)
    };
    let window = |from: chrono::DateTime<chrono::Utc>, until: chrono::DateTime<chrono::Utc>| {
        let out = ok(&mlops(
            h,
            &[
                "monitor",
                "--model",
                "california_housing",
                "--since",
                &from.to_rfc3339(),
                "--until",
                &until.to_rfc3339(),
                "--json",
            ],
        ));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let drifted = |report: &serde_json::Value| -> Vec<String> {
        report["versions"][0]["drift"]["features"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["drifted"] == true)
            .map(|f| f["feature"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = window(start, middle);
    assert_eq!(before["records"], records.len(), "{before}");
    assert_eq!(before["versions"][0]["version"], 1);
    assert!(drifted(&before).is_empty(), "{before}");
    let after = window(middle, end);
    assert_eq!(after["records"], records.len(), "{after}");
    assert_eq!(
        drifted(&after),
        ["housing_median_age", "median_income"],
        "{after}"
    );
    assert_eq!(
        after["versions"][0]["drift"]["drifted"], false,
        "2 of 9 features"
    );
    // Higher incomes raise the predictions: their distribution drifts from training's.
    let prediction = |r: &serde_json::Value| r["versions"][0]["drift"]["prediction"].clone();
    assert_eq!(prediction(&before)["drifted"], false, "{before}");
    // Attributions of a sample of the records, against training's.
    for report in [&before, &after] {
        let a = &report["versions"][0]["attribution"];
        assert!(a["rows"].as_u64().unwrap() >= 100, "{a}");
        println!(
            "attribution nDCG {} over {} rows; top now {}",
            a["ndcg"], a["rows"], a["current_top"]
        );
    }
    assert_eq!(before["versions"][0]["attribution"]["drifted"], false);
    assert_eq!(prediction(&after)["drifted"], true, "{after}");
    // The table names the verdict; --fail-on-drift turns a drifted data set into exit status 5.
    let table = ok(&shifted_window(&[]));
    assert!(
        table.contains("2 of 9 features drifted") && table.contains("median_income"),
        "{table}"
    );
    let strict = shifted_window(&["--drift-share", "0.2", "--fail-on-drift"]);
    assert_eq!(strict.status.code(), Some(5), "{}", stderr(&strict));

    // Alerts go to a webhook, signed; it fails twice, so the first alert lands on the third try.
    let receiver = Receiver::start(2);
    let secret = "a-webhook-secret-of-some-length";
    let alerting = || {
        Command::new(env!("CARGO_BIN_EXE_mlops"))
            .arg("--home")
            .arg(h)
            .args([
                "monitor",
                "--model",
                "california_housing",
                "--since",
                &since,
            ])
            .args(["--until", &until, "--drift-share", "0.2", "--json"])
            .args(["--alert-webhook", &receiver.url])
            .env("MLOPS_ALERT_WEBHOOK_SECRET", secret)
            .env_remove("MLOPS_STORE")
            .output()
            .unwrap()
    };
    let report: serde_json::Value = serde_json::from_str(&ok(&alerting())).unwrap();
    let rules: Vec<&str> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["drift", "prediction_drift", "data_quality"],
        "{report}"
    );
    let delivered = receiver.accepted();
    assert_eq!(delivered.len(), 3, "one delivery per alert");
    assert_eq!(receiver.refused(), 2);
    for (headers, body) in &delivered {
        let signed = mlops_signature(secret, body);
        assert!(
            headers.contains(&format!("x-mlops-signature: {signed}")),
            "{headers}"
        );
        let alert: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(headers.contains(&format!(
            "x-mlops-alert-id: {}",
            alert["id"].as_str().unwrap()
        )));
    }
    let drift_alert: serde_json::Value = serde_json::from_str(&delivered[0].1).unwrap();
    let features: Vec<&str> = drift_alert["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feature"].as_str().unwrap())
        .collect();
    assert_eq!(
        features,
        ["housing_median_age", "median_income"],
        "{drift_alert}"
    );
    assert!(drift_alert["features"][0]["threshold"].is_number());
    // Run again: nothing new is sent.
    let again: serde_json::Value = serde_json::from_str(&ok(&alerting())).unwrap();
    assert!(
        again["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "already_sent"),
        "{again}"
    );
    assert_eq!(receiver.accepted().len(), 3);
    let reports: Vec<std::path::PathBuf> =
        std::fs::read_dir(h.join("store/monitoring/california_housing/reports"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    let of = |ext: &str| -> Vec<&std::path::PathBuf> {
        reports
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect()
    };
    assert_eq!(
        (of("json").len(), of("html").len()),
        (2, 2),
        "one report per window (JSON and a page), rewritten when run again"
    );
    // The page charts every feature, the drifted ones marked.
    let pages: Vec<String> = of("html")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let page = pages
        .iter()
        .find(|p| p.contains("(drifted)"))
        .expect("the shifted window's page");
    assert_eq!(
        page.matches("<svg").count(),
        10,
        "9 features and the predictions"
    );
    assert!(page.contains("median_income <b>(drifted)</b>"));
    assert!(!page.contains("<script"));
    drop(server);
}

/// California Housing rows as JSON records and their targets, every `step`-th row.
fn housing_records_with_targets(step: usize) -> Vec<(serde_json::Value, f64)> {
    let mut reader = csv::Reader::from_path(shared("california_housing.csv")).unwrap();
    let target = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "median_house_value")
        .unwrap();
    let targets: Vec<f64> = reader
        .records()
        .step_by(step)
        .map(|r| r.unwrap()[target].parse().unwrap())
        .collect();
    housing_records(step).into_iter().zip(targets).collect()
}

/// Feedback through the API and `mlops feedback import` is joined to what `mlops serve` logged:
/// `mlops monitor` reports live quality per variant with intervals, and `mlops ab report` finds
/// the LightGBM challenger better than the linear champion with a sequential test.
#[test]
fn feedback_gives_live_quality_and_an_ab_verdict() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let data = shared("california_housing.csv");
    let model = "california_housing";
    for (candidate, alias) in [("linear", "champion"), ("lightgbm", "challenger")] {
        ok(&mlops(
            h,
            &[
                "train",
                model,
                "--data",
                data.to_str().unwrap(),
                "--candidates",
                candidate,
            ],
        ));
        let v = if alias == "champion" { "1" } else { "2" };
        ok(&mlops(
            h,
            &[
                "registry",
                "card",
                model,
                v,
                "--intended-use",
                "tests",
                "--limitations",
                "test data only",
                "--approve",
                "--by",
                "tests",
            ],
        ));
        ok(&mlops(
            h,
            &["registry", "promote", model, v, "--alias", alias],
        ));
    }
    ok(&mlops(
        h,
        &["registry", "traffic", model, "champion=50,challenger=50"],
    ));
    let server = Server::start_with(
        h,
        &["--no-auth", "--refresh-seconds", "0.5"],
        &[("MLOPS_PREDICTION_LOG_FLUSH_SECONDS", "0.2")],
    );
    let start = chrono::Utc::now() - chrono::Duration::seconds(1);
    let rows = housing_records_with_targets(5);
    let client = reqwest::Client::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Requests of 10 records, each routed by its request id; the label of each record.
    let labels: Vec<serde_json::Value> = runtime.block_on(async {
        let mut labels = Vec::new();
        for chunk in rows.chunks(10) {
            let records: Vec<&serde_json::Value> = chunk.iter().map(|(r, _)| r).collect();
            let r = client
                .post(format!("{}/v1/models/{model}/predict", server.url))
                .json(&records)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.unwrap();
            for (p, (_, actual)) in body["predictions"].as_array().unwrap().iter().zip(chunk) {
                labels.push(serde_json::json!({
                    "request_id": body["request_id"], "record": p["row"], "actual": actual
                }));
            }
        }
        labels
    });
    // Half the labels through the API (twice: counted once), half from a file.
    let (sent, filed) = labels.split_at(labels.len() / 2);
    runtime.block_on(async {
        for chunk in sent.chunks(1000).chain(sent.chunks(1000)) {
            let r = client
                .post(format!("{}/v1/models/{model}/feedback", server.url))
                .json(&chunk)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        }
    });
    let file = h.join("labels.csv");
    let mut csv = String::from("request_id,record,actual\n");
    for l in filed {
        csv.push_str(&format!(
            "{},{},{}\n",
            l["request_id"].as_str().unwrap(),
            l["record"],
            l["actual"]
        ));
    }
    std::fs::write(&file, &csv).unwrap();
    let bad = h.join("bad.csv");
    std::fs::write(&bad, "request_id,actual\nr1,high\n,2\n").unwrap();
    let err = fails(&mlops(
        h,
        &[
            "feedback",
            "import",
            "--model",
            model,
            bad.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("2 invalid rows")
            && err.contains("row 1: 'actual'")
            && err.contains("row 2: 'request_id'"),
        "{err}"
    );
    let out = ok(&mlops(
        h,
        &[
            "feedback",
            "import",
            "--model",
            model,
            file.to_str().unwrap(),
        ],
    ));
    assert!(out.contains(&format!("{} labels", filed.len())), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let since = start.to_rfc3339();
    let report: serde_json::Value = serde_json::from_str(&ok(&mlops(
        h,
        &["monitor", "--model", model, "--since", &since, "--json"],
    )))
    .unwrap();
    assert_eq!(report["labelled"], rows.len(), "{report}");
    let live_rmse = |version: usize, variant: &str| {
        report["versions"][version]["quality"][variant]["metrics"]["rmse"].clone()
    };
    let (linear, lightgbm) = (live_rmse(0, "champion"), live_rmse(1, "challenger"));
    for (live, v) in [(&linear, 0), (&lightgbm, 1)] {
        let test = report["versions"][v]["test_metrics"]["rmse"]
            .as_f64()
            .unwrap();
        let (low, high) = (
            live["low"].as_f64().unwrap(),
            live["high"].as_f64().unwrap(),
        );
        // Served rows include training rows, so live error is at most a little above test's.
        assert!(low < high && low < test * 1.1, "{live} vs test {test}");
    }
    assert!(
        lightgbm["value"].as_f64() < linear["value"].as_f64(),
        "{report}"
    );
    assert_eq!(report["ab"][0]["challenger"], "challenger");
    assert_eq!(
        report["ab"][0]["verdict"]["decision"], "promote",
        "{report}"
    );
    let table = ok(&mlops(
        h,
        &["ab", "report", "--model", model, "--since", &since],
    ));
    println!("{table}");
    assert!(
        table.contains("A/B challenger vs champion") && table.contains("promote"),
        "{table}"
    );
    assert!(table.contains("quality of challenger"), "{table}");
    // Model information shows the verdict the monitor left beside the registry records.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (status, info) = server.get(&format!("/v1/models/{model}"), None);
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let verdict = &info["ab_test"]["verdicts"][0];
    assert_eq!(verdict["challenger"], "challenger", "{info}");
    assert_eq!(verdict["verdict"]["decision"], "promote", "{info}");
    drop(server);
}

#[test]
fn sharded_batch_predict_runs_shard_by_shard_and_checks_the_whole_jobs_limits() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let data = shared("california_housing.csv");
    let d = data.to_str().unwrap();
    ok(&mlops(
        h,
        &[
            "train",
            "california_housing",
            "--data",
            d,
            "--candidates",
            "linear",
        ],
    ));
    // 20 rows in parts of 5; rows 13 to 15 (in the second shard's parts) have a bad longitude.
    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines: Vec<String> = text.lines().take(21).map(str::to_owned).collect();
    for line in &mut lines[13..=15] {
        let rest = line[line.find(',').unwrap()..].to_owned();
        *line = format!("oops{rest}");
    }
    let input = h.join("in.csv");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "batch-predict",
            "--model",
            "california_housing",
            "--version",
            "1",
            "--input",
            input.to_str().unwrap(),
            "--part-rows",
            "5",
            "--output",
        ];
        let out = h.join(out);
        let out = out.to_str().unwrap().to_owned();
        args.push(&out);
        args.extend(extra);
        mlops(h, &args)
    };
    let err = fails(&run("out", &["--shards", "2"]));
    assert!(err.contains("give --queue and --job-definition"), "{err}");
    let err = fails(&run(
        "out",
        &["--shards", "2", "--queue", "q", "--job-definition", "d"],
    ));
    assert!(err.contains("--input /"), "{err}");
    assert!(err.contains("is not on S3"), "{err}");
    // Refused before anything is read: the registry here is this machine's directory.
    let err = fails(&mlops(
        h,
        &[
            "batch-predict",
            "--model",
            "california_housing",
            "--version",
            "1",
            "--input",
            "s3://b/in.csv",
            "--output",
            "s3://b/out/",
            "--shards",
            "2",
            "--queue",
            "q",
            "--job-definition",
            "d",
        ],
    ));
    assert!(
        err.contains("the registry store (--store)") && err.contains("is not on S3"),
        "{err}"
    );
    let err = fails(&run("out", &["--shards", "2", "--array-child"]));
    assert!(
        err.contains("AWS_BATCH_JOB_ARRAY_INDEX is not set"),
        "{err}"
    );

    // Shard 0 has no bad row and leaves the job to the other; shard 1 finishes the job, and the
    // limit applies to the whole job's 3 of 20 rows (15%), not to shard 1's 3 of 10 (30%).
    let limit = ["--max-rejected", "16%"];
    let first = run(
        "out",
        &[&["--shards", "2", "--shard-index", "0"][..], &limit].concat(),
    );
    assert!(
        stderr(&first).contains("other shards are still running"),
        "{}",
        stderr(&first)
    );
    ok(&first);
    let last = run(
        "out",
        &[&["--shards", "2", "--shard-index", "1"][..], &limit].concat(),
    );
    assert_eq!(last.status.code(), Some(3), "{}", stderr(&last));
    assert!(
        stderr(&last).contains("finished with 3 rejected rows of 20"),
        "{}",
        stderr(&last)
    );
    // Run again (the job is complete) under a stricter limit: the whole job is over it.
    let strict = run(
        "out",
        &[
            "--shards",
            "2",
            "--shard-index",
            "1",
            "--max-rejected",
            "10%",
        ],
    );
    assert_eq!(strict.status.code(), Some(4), "{}", stderr(&strict));
    let said = stderr(&strict);
    assert!(said.contains("already complete"), "{said}");
    assert!(said.contains("3 of 20 rows rejected"), "{said}");

    let one = run("one", &[]);
    assert_eq!(one.status.code(), Some(3), "{}", stderr(&one));
    for name in [
        "part-00000.csv",
        "part-00002.csv",
        "part-00003.csv",
        "errors-00002.csv",
    ] {
        let read = |dir: &str| std::fs::read(h.join(dir).join(name)).unwrap();
        assert_eq!(read("out"), read("one"), "{name}");
    }
}
