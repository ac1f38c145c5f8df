//! A machine reached through SSM Run Command when SSH cannot reach it (a security group
//! that no longer admits this laptop's address, a dead sshd, a bastion down): enough of
//! [`Remote`] for the engine to read a job's status and stop it. Each command is one
//! `SendCommand` (`AWS-RunShellScript`, run by the machine's SSM agent as root, so the
//! script is handed to the SSH user with `runuser`) and `GetCommandInvocation` polls until
//! it ends. Files are not moved this way (SSM's output is capped at 24 000 characters):
//! logs and checkpoints wait for SSH.
//!
//! The machine must be a managed instance: the SSM agent (the Deep Learning AMIs have it)
//! and an instance profile allowing `ssm:UpdateInstanceInformation` and friends (the
//! `AmazonSSMManagedInstanceCore` policy) — `instance_profile` in `[providers.aws]`.

use crate::remote::{ExecOutput, Fetched, Remote, sh_quote};
use anyhow::{Context, Result};
use async_trait::async_trait;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::CommandInvocationStatus;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

/// SSM keeps this many characters of a command's stdout in `GetCommandInvocation`.
pub const OUTPUT_LIMIT: usize = 24_000;
/// Bytes read per command: their base64 fits the output limit.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes written per command (they travel inside the command's parameters).
const WRITE_LIMIT: usize = 32 * 1024;

pub struct SsmRemote {
    client: aws_sdk_ssm::Client,
    instance: String,
    user: String,
    root: String,
    timeout: Duration,
}

impl SsmRemote {
    /// Reach `instance` (an EC2 id) through SSM as `user`; one command finds the user's home.
    pub async fn open(
        client: aws_sdk_ssm::Client,
        instance: &str,
        user: &str,
        timeout: Duration,
    ) -> Result<SsmRemote> {
        let mut r = SsmRemote {
            client,
            instance: instance.to_string(),
            user: user.to_string(),
            root: String::new(),
            timeout,
        };
        let home = r
            .run("printf %s \"$HOME\"")
            .await?
            .check("finding the home directory through SSM")?
            .stdout_str();
        if !home.starts_with('/') {
            anyhow::bail!("SSM answered an odd home directory for {user}: {home:?}");
        }
        r.root = format!("{}/.trainctl", home.trim_end_matches('/'));
        Ok(r)
    }

    /// The shell text SSM runs: `script` (base64, so no quoting can break) as the SSH user
    /// in their home, from the agent's root shell; as is when the agent is that user.
    pub fn wrap(script: &str, user: &str) -> String {
        let b64 = b64(script.as_bytes());
        let u = sh_quote(user);
        format!(
            "S=$(printf %s {b64} | base64 -d)\n\
             if [ \"$(id -u)\" = 0 ] && [ {u} != root ] && id {u} >/dev/null 2>&1; then\n\
             H=$(getent passwd {u} | cut -d: -f6)\n\
             cd \"$H\" && exec runuser -u {u} -- env HOME=\"$H\" sh -c \"$S\"\n\
             fi\n\
             cd \"$HOME\" 2>/dev/null\n\
             exec sh -c \"$S\"\n"
        )
    }

    /// One command, to its end (or `timeout`).
    async fn run(&self, script: &str) -> Result<ExecOutput> {
        let id = &self.instance;
        let secs = self.timeout.as_secs().max(30);
        let sent = self
            .client
            .send_command()
            .instance_ids(id)
            .document_name("AWS-RunShellScript")
            .comment("trainctl: SSH cannot reach this machine")
            .parameters("commands", vec![Self::wrap(script, &self.user)])
            .parameters("executionTimeout", vec![secs.to_string()])
            .timeout_seconds(secs as i32)
            .send()
            .await
            .map_err(|e| {
                let hint = if e.code() == Some("InvalidInstanceId") {
                    ": it is not a managed instance (it needs the SSM agent, which the Deep \
                     Learning AMIs have, and an instance profile with the \
                     AmazonSSMManagedInstanceCore policy: `instance_profile` in [providers.aws])"
                } else {
                    ""
                };
                anyhow::anyhow!(
                    "SSM cannot run a command on {id}{hint} ({})",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                )
            })?;
        let cmd = sent
            .command()
            .and_then(|c| c.command_id())
            .context("SSM answered SendCommand without a command id")?
            .to_string();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut wait = Duration::from_millis(200);
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            if tokio::time::Instant::now() > deadline {
                let _ = self.client.cancel_command().command_id(&cmd).send().await;
                anyhow::bail!(
                    "SSM command {cmd} on {id} gave no answer within {} s",
                    self.timeout.as_secs()
                );
            }
            let got = match self
                .client
                .get_command_invocation()
                .command_id(&cmd)
                .instance_id(id)
                .send()
                .await
            {
                Ok(g) => g,
                // Right after SendCommand the invocation may not exist yet.
                Err(e) if e.code() == Some("InvocationDoesNotExist") => continue,
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "asking SSM how command {cmd} on {id} went: {}",
                        aws_smithy_types::error::display::DisplayErrorContext(&e)
                    ));
                }
            };
            let out = || ExecOutput {
                status: got.response_code(),
                stdout: got
                    .standard_output_content()
                    .unwrap_or("")
                    .as_bytes()
                    .to_vec(),
                stderr: got
                    .standard_error_content()
                    .unwrap_or("")
                    .as_bytes()
                    .to_vec(),
            };
            match got.status() {
                Some(
                    CommandInvocationStatus::Pending
                    | CommandInvocationStatus::InProgress
                    | CommandInvocationStatus::Delayed,
                )
                | None => continue,
                Some(CommandInvocationStatus::Success | CommandInvocationStatus::Failed) => {
                    return Ok(out());
                }
                Some(other) => anyhow::bail!(
                    "SSM command {cmd} on {id} ended {}: {}",
                    other.as_str(),
                    got.status_details().unwrap_or("")
                ),
            }
        }
    }

    fn too_big(what: &str, len: usize) -> Result<()> {
        if len > WRITE_LIMIT {
            anyhow::bail!(
                "{what}: {len} bytes is more than trainctl sends through SSM ({WRITE_LIMIT}); it waits for SSH"
            );
        }
        Ok(())
    }
}

fn b64(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(data)
}

#[async_trait]
impl Remote for SsmRemote {
    fn root(&self) -> &str {
        &self.root
    }

    async fn exec(&self, script: &str) -> Result<ExecOutput> {
        self.run(script).await
    }

    async fn exec_stream(&self, script: &str, sink: mpsc::Sender<Vec<u8>>) -> Result<i32> {
        let out = self.run(script).await?;
        if !out.stdout.is_empty() {
            let _ = sink.send(out.stdout).await;
        }
        Ok(out.status)
    }

    async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        Self::too_big(path, data.len())?;
        let p = sh_quote(path);
        let tmp = sh_quote(&format!("{path}.ssm-tmp"));
        self.run(&format!(
            "mkdir -p \"$(dirname {p})\" && printf %s {} | base64 -d > {tmp} && chmod {mode:o} {tmp} && mv -f {tmp} {p}",
            b64(data)
        ))
        .await?
        .check(&format!("writing {path} through SSM"))?;
        Ok(())
    }

    async fn exec_with_stdin(&self, script: &str, data: &[u8]) -> Result<ExecOutput> {
        Self::too_big("a command's input", data.len())?;
        self.run(&format!(
            "printf %s {} | base64 -d | sh -c {}",
            b64(data),
            sh_quote(script)
        ))
        .await
    }

    async fn append_file(&self, path: &str, data: &[u8]) -> Result<()> {
        Self::too_big(path, data.len())?;
        let p = sh_quote(path);
        self.run(&format!(
            "mkdir -p \"$(dirname {p})\" && printf %s {} | base64 -d >> {p}",
            b64(data)
        ))
        .await?
        .check(&format!("appending to {path} through SSM"))?;
        Ok(())
    }

    async fn put_files_counted(
        &self,
        _local_root: &Path,
        _rels: &[String],
        _remote_root: &str,
        _sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Vec<Fetched>> {
        anyhow::bail!(
            "copying files to {} needs SSH (SSM only reads status and stops jobs)",
            self.instance
        )
    }

    async fn get(&self, path: &str, _dest: &Path) -> Result<Fetched> {
        anyhow::bail!(
            "copying {path} from {} needs SSH (SSM only reads status and stops jobs)",
            self.instance
        )
    }

    async fn read_range(&self, path: &str, offset: u64, max: usize) -> Result<Option<Vec<u8>>> {
        let p = sh_quote(path);
        let n = max.min(READ_CHUNK);
        let out = self
            .run(&format!(
                "[ -f {p} ] || {{ echo missing; exit 0; }}\necho ok\ntail -c +{} {p} | head -c {n} | base64 | tr -d '\\n'",
                offset + 1
            ))
            .await?
            .check(&format!("reading {path} through SSM"))?
            .stdout_str();
        let (head, body) = out.split_once('\n').unwrap_or((out.as_str(), ""));
        match head.trim() {
            "missing" => Ok(None),
            "ok" => Ok(Some(
                aws_smithy_types::base64::decode(body.trim())
                    .context("SSM's answer is not the base64 trainctl asked for")?,
            )),
            other => anyhow::bail!("SSM answered {other:?} reading {path}"),
        }
    }
}
