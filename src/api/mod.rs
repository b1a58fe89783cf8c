//! The two custom resources, their status, their generated CRDs and the validation
//! an API server would apply to them.

pub mod common;
pub mod incoming;
pub mod outgoing;
pub mod status;
pub mod validation;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::*;
pub use incoming::*;
pub use mailroom_core::vocab::{
    AfterProcessing, AuthType, ConnectionStage, FilterType, FirstStart, IncomingProtocol, Mode,
    OutgoingProtocol, Provider, SecurityType, StageResult,
};
pub use outgoing::*;
pub use status::*;

/// Both CRDs, IncomingEmailServer first.
pub fn crds() -> [CustomResourceDefinition; 2] {
    [IncomingEmailServer::crd(), OutgoingEmailServer::crd()]
}

/// One CRD as the YAML document found under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// What `mailroom crd` prints: both CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}
