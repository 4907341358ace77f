//! Who is on the other end of a local connection. `container_api`: a client from another
//! network namespace (a container on a bridge), named by the container runtime's API.

pub mod container_api;
