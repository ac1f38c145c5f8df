//! Providers rent machines. The engine records the intent in the store before calling
//! [`Provider::launch`], and forgets an instance only after [`Provider::describe`] confirms
//! it gone, so a crash can never leave a billing machine nobody knows about.

pub mod local;
pub mod ssh;

use crate::model::Money;
use crate::remote::Remote;
use crate::store::InstanceRecord;
use anyhow::Result;
use async_trait::async_trait;
use std::sync::Arc;

/// What the user asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchRequest {
    pub name: Option<String>,
    pub instance_type: Option<String>,
    pub gpus: Option<u32>,
    pub spot: bool,
    /// Price override in dollars per hour (the local provider's pretend price).
    pub hourly: Option<Money>,
    /// Trust and record the machine's host key if it has never been seen (SSH).
    pub accept_new_host_key: bool,
}

/// A request checked against the provider's catalog, before any side effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub instance_type: String,
    pub gpus: u32,
    pub spot: bool,
    pub hourly: Money,
    pub accept_new_host_key: bool,
}

/// What the provider says about a machine right now.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Running,
    /// Still coming up.
    Pending,
    /// The provider no longer has it (terminated, or never existed).
    Gone,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;

    /// Validate a request and price it. No API call with side effects; an unknown instance
    /// type is refused here.
    fn plan(&self, req: &LaunchRequest) -> Result<Plan>;

    /// Instance types this provider offers (for completion), cheapest first.
    fn instance_types(&self) -> Vec<String>;

    /// Create the machine whose intent row `id` is already in the store. Returns the address
    /// its remote is reached at.
    async fn launch(&self, id: &str, plan: &Plan) -> Result<String>;

    async fn describe(&self, inst: &InstanceRecord) -> Result<Observed>;

    /// Stop every process trainctl started there and release the machine.
    async fn terminate(&self, inst: &InstanceRecord) -> Result<()>;

    /// Ids of every machine this provider holds for trainctl (to find orphans).
    async fn list(&self) -> Result<Vec<String>>;

    /// A remote for a running instance (connecting if the provider needs to).
    async fn remote(&self, inst: &InstanceRecord) -> Result<Arc<dyn Remote>>;
}
