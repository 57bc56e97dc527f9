//! Shared infrastructure for ocidisk's integration tests: a real local
//! registry ([`registry`]), a deterministic OCI image generator with an
//! oracle of the expected root filesystem ([`imagegen`]), and a runner for
//! the `ocidisk` binary ([`cli`]).

pub mod cli;
pub mod containerd;
pub mod debian;
pub mod fscheck;
pub mod imagegen;
pub mod lazy;
pub mod metrics;
pub mod mount;
pub mod proxy;
pub mod rawtar;
pub mod registry;
pub mod scale;
pub mod serve;
pub mod tocgen;
pub mod token;
pub mod vhost_driver;
pub mod vm;
