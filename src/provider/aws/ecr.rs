//! ECR for built container images: the repository made when missing, a registry login
//! from `GetAuthorizationToken` (its password handed to the machine's `docker login` on
//! its standard input: never printed, logged or stored by trainctl).

use crate::config::AwsProviderConfig;
use crate::ssh::Secret;
use anyhow::{Context, Result};
use aws_config::Region;
use aws_config::SdkConfig;
use aws_sdk_ecr::error::ProvideErrorMetadata;

pub fn client(sdk: &SdkConfig, cfg: &AwsProviderConfig, region: &str) -> aws_sdk_ecr::Client {
    let mut b = aws_sdk_ecr::config::Builder::from(sdk).region(Region::new(region.to_string()));
    if let Some(u) = cfg.endpoints.get("ecr") {
        b = b.endpoint_url(u);
    }
    aws_sdk_ecr::Client::from_conf(b.build())
}

/// Make repository `name` unless it is there.
pub async fn ensure_repository(client: &aws_sdk_ecr::Client, name: &str) -> Result<bool> {
    match client
        .create_repository()
        .repository_name(name)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("RepositoryAlreadyExistsException") => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating ECR repository {name}"))),
    }
}

/// The registry's host (from the token's proxy endpoint), user and password.
pub async fn login(client: &aws_sdk_ecr::Client) -> Result<(String, String, Secret)> {
    let out = client
        .get_authorization_token()
        .send()
        .await
        .context("ECR GetAuthorizationToken")?;
    let data = out
        .authorization_data()
        .first()
        .context("ECR gave no authorization data")?;
    let token = data.authorization_token().context("ECR gave no token")?;
    let decoded = aws_smithy_types::base64::decode(token).context("ECR's token is not base64")?;
    let decoded = String::from_utf8(decoded).context("ECR's token is not text")?;
    let (user, password) = decoded
        .split_once(':')
        .context("ECR's token is not user:password")?;
    let host = data
        .proxy_endpoint()
        .context("ECR gave no proxy endpoint")?
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    Ok((host, user.to_string(), Secret::new(password)))
}
