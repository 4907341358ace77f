//! Peer selectors: which local clients a listener serves (`allowed_peers`) and which it lends
//! the agent's client certificate (`present_client_cert`). Parsed from the configuration's
//! values with a message per field, matched against a [`PeerIdentity`]. A field whose value is
//! unknown for a peer never matches: an unidentified peer matches no selector (fail closed).

use std::fmt;

use serde_json::Value;

use super::PeerIdentity;

/// The fields a selector may have, for messages.
const FIELDS: &str = "uid, gid, unit, cgroup, container (and name)";

/// One selector: every field given must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// The `peer` label of the metrics for clients this selector matches.
    pub name: Option<String>,
    pub uid: Option<Vec<u32>>,
    pub gid: Option<Vec<u32>>,
    pub unit: Option<String>,
    pub cgroup: Option<CgroupGlob>,
    /// An id prefix or a name.
    pub container: Option<String>,
}

/// A list of selectors: it matches a peer when any entry does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selectors(pub Vec<Selector>);

impl Selectors {
    /// The first selector `peer` matches.
    pub fn matching(&self, peer: &PeerIdentity) -> Option<&Selector> {
        self.0.iter().find(|s| s.matches(peer))
    }

    /// The names the selectors give, each once (the metrics' `peer` label values).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|s| s.name.as_deref())
    }
}

impl Selector {
    pub fn matches(&self, peer: &PeerIdentity) -> bool {
        let ids = |want: &Option<Vec<u32>>, have: Option<u32>| match want {
            None => true,
            Some(list) => have.is_some_and(|h| list.contains(&h)),
        };
        ids(&self.uid, peer.uid)
            && ids(&self.gid, peer.gid)
            && self
                .unit
                .as_ref()
                .is_none_or(|u| peer.unit.as_deref() == Some(u.as_str()))
            && self
                .cgroup
                .as_ref()
                .is_none_or(|g| peer.cgroup.as_deref().is_some_and(|p| g.matches(p)))
            && self.container.as_ref().is_none_or(|c| {
                peer.container.as_ref().is_some_and(|have| {
                    have.id.starts_with(c.as_str())
                        || (!have.name.is_empty()
                            && have.name.trim_start_matches('/') == c.trim_start_matches('/'))
                })
            })
    }
}

impl fmt::Display for Selector {
    /// YAML flow style, as an operator would write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |l: &Vec<u32>| match l.as_slice() {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ),
        };
        let mut parts = Vec::new();
        if let Some(n) = &self.name {
            parts.push(format!("name: {n}"));
        }
        if let Some(u) = &self.uid {
            parts.push(format!("uid: {}", ids(u)));
        }
        if let Some(g) = &self.gid {
            parts.push(format!("gid: {}", ids(g)));
        }
        if let Some(u) = &self.unit {
            parts.push(format!("unit: {u}"));
        }
        if let Some(c) = &self.cgroup {
            parts.push(format!("cgroup: {:?}", c.pattern));
        }
        if let Some(c) = &self.container {
            parts.push(format!("container: {c}"));
        }
        write!(f, "{{{}}}", parts.join(", "))
    }
}

impl fmt::Display for Selectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(Selector::to_string).collect();
        write!(f, "[{}]", items.join(", "))
    }
}

// === cgroup globs ===

/// A glob over a cgroup v2 path: `*` within one component, `**` any number of components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupGlob {
    pub pattern: String,
    parts: Vec<String>,
}

impl CgroupGlob {
    pub fn parse(pattern: &str) -> Result<CgroupGlob, String> {
        let p = pattern.trim();
        if !p.starts_with('/') {
            return Err(format!(
                "{p:?}: a cgroup path starts with / (\"/system.slice/docker-*.scope\")"
            ));
        }
        let body = p.trim_end_matches('/');
        let parts: Vec<String> = if body.is_empty() {
            Vec::new()
        } else {
            body[1..].split('/').map(str::to_string).collect()
        };
        if parts.iter().any(String::is_empty) {
            return Err(format!("{p:?}: empty path component (//)"));
        }
        if parts.iter().any(|c| c.contains("**") && c != "**") {
            return Err(format!(
                "{p:?}: ** stands alone as a path component (\"/kubepods.slice/**\")"
            ));
        }
        Ok(CgroupGlob {
            pattern: p.to_string(),
            parts,
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let comps: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        // ok[j]: the pattern parts seen so far match comps[..j].
        let mut ok = vec![false; comps.len() + 1];
        ok[0] = true;
        for part in &self.parts {
            let mut next = vec![false; comps.len() + 1];
            if part == "**" {
                let mut any = false;
                for j in 0..=comps.len() {
                    any |= ok[j];
                    next[j] = any;
                }
            } else {
                for j in 0..comps.len() {
                    next[j + 1] = ok[j] && component_matches(part, comps[j]);
                }
            }
            ok = next;
        }
        ok[comps.len()]
    }
}

/// `*` matches any run of characters within one component.
fn component_matches(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

// === Parsing ===

/// A mistake in a selector list: where (`[1].uid`, appended to the key) and what.
pub(crate) type Mistake = (String, String);

/// Parses a list of selectors; every mistake is reported, each with its place in the list.
pub(crate) fn parse_list(value: &Value) -> Result<Selectors, Vec<Mistake>> {
    let Value::Array(items) = value else {
        return Err(vec![(
            String::new(),
            format!("write a list of peer selectors such as [{{unit: determined-agent.service}}], not {value}"),
        )]);
    };
    let mut out = Vec::new();
    let mut mistakes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse_one(item) {
            Ok(s) => out.push(s),
            Err(m) => mistakes.extend(m.into_iter().map(|(k, msg)| (format!("[{i}]{k}"), msg))),
        }
    }
    if mistakes.is_empty() {
        Ok(Selectors(out))
    } else {
        Err(mistakes)
    }
}

fn parse_one(item: &Value) -> Result<Selector, Vec<Mistake>> {
    let Value::Object(map) = item else {
        return Err(vec![(
            String::new(),
            format!("{item} is not a selector: write a mapping of {FIELDS}"),
        )]);
    };
    let mut s = Selector::default();
    let mut mistakes = Vec::new();
    for (key, v) in map {
        let place = format!(".{key}");
        let r = match key.as_str() {
            "uid" => ids(v, "user").map(|l| s.uid = Some(l)),
            "gid" => ids(v, "group").map(|l| s.gid = Some(l)),
            "unit" => text(v, "a systemd unit such as determined-agent.service")
                .and_then(unit)
                .map(|u| s.unit = Some(u)),
            "cgroup" => text(v, "a cgroup path glob")
                .and_then(|p| CgroupGlob::parse(&p))
                .map(|g| s.cgroup = Some(g)),
            // An all-digit id prefix reads as a number in YAML.
            "container" => match v.as_u64() {
                Some(n) => Ok(n.to_string()),
                None => text(v, "a container id prefix or name"),
            }
            .map(|c| s.container = Some(c)),
            "name" => text(v, "a name for the metrics' peer label")
                .and_then(label)
                .map(|n| s.name = Some(n)),
            other => Err(format!("unknown field {other:?}; a selector has {FIELDS}")),
        };
        if let Err(m) = r {
            mistakes.push((place, m));
        }
    }
    let matches_on = s.uid.is_some()
        || s.gid.is_some()
        || s.unit.is_some()
        || s.cgroup.is_some()
        || s.container.is_some();
    if mistakes.is_empty() && !matches_on {
        mistakes.push((
            String::new(),
            "a selector needs at least one of uid, gid, unit, cgroup, container".to_string(),
        ));
    }
    if mistakes.is_empty() {
        Ok(s)
    } else {
        Err(mistakes)
    }
}

/// A user or group id, or a list of them.
fn ids(v: &Value, what: &str) -> Result<Vec<u32>, String> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{v} is not a numeric {what} id"))
    };
    match v {
        Value::Array(list) if list.is_empty() => Err(format!("an empty list of {what} ids matches nobody")),
        Value::Array(list) => list.iter().map(one).collect(),
        v => one(v).map(|n| vec![n]),
    }
}

fn text(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        v => Err(format!("{v} is not {what}")),
    }
}

fn unit(u: String) -> Result<String, String> {
    if u.contains('/') {
        return Err(format!(
            "{u:?} is a path; unit takes a unit name (determined-agent.service), cgroup takes a path"
        ));
    }
    Ok(u)
}

/// Metric label values: short, and plain enough to read in a query.
fn label(n: String) -> Result<String, String> {
    let plain = n
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain || n.len() > 64 || n == "known" || n == "unknown" {
        return Err(format!(
            "{n:?}: a name is up to 64 letters, digits, '-', '_' or '.', and not known/unknown (the labels of unnamed peers)"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ContainerRef;

    fn sel(yaml: &str) -> Result<Selectors, Vec<Mistake>> {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        parse_list(&v)
    }

    fn peer(uid: u32, cgroup: &str) -> PeerIdentity {
        let mut p = PeerIdentity {
            uid: Some(uid),
            gid: Some(uid + 1),
            ..Default::default()
        };
        p.set_cgroup(cgroup.to_string());
        p
    }

    #[test]
    fn every_field_given_must_match_and_any_entry_of_a_list() {
        let s = sel("[{uid: 0, unit: determined-agent.service}, {uid: [1000, 1001]}]").unwrap();
        assert!(s.matching(&peer(0, "/system.slice/determined-agent.service")).is_some());
        assert!(s.matching(&peer(0, "/system.slice/other.service")).is_none());
        assert!(s.matching(&peer(1001, "/user.slice")).is_some());
        assert!(s.matching(&peer(7, "/system.slice/determined-agent.service")).is_none());
        let g = sel("[{gid: 8}]").unwrap();
        assert!(g.matching(&peer(7, "/")).is_some());
    }

    #[test]
    fn an_unknown_peer_matches_no_selector() {
        let nobody = PeerIdentity::default();
        for y in [
            "[{uid: 0}]",
            "[{gid: 0}]",
            "[{unit: x.service}]",
            "[{cgroup: \"/**\"}]",
            "[{container: a}]",
        ] {
            assert!(sel(y).unwrap().matching(&nobody).is_none(), "{y}");
        }
    }

    #[test]
    fn containers_match_by_id_prefix_or_name() {
        let p = PeerIdentity {
            container: Some(ContainerRef {
                id: "4f2a9c".repeat(10) + "abcd",
                name: "/fluent-bit".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(sel("[{container: 4f2a9c4f}]").unwrap().matching(&p).is_some());
        assert!(sel("[{container: fluent-bit}]").unwrap().matching(&p).is_some());
        assert!(sel("[{container: 9999}]").unwrap().matching(&p).is_none());
        assert!(sel("[{container: fluent}]").unwrap().matching(&p).is_none());
    }

    #[test]
    fn cgroup_globs() {
        let g = |p: &str| CgroupGlob::parse(p).unwrap();
        let docker = "/system.slice/docker-4f2a.scope";
        assert!(g("/system.slice/docker-*.scope").matches(docker));
        assert!(!g("/system.slice/docker-*.scope").matches("/system.slice/x/docker-4f2a.scope"));
        assert!(g("/**/docker-*.scope").matches(docker));
        assert!(g("/**/docker-*.scope").matches("/a/b/c/docker-1.scope"));
        assert!(g("/**").matches("/"));
        assert!(g("/").matches("/"));
        assert!(!g("/").matches(docker));
        assert!(g("/system.slice/**").matches(docker));
        assert!(g("/system.slice/**").matches("/system.slice"));
        assert!(g("/kubepods.slice/**/cri-containerd-*.scope").matches(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-ab.scope"
        ));
        assert!(g("/*/*-agent.service").matches("/system.slice/determined-agent.service"));
        assert!(!g("/*-agent.service").matches("/system.slice/determined-agent.service"));
        assert!(component_matches("a*b*c", "aXXbYYc"));
        assert!(!component_matches("a*b*c", "aXXbYY"));
        assert!(component_matches("*", ""));
        assert!(component_matches("ab*ab", "abab"));
        assert!(!component_matches("ab*ab", "aba"));
    }

    #[test]
    fn mistakes_name_the_field_and_the_place() {
        let m = sel("[{uid: root}, {unit: /system.slice/x.service}, {colour: red}, {}, 7]").unwrap_err();
        let places: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(places, ["[0].uid", "[1].unit", "[2].colour", "[3]", "[4]"], "{m:?}");
        assert!(m[0].1.contains("not a numeric user id"), "{m:?}");
        assert!(m[2].1.contains("unknown field"), "{m:?}");
        assert!(m[3].1.contains("at least one of"), "{m:?}");
        let m = sel("[{cgroup: system.slice}, {cgroup: \"/a/x**\"}, {uid: []}, {name: \"a b\", uid: 1}]").unwrap_err();
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(sel("{uid: 0}").is_err());
    }

    #[test]
    fn selectors_print_as_written() {
        let s = sel("[{name: agent, unit: determined-agent.service}, {uid: [0, 1], cgroup: \"/a/*\"}]").unwrap();
        assert_eq!(
            s.to_string(),
            "[{name: agent, unit: determined-agent.service}, {uid: [0, 1], cgroup: \"/a/*\"}]"
        );
        assert_eq!(s.names().collect::<Vec<_>>(), ["agent"]);
    }
}
