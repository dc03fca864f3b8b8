//! Portcullis: a policy-enforcing security proxy for the Model Context Protocol.
//!
//! Layers, bottom to top (a module never imports one above it):
//! `protocol`, `config` → `egress` → `traces` → `chain` → `interceptors`, `upstream` → `gateway`
//! → `downstream` → `cli`.

pub mod audit;
pub mod chain;
pub mod cli;
pub mod codemode;
pub mod config;
pub mod downstream;
pub mod egress;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod identity;
pub mod interceptors;
pub mod metrics;
pub mod private_dir;
pub mod protocol;
pub mod sealing;
pub mod search;
pub mod signin;
pub mod traces;
pub mod upstream;
