//! Checks `deploy/compose.yaml` against the binaries, since Docker does not run where the tests
//! do: every subcommand, `--flag` and environment variable a service passes must appear in its
//! binary's `--help`, its health check must probe the port it listens on, and the Kafka cluster
//! and topic must keep what the platform relies on (3 brokers, `min.insync.replicas=2`, a topic
//! of 6 partitions that never deletes an event). A flag or variable renamed in a binary, and
//! not in the compose file, fails here.
//!
//! (A little over 400 lines: one file keeps the compose file's reading and each rule it must
//! keep side by side.)

use serde_norway::{Mapping, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The services that run our image, and nothing else does.
const PLATFORM_SERVICES: [&str; 5] = ["migrate", "relay", "projector", "command-api", "query-api"];
const PLATFORM_PACKAGES: [&str; 4] = ["migrations", "command-api", "projector", "query-api"];
/// Read by the tracing subscriber, not by clap, so no `--help` lists it.
const NOT_IN_HELP: [&str; 1] = ["RUST_LOG"];
const TOPIC: &str = "delivery.events";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

fn compose() -> Mapping {
    let path = workspace_root().join("deploy/compose.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    let mut value: Value = serde_norway::from_str(&text).expect("deploy/compose.yaml is YAML");
    // The file shares settings through anchors and `<<` merge keys.
    value.apply_merge().expect("merge keys resolve");
    match value {
        Value::Mapping(root) => root,
        other => panic!("the compose file is not a mapping: {other:?}"),
    }
}

fn services(compose: &Mapping) -> &Mapping {
    compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("compose has services")
}

fn service<'a>(compose: &'a Mapping, name: &str) -> &'a Mapping {
    services(compose)
        .get(name)
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| panic!("compose has no service {name}"))
}

/// A scalar as text: compose accepts numbers and booleans where it means strings.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn strings(value: Option<&Value>, what: &str) -> Vec<String> {
    value
        .and_then(Value::as_sequence)
        .unwrap_or_else(|| panic!("{what} is not a list"))
        .iter()
        .map(text)
        .collect()
}

fn environment(service: &Mapping) -> Vec<(String, String)> {
    service
        .get("environment")
        .and_then(Value::as_mapping)
        .map(|env| env.iter().map(|(k, v)| (text(k), text(v))).collect())
        .unwrap_or_default()
}

fn env_var(service: &Mapping, name: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

fn healthcheck(service: &Mapping, name: &str) -> String {
    strings(
        service.get("healthcheck").and_then(|h| h.get("test")),
        &format!("{name}'s healthcheck test"),
    )
    .join(" ")
}

fn depends_on(service: &Mapping, on: &str) -> Option<String> {
    service
        .get("depends_on")?
        .get(on)?
        .get("condition")
        .map(text)
}

/// The platform's binaries, built fresh beside this test's executable (`target/<profile>`).
///
/// A dependency on a package does not build its binaries for an integration test, and
/// `CARGO_BIN_EXE_*` only names the test's own package's binaries. So the test asks cargo to
/// build them, into the target dir and profile it runs from: a no-op when they are current, and
/// never a stale `--help` checked by mistake. (Cargo holds no build lock while tests run.)
fn fresh_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's executable");
    // target/<profile>/deps/deploy-<hash> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps")
        .to_path_buf();
    let target_dir = dir.parent().expect("target/<profile> has a parent");
    let profile = match dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(profile) => profile,
        None => panic!("no profile directory in {}", dir.display()),
    };
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--bins", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir);
    for package in PLATFORM_PACKAGES {
        build.args(["-p", package]);
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "building the platform's binaries failed");
    for bin in ["migrate", "command-api", "projector", "query-api"] {
        assert!(
            dir.join(bin).is_file(),
            "no binary {bin} in {} after cargo build",
            dir.display()
        );
    }
    dir
}

fn help(bin: &Path, subcommands: &[String]) -> String {
    let output = Command::new(bin)
        .args(subcommands)
        .arg("--help")
        .output()
        .unwrap_or_else(|err| panic!("running {} --help: {err}", bin.display()));
    assert!(
        output.status.success(),
        "{} {} --help failed: {}",
        bin.display(),
        subcommands.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// The line of `help` that documents `--flag`, if any.
fn flag_line<'a>(help: &'a str, flag: &str) -> Option<&'a str> {
    help.lines()
        .find(|line| line.trim_start().split([' ', ',']).any(|word| word == flag))
}

/// Whether `help`'s "Commands:" section lists `name`.
fn lists_subcommand(help: &str, name: &str) -> bool {
    help.split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .is_some_and(|section| {
            section
                .lines()
                .any(|line| line.split_whitespace().next() == Some(name))
        })
}

/// Clap prints `[env: NAME=]` (or `[env: NAME]` when values are hidden) after the option.
fn documents_env(help: &str, name: &str) -> bool {
    help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]"))
}

/// What a service's command passes, checked against the binary; returns the help texts of every
/// level of the command (the binary, then each subcommand), where its variables may appear.
fn check_command(service_name: &str, command: &[String], bins: &Path) -> (Vec<String>, String) {
    let (bin_name, args) = command
        .split_first()
        .unwrap_or_else(|| panic!("{service_name} has an empty command"));
    let bin = bins.join(bin_name);
    assert!(
        bin.is_file(),
        "{service_name} runs {bin_name}, which is not one of our binaries"
    );
    let mut path: Vec<String> = Vec::new();
    let mut helps = vec![help(&bin, &path)];
    let mut listen = None;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let current = helps.last().expect("at least the binary's help");
        if let Some(flag) = arg.strip_prefix("--") {
            let (flag, inline_value) = match flag.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_string())),
                None => (flag, None),
            };
            let line = flag_line(current, &format!("--{flag}")).unwrap_or_else(|| {
                panic!(
                    "{service_name}: `{bin_name} {}` has no flag --{flag}:\n{current}",
                    path.join(" ")
                )
            });
            let takes_value = line.contains(&format!("--{flag} <"));
            let value = match inline_value {
                Some(value) => Some(value),
                None if takes_value => {
                    i += 1;
                    let value = args.get(i).unwrap_or_else(|| {
                        panic!("{service_name}: --{flag} needs a value");
                    });
                    Some(value.clone())
                }
                None => None,
            };
            if flag == "listen" || flag == "http-listen" {
                listen = value;
            }
        } else {
            assert!(
                lists_subcommand(current, arg),
                "{service_name}: `{bin_name} {}` has no subcommand {arg}:\n{current}",
                path.join(" ")
            );
            path.push(arg.clone());
            helps.push(help(&bin, &path));
        }
        i += 1;
    }
    (helps, listen.unwrap_or_default())
}

fn port_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map(|(_, port)| port)
        .unwrap_or_else(|| panic!("{address} has no port"))
}

#[test]
fn every_service_passes_only_what_its_binary_understands() {
    let compose = compose();
    let platform: BTreeSet<String> = services(&compose)
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(name, _)| text(name))
        .collect();
    assert_eq!(
        platform,
        PLATFORM_SERVICES.iter().map(|s| s.to_string()).collect(),
        "the services built from our image"
    );
    let bins = fresh_binaries();
    for name in PLATFORM_SERVICES {
        let service = service(&compose, name);
        let command = strings(service.get("command"), &format!("{name}'s command"));
        let (helps, listen_flag) = check_command(name, &command, &bins);
        for (variable, _) in environment(service) {
            if NOT_IN_HELP.contains(&variable.as_str()) {
                continue;
            }
            assert!(
                helps.iter().any(|help| documents_env(help, &variable)),
                "{name} sets {variable}, which `{}` does not read (see its --help)",
                command.join(" ")
            );
        }
        // Every long-running service has an HTTP listener (the APIs, and the relay's and the
        // projector's for /metrics and /health): reachable from outside its container,
        // health-checked on its port, and published on that port if published at all.
        let listen = environment(service)
            .into_iter()
            .find_map(|(k, v)| k.ends_with("_LISTEN").then_some(v))
            .unwrap_or(listen_flag);
        if name == "migrate" {
            // A one-shot job: the services wait for it to complete, not to be healthy.
            continue;
        }
        let check = healthcheck(service, name);
        if !listen.is_empty() {
            let port = port_of(&listen);
            assert!(
                !listen.starts_with("127.0.0.1"),
                "{name} listens on loopback only, unreachable from outside its container"
            );
            if let Some(ports) = service.get("ports") {
                let published = strings(Some(ports), &format!("{name}'s ports"));
                assert!(
                    published.iter().any(|p| port_of(p) == port),
                    "{name} listens on {port} but publishes {published:?}"
                );
            }
            assert!(
                check.contains(&format!(":{port}/health")),
                "{name}'s health check does not probe GET /health on port {port}: {check}"
            );
        } else {
            // No HTTP listener: the check looks for the process by a word of its command.
            assert!(
                command
                    .iter()
                    .any(|word| check.contains(&format!("grep -qa {word} /proc/1/cmdline"))),
                "{name}'s process check does not look for its own command: {check}"
            );
        }
    }
}

#[test]
fn services_start_in_order() {
    let compose = compose();
    for name in ["relay", "projector", "command-api", "query-api"] {
        assert_eq!(
            depends_on(service(&compose, name), "migrate").as_deref(),
            Some("service_completed_successfully"),
            "{name} waits for the migrations"
        );
    }
    for name in ["relay", "projector"] {
        assert_eq!(
            depends_on(service(&compose, name), "create-topic").as_deref(),
            Some("service_completed_successfully"),
            "{name} waits for the topic"
        );
        assert_eq!(
            env_var(service(&compose, name), "KAFKA_TOPIC").as_deref(),
            Some(TOPIC),
            "{name} uses the topic the job creates"
        );
    }
    assert_eq!(
        depends_on(service(&compose, "migrate"), "postgres").as_deref(),
        Some("service_healthy")
    );
}

#[test]
fn kafka_has_three_brokers_and_two_in_sync_replicas() {
    let compose = compose();
    let brokers: Vec<&Mapping> = services(&compose)
        .iter()
        .filter(|(name, _)| text(name).starts_with("kafka-"))
        .filter_map(|(_, s)| s.as_mapping())
        .collect();
    assert_eq!(brokers.len(), 3, "three Kafka brokers");
    let mut node_ids = BTreeSet::new();
    for broker in brokers {
        let image = broker.get("image").map(text).unwrap_or_default();
        assert!(
            image.starts_with("apache/kafka:") && !image.ends_with(":latest"),
            "the official image, pinned: {image}"
        );
        let setting = |name: &str| env_var(broker, name).unwrap_or_default();
        assert!(
            setting("KAFKA_PROCESS_ROLES").contains("controller"),
            "KRaft"
        );
        assert_eq!(setting("KAFKA_MIN_INSYNC_REPLICAS"), "2");
        assert_eq!(setting("KAFKA_DEFAULT_REPLICATION_FACTOR"), "3");
        assert_eq!(setting("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"), "3");
        assert_eq!(
            setting("KAFKA_CONTROLLER_QUORUM_VOTERS").split(',').count(),
            3
        );
        node_ids.insert(setting("KAFKA_NODE_ID"));
    }
    assert_eq!(node_ids.len(), 3, "each broker has its own node id");
}

#[test]
fn the_topic_never_deletes_an_event() {
    let compose = compose();
    let command = strings(
        service(&compose, "create-topic").get("command"),
        "create-topic's command",
    );
    let value_after = |flag: &str| -> Vec<&str> {
        command
            .windows(2)
            .filter(|pair| pair[0] == flag)
            .map(|pair| pair[1].as_str())
            .collect()
    };
    assert_eq!(value_after("--topic"), [TOPIC]);
    assert_eq!(value_after("--partitions"), ["6"]);
    assert_eq!(value_after("--replication-factor"), ["3"]);
    let configs = value_after("--config");
    // The projector's rebuild replays the topic from its first event; compaction would keep
    // only the last event of each delivery.
    for setting in [
        "retention.ms=-1",
        "retention.bytes=-1",
        "cleanup.policy=delete",
        "min.insync.replicas=2",
    ] {
        assert!(
            configs.contains(&setting),
            "the topic is created with {setting}: {configs:?}"
        );
    }
}
