//! A short ladder against the running test tier (started by `make test`), end to end:
//! seeding, load through HAProxy, database sampling, verdict, and the report folder.

use std::process::Command;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, which starts the tier")
    })
}

#[test]
fn a_short_ladder_passes_and_writes_a_readable_report() {
    let out_dir = std::env::temp_dir().join(format!("loadtest-it-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "ladder",
            "--steps",
            "4,8",
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--capacity",
            "8",
            "--accounts",
            "4",
            "--mix",
            "create=1,get=2,list=1",
            "--quiet",
            "--name",
            "short",
            "--out-dir",
        ])
        .arg(&out_dir)
        .env("TIERSTACK_HAPROXY_URL", env("TIERSTACK_HAPROXY_URL"))
        .env("DB_PRIMARY_URL", env("DB_PRIMARY_URL"))
        .env("PGBOUNCER_ADMIN_URL", env("PGBOUNCER_ADMIN_URL"))
        .output()
        .expect("loadtest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("verdict: PASS"), "{stdout}");

    let folder = out_dir.join("short");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["model"], "closed");
    let steps = report["runs"][0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for step in steps {
        assert!(step["requests"].as_u64().unwrap() > 0, "{step}");
        assert_eq!(step["failure"]["count"], 0, "{step}");
        assert!(step["db"]["samples"].as_u64().unwrap() > 0, "{step}");
        assert!(
            step["db"]["primary_connections_max"].as_i64().unwrap() > 0,
            "{step}"
        );
    }

    let markdown = std::fs::read_to_string(folder.join("report.md")).unwrap();
    assert!(markdown.contains("**Verdict: PASS**"), "{markdown}");
    let chart = std::fs::read_to_string(folder.join("chart.svg")).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("polyline"),
        "{chart}"
    );

    let _ = std::fs::remove_dir_all(&out_dir);
}
