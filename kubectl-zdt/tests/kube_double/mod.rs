//! Test doubles for the cluster tests: the scripted API server and the shipped RBAC rules.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the doubles"
)]

pub mod apiserver;
pub mod fixture;
mod portforward;
pub mod rbac;
mod request;
mod store;
