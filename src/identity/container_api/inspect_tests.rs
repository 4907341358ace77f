use super::*;

/// An inspect answer shaped as Docker writes it (podman's compatible API writes the same).
fn inspected(running: bool, env: &str, networks: &str) -> String {
    format!(
        r#"{{"Id": "4f1c0ffee", "Name": "/trial-7", "State": {{"Running": {running}, "Pid": 42}},
            "Config": {{"Image": "determinedai/environments:cuda", "Env": {env}, "Labels": {{}}}},
            "NetworkSettings": {{"IPAddress": "172.17.0.5", "GlobalIPv6Address": "",
                "Networks": {networks}}}}}"#
    )
}

const ENV: &str = r#"["PATH=/usr/bin", "DET_SESSION_TOKEN=s3cret", "DET_TASK_ID=task-1",
    "DET_ALLOCATION_ID=task-1.alloc-0", "DET_TASK_TYPE=TRIAL", "DET_USER_TOKEN=t0k3n",
    "DET_TASK_ID_NOT=x"]"#;

const NETWORKS: &str = r#"{"bridge": {"IPAddress": "172.17.0.5", "GlobalIPv6Address": "fd00::5"},
    "det": {"IPAddress": "10.89.0.2", "GlobalIPv6Address": ""}}"#;

#[test]
fn a_running_container_gives_its_name_image_task_and_every_address() {
    let body = inspected(true, ENV, NETWORKS);
    let (info, ips) = container(body.as_bytes()).unwrap().unwrap();
    assert_eq!(info.id, "4f1c0ffee");
    assert_eq!(info.name, "trial-7");
    assert_eq!(info.image, "determinedai/environments:cuda");
    assert_eq!(info.task_id.as_deref(), Some("task-1"));
    assert_eq!(info.allocation_id.as_deref(), Some("task-1.alloc-0"));
    assert_eq!(info.task_type.as_deref(), Some("TRIAL"));
    let want: Vec<IpAddr> = ["10.89.0.2", "172.17.0.5", "fd00::5"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(ips, want);
}

#[test]
fn only_the_task_identifiers_are_kept_of_the_environment() {
    let body = inspected(true, ENV, NETWORKS);
    let (info, _) = container(body.as_bytes()).unwrap().unwrap();
    let shown = format!("{info:?}");
    assert!(!shown.contains("s3cret") && !shown.contains("t0k3n"), "{shown}");
    assert!(!shown.contains("PATH"), "{shown}");
}

#[test]
fn a_stopped_container_has_no_addresses() {
    let body = inspected(false, ENV, NETWORKS);
    assert!(container(body.as_bytes()).unwrap().is_none());
}

#[test]
fn nulls_and_absences_are_tolerated() {
    let body = inspected(true, "null", "null");
    let (info, ips) = container(body.as_bytes()).unwrap().unwrap();
    assert_eq!(info.task_id, None);
    assert_eq!(ips, ["172.17.0.5".parse::<IpAddr>().unwrap()]);
    let bare = r#"{"Id": "abc", "State": {"Running": true}}"#;
    let (info, ips) = container(bare.as_bytes()).unwrap().unwrap();
    assert_eq!((info.name.as_str(), info.image.as_str()), ("", ""));
    assert!(ips.is_empty());
}

#[test]
fn a_malformed_environment_never_quotes_it() {
    // One string where a list belongs: serde's own message would quote it.
    let body = inspected(true, r#""PATH=/bin DET_SESSION_TOKEN=s3cret""#, NETWORKS);
    let e = container(body.as_bytes()).err().unwrap().to_string();
    assert!(!e.contains("s3cret"), "{e}");
    assert!(e.contains("malformed"), "{e}");
}

#[test]
fn an_escaped_or_oversized_identifier_is_handled() {
    let long = "x".repeat(MAX_TASK_VALUE + 1);
    let env = format!(r#"["DET_TASK_ID=a\u002fb", "DET_ALLOCATION_ID={long}"]"#);
    let body = inspected(true, &env, NETWORKS);
    let (info, _) = container(body.as_bytes()).unwrap().unwrap();
    assert_eq!(info.task_id.as_deref(), Some("a/b"));
    assert_eq!(info.allocation_id, None);
}

#[test]
fn the_list_gives_ids() {
    let body = br#"[{"Id": "a1", "Names": ["/x"], "Config": null}, {"Id": "b2"}]"#;
    assert_eq!(running_ids(body).unwrap(), ["a1", "b2"]);
    assert!(running_ids(b"{}").is_err());
}

#[test]
fn events_as_docker_and_podman_write_them() {
    let docker_connect = br#"{"Type": "network", "Action": "connect",
        "Actor": {"ID": "netid", "Attributes": {"container": "c1", "name": "bridge"}}}"#;
    assert_eq!(event(docker_connect).unwrap(), Change::Reinspect("c1".into()));
    let podman_connect = br#"{"Type": "network", "Action": "disconnect",
        "Actor": {"ID": "c2", "Attributes": {"name": "c2"}}}"#;
    assert_eq!(event(podman_connect).unwrap(), Change::Reinspect("c2".into()));
    let start = br#"{"status": "start", "id": "c3", "Type": "container", "Action": "start",
        "Actor": {"ID": "c3", "Attributes": {"image": "x", "name": "y"}}, "time": 1}"#;
    assert_eq!(event(start).unwrap(), Change::Reinspect("c3".into()));
    for action in ["die", "destroy", "remove"] {
        let line = format!(r#"{{"Type": "container", "Action": "{action}", "Actor": {{"ID": "c4"}}}}"#);
        assert_eq!(event(line.as_bytes()).unwrap(), Change::Gone("c4".into()));
    }
    let net_destroy = br#"{"Type": "network", "Action": "destroy", "Actor": {"ID": "n"}}"#;
    assert_eq!(event(net_destroy).unwrap(), Change::Other);
    let exec = br#"{"Type": "container", "Action": "exec_start: sh", "Actor": {"ID": "c5"}}"#;
    assert_eq!(event(exec).unwrap(), Change::Other);
    assert!(event(b"not json").is_err());
}
