//! The one integration-test binary: every test runs the real `imagetrail` executable (or the
//! library's server on 127.0.0.1:0) against real parts: the Docker engine, Podman's socket,
//! the `docker-registry` from Debian and HTTP servers on loopback.

mod dashboard;
mod deploy;
mod flags;
mod image;
mod point_cache;
mod postgres;
mod prune;
mod reference;
mod registry;
mod registry_access;
mod scan;
mod scan_faults;
mod server;
mod server_admission;
mod server_crash;
mod server_pipeline;
mod server_postgres;
mod server_postgres_callbacks;
mod server_probes;
mod server_scanner;
mod support;
mod tables;
mod throughput;
