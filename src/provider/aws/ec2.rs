//! The EC2 side of the `aws` provider: the SDK's configuration (credential and region
//! chain, endpoints), what an EC2 error means to trainctl, and an instance's state as the
//! engine sees it.

use crate::config::AwsProviderConfig;
use crate::provider::Observed;
use crate::remote::{ErrorKind, classified};
use anyhow::{Result, anyhow};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{Instance, InstanceStateName};

/// The shared SDK configuration: credentials and region from the standard chain (env,
/// `~/.aws` profile, SSO, web identity, container and instance roles), checked at once so
/// a missing credential is one clear error instead of a failure inside the first call.
pub async fn load_sdk(cfg: &AwsProviderConfig) -> Result<SdkConfig> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(
        aws_config::retry::RetryConfig::standard().with_max_attempts(cfg.api_max_attempts.max(1)),
    );
    if let Some(p) = &cfg.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = cfg.regions.first() {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(u) = &cfg.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let sdk = loader.load().await;
    let profile = cfg
        .profile
        .clone()
        .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "default".into());
    let looked = format!(
        "looked for: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile `{profile}` in ~/.aws/credentials and ~/.aws/config (static keys, SSO, credential_process, role), web identity (AWS_WEB_IDENTITY_TOKEN_FILE), the container role and the instance role (IMDS{})",
        if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        {
            ", disabled by AWS_EC2_METADATA_DISABLED"
        } else {
            ""
        }
    );
    let Some(creds) = sdk.credentials_provider() else {
        return Err(classified(
            ErrorKind::Auth,
            format!("no AWS credentials: {looked}"),
        ));
    };
    use aws_credential_types::provider::ProvideCredentials;
    if let Err(e) = creds.provide_credentials().await {
        return Err(classified(
            ErrorKind::Auth,
            format!(
                "no AWS credentials found ({e}); {looked}. Set a profile with `aws configure` or `aws sso login`, or name one with `profile` in [providers.aws] or AWS_PROFILE"
            ),
        ));
    }
    if sdk.region().is_none() {
        anyhow::bail!(
            "no AWS region: set `regions` in [providers.aws], AWS_REGION, or `region` in profile `{profile}`"
        );
    }
    Ok(sdk)
}

/// An EC2 client for `region`, with the configured endpoint override.
pub fn client(sdk: &SdkConfig, cfg: &AwsProviderConfig, region: &str) -> aws_sdk_ec2::Client {
    let mut b = aws_sdk_ec2::config::Builder::from(sdk).region(Region::new(region.to_string()));
    if let Some(u) = cfg.endpoints.get("ec2") {
        b = b.endpoint_url(u);
    }
    aws_sdk_ec2::Client::from_conf(b.build())
}

pub fn ssm_client(sdk: &SdkConfig, cfg: &AwsProviderConfig, region: &str) -> aws_sdk_ssm::Client {
    let mut b = aws_sdk_ssm::config::Builder::from(sdk).region(Region::new(region.to_string()));
    if let Some(u) = cfg.endpoints.get("ssm") {
        b = b.endpoint_url(u);
    }
    aws_sdk_ssm::Client::from_conf(b.build())
}

/// What an EC2 error means for a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No capacity (or spot market refusal) in this zone for this type: try elsewhere.
    Capacity,
    /// An account limit: the user must act.
    Quota,
    /// The type is not offered here: try another zone.
    Unsupported,
    /// Credentials refused or expired.
    Auth,
    Other,
}

/// The error code EC2 answered, and what it means.
pub fn failure<E: ProvideErrorMetadata>(e: &E) -> (Failure, String) {
    let code = e.code().unwrap_or("").to_string();
    let f = match code.as_str() {
        "InsufficientInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "SpotMaxPriceTooLow"
        | "InsufficientFreeAddressesInSubnet" => Failure::Capacity,
        "MaxSpotInstanceCountExceeded" | "InstanceLimitExceeded" | "VcpuLimitExceeded" => {
            Failure::Quota
        }
        "Unsupported" | "InvalidParameterCombination" => Failure::Unsupported,
        "AuthFailure" | "UnauthorizedOperation" | "RequestExpired" | "ExpiredToken" => {
            Failure::Auth
        }
        _ => Failure::Other,
    };
    (f, code)
}

/// An SDK error as one readable error, typed where the engine acts on the type.
pub fn sdk_error<E, R>(what: &str, e: aws_sdk_ec2::error::SdkError<E, R>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (f, _) = failure(&e);
    let msg = format!(
        "{what}: {}",
        aws_smithy_types::error::display::DisplayErrorContext(&e)
    );
    match f {
        Failure::Capacity => classified(ErrorKind::Capacity, msg),
        Failure::Quota => classified(ErrorKind::Quota, msg),
        Failure::Auth => classified(ErrorKind::Auth, msg),
        Failure::Unsupported | Failure::Other => anyhow!(msg),
    }
}

/// The engine's view of an EC2 instance's state. A spot machine EC2 took back (state
/// reason `Server.SpotInstanceTermination`) is interrupted, not gone: the job recovers.
pub fn observed(i: &Instance) -> Observed {
    let reason = i.state_reason().and_then(|r| r.code()).unwrap_or("");
    let spot_taken =
        reason == "Server.SpotInstanceTermination" || reason == "Server.SpotInstanceShutdown";
    match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => Observed::Pending,
        Some(InstanceStateName::Running) => Observed::Running,
        Some(InstanceStateName::Stopping) | Some(InstanceStateName::Stopped) if spot_taken => {
            Observed::Interrupted {
                reason: "EC2 reclaimed the spot capacity (stopped)".into(),
                at: None,
            }
        }
        Some(InstanceStateName::Stopping) | Some(InstanceStateName::Stopped) => Observed::Stopped,
        Some(InstanceStateName::ShuttingDown) | Some(InstanceStateName::Terminated)
            if spot_taken =>
        {
            Observed::Interrupted {
                reason: "EC2 reclaimed the spot capacity".into(),
                at: None,
            }
        }
        _ => Observed::Gone,
    }
}

/// The value of tag `key` on `i`.
pub fn tag<'a>(i: &'a Instance, key: &str) -> Option<&'a str> {
    i.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}
