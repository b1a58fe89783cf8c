//! Standalone mode: mailroom's main job without a cluster. A folder of
//! manifests stands in for the API server; the same core as the controller
//! reconciles it (`supervisor`), status goes to files, and the folder is
//! watched for changes.

pub mod check;
pub mod manifests;
pub mod run;
pub mod supervisor;
pub mod table;
pub mod writeback;

pub use run::{RunError, RunOptions, run};
