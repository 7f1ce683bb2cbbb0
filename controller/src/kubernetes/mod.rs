//! Where Lifeline talks to Kubernetes, and nowhere else: member clusters read behind a
//! budget, and the management cluster's policy CRs, their status and the Secrets that
//! hold member kubeconfigs.

pub mod budget;
pub mod credentials;
pub mod fleet;
pub mod management;
pub mod member;
pub mod status;
