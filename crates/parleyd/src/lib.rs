//! The daemon's code as a library, so that the binary (`main.rs`), the fuzz targets
//! (`fuzz/`) and benchmarks drive the same parsers and handlers. See ARCHITECTURE.md.

pub mod acme;
pub mod calls;
pub mod calls_admin;
pub mod cli;
pub mod doctor;
pub mod hostaddr;
pub mod http;
pub mod logging;
pub mod notify;
pub mod quality_metrics;
pub mod relay;
pub mod serve;
pub mod state;
pub mod tls;
pub mod users;
pub mod web;
