//! The API's answers parsed into what the directory keeps: the running containers' ids (list),
//! one container's addresses, name, image and Determined task identifiers (inspect), and what
//! an event is about. A container's environment is filtered while it is parsed: only
//! `DET_TASK_ID`, `DET_ALLOCATION_ID` and `DET_TASK_TYPE` are ever copied out of the answer;
//! every other variable (among them `DET_SESSION_TOKEN`) is looked at and skipped.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::api::ApiError;
use super::ContainerInfo;

/// A task identifier longer than this is not one Determined made: dropped, not kept.
const MAX_TASK_VALUE: usize = 256;

/// `GET /containers/json`: the ids of the running containers.
pub(super) fn running_ids(body: &[u8]) -> Result<Vec<String>, ApiError> {
    #[derive(Deserialize)]
    struct Listed {
        #[serde(rename = "Id")]
        id: String,
    }
    let listed: Vec<Listed> = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed("GET /containers/json", &e))?;
    Ok(listed.into_iter().map(|l| l.id).collect())
}

/// `GET /containers/{id}/json`: the container and its addresses, or `None` when it is not
/// running (its addresses are released).
pub(super) fn container(body: &[u8]) -> Result<Option<(ContainerInfo, Vec<IpAddr>)>, ApiError> {
    let c: Inspected = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed("GET /containers/{id}/json", &e))?;
    if !c.state.unwrap_or_default().running {
        return Ok(None);
    }
    let config = c.config.unwrap_or_default();
    let env = config.env;
    let info = ContainerInfo {
        name: c.name.trim_start_matches('/').to_string(),
        image: config.image.unwrap_or_default(),
        id: c.id,
        task_id: env.task_id,
        allocation_id: env.allocation_id,
        task_type: env.task_type,
    };
    Ok(Some((info, c.network.map(addresses).unwrap_or_default())))
}

#[derive(Deserialize)]
struct Inspected {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "State", default)]
    state: Option<State>,
    #[serde(rename = "Config", default)]
    config: Option<Config>,
    #[serde(rename = "NetworkSettings", default)]
    network: Option<NetworkSettings>,
}

#[derive(Deserialize, Default)]
struct State {
    #[serde(rename = "Running", default)]
    running: bool,
}

#[derive(Deserialize, Default)]
struct Config {
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Env", default)]
    env: TaskEnv,
}

#[derive(Deserialize)]
struct NetworkSettings {
    #[serde(rename = "IPAddress", default)]
    ip: Option<String>,
    #[serde(rename = "GlobalIPv6Address", default)]
    ipv6: Option<String>,
    #[serde(rename = "Networks", default)]
    networks: Option<HashMap<String, Endpoint>>,
}

#[derive(Deserialize)]
struct Endpoint {
    #[serde(rename = "IPAddress", default)]
    ip: Option<String>,
    #[serde(rename = "GlobalIPv6Address", default)]
    ipv6: Option<String>,
}

/// Every address of every network the container is on, each once.
fn addresses(n: NetworkSettings) -> Vec<IpAddr> {
    let endpoints = n.networks.into_iter().flatten().map(|(_, e)| (e.ip, e.ipv6));
    let mut out: Vec<IpAddr> = std::iter::once((n.ip, n.ipv6))
        .chain(endpoints)
        .flat_map(|(v4, v6)| [v4, v6])
        .flatten()
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(|a| !a.is_unspecified())
        .map(|a| a.to_canonical())
        .collect();
    out.sort();
    out.dedup();
    out
}

// === The environment, filtered as it is parsed ===

/// Determined's task identifiers from `Config.Env`; nothing else of it.
#[derive(Default)]
struct TaskEnv {
    task_id: Option<String>,
    allocation_id: Option<String>,
    task_type: Option<String>,
}

impl<'de> Deserialize<'de> for TaskEnv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_option(EnvVisitor)
    }
}

struct EnvVisitor;

impl<'de> Visitor<'de> for EnvVisitor {
    type Value = TaskEnv;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of NAME=VALUE strings, or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<TaskEnv, E> {
        Ok(TaskEnv::default())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<TaskEnv, E> {
        Ok(TaskEnv::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TaskEnv, D::Error> {
        d.deserialize_seq(EnvVisitor)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TaskEnv, A::Error> {
        let mut env = TaskEnv::default();
        while let Some(kept) = seq.next_element::<Kept>()? {
            if let Kept(Some((name, value))) = kept {
                let slot = match name {
                    Wanted::TaskId => &mut env.task_id,
                    Wanted::AllocationId => &mut env.allocation_id,
                    Wanted::TaskType => &mut env.task_type,
                };
                *slot = Some(value);
            }
        }
        Ok(env)
    }
}

#[derive(Clone, Copy)]
enum Wanted {
    TaskId,
    AllocationId,
    TaskType,
}

const WANTED: [(&str, Wanted); 3] = [
    ("DET_TASK_ID=", Wanted::TaskId),
    ("DET_ALLOCATION_ID=", Wanted::AllocationId),
    ("DET_TASK_TYPE=", Wanted::TaskType),
];

/// One `NAME=VALUE` entry: the value copied only when NAME is wanted. serde_json hands the
/// text over as a borrowed `&str` (from the input, or its scratch buffer for escapes), so an
/// unwanted entry is never copied into a string of ours.
struct Kept(Option<(Wanted, String)>);

impl<'de> Deserialize<'de> for Kept {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeptVisitor)
    }
}

struct KeptVisitor;

impl Visitor<'_> for KeptVisitor {
    type Value = Kept;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a NAME=VALUE string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Kept, E> {
        let kept = WANTED.iter().find_map(|(prefix, which)| {
            let value = s.strip_prefix(prefix)?;
            (value.len() <= MAX_TASK_VALUE).then(|| (*which, value.to_string()))
        });
        Ok(Kept(kept))
    }
}

/// An id as the API writes them (64 hex digits; a prefix or a name works too): anything
/// else is not put into a request path.
pub(super) fn plausible_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

// === Events ===

/// What an event line means for the directory.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// The container may have gained or lost addresses: ask the API again.
    Reinspect(String),
    /// The container stopped: its addresses are released.
    Gone(String),
    Other,
}

/// One line of `GET /events`. Docker names a network event's container in
/// `Actor.Attributes.container` (the actor is the network); podman makes the container the
/// actor. Podman says `remove` where Docker says `destroy`.
pub(super) fn event(line: &[u8]) -> Result<Change, ApiError> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "Type", default)]
        kind: String,
        #[serde(rename = "Action", default)]
        action: String,
        #[serde(rename = "Actor", default)]
        actor: Option<Actor>,
    }
    #[derive(Deserialize)]
    struct Actor {
        #[serde(rename = "ID", default)]
        id: String,
        #[serde(rename = "Attributes", default)]
        attributes: Option<HashMap<String, serde_json::Value>>,
    }
    let e: Event = serde_json::from_slice(line).map_err(|e| ApiError::malformed("an event", &e))?;
    let Some(actor) = e.actor else {
        return Ok(Change::Other);
    };
    let container = match e.kind.as_str() {
        "network" => actor
            .attributes
            .as_ref()
            .and_then(|a| a.get("container")?.as_str().map(str::to_string))
            .unwrap_or(actor.id),
        _ => actor.id,
    };
    if container.is_empty() {
        return Ok(Change::Other);
    }
    Ok(match (e.kind.as_str(), e.action.as_str()) {
        ("container", "start" | "restart" | "unpause") => Change::Reinspect(container),
        ("container", "die" | "stop" | "destroy" | "remove") => Change::Gone(container),
        ("network", "connect" | "disconnect") => Change::Reinspect(container),
        _ => Change::Other,
    })
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
