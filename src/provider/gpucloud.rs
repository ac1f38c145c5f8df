//! What the HTTP GPU clouds (`lambda`, `canopywave`, `runpod`) share once their API has
//! answered: trainctl's login key, the machine's password, its host key, waiting for SSH,
//! and the connection cache.
//!
//! **Host keys.** These clouds do not say a machine's host key, so trainctl accepts the key
//! it is first shown, but only when all of this holds: the machine is one trainctl itself
//! launched (its intent row and the provider's id of it are in the store), the address is
//! the one the provider's API gave for that id, and no key was recorded for that machine
//! yet. The key is then pinned in a known_hosts file of that machine alone
//! (`<data>/<provider>/hosts/<trainctl id>`), so a later change is refused as an attack,
//! and an address the cloud gives to another machine later never meets a stale key. The
//! file goes when the machine is terminated. The user's own known_hosts is not consulted
//! for these machines (recycled cloud addresses would make it cry wolf).
//!
//! **Passwords.** A cloud that logs in with a password (CanopyWave) gets one made here,
//! kept 0600 in `<data>/<provider>/passwords/<id>` and removed with the machine. After a
//! password login trainctl installs its own key in `~/.ssh/authorized_keys`; keys are
//! always tried first, so later connections use the key when the server allows it.

use crate::remote::{ErrorKind, Remote, error_kind, sh_quote};
use crate::ssh::Secret;
use crate::ssh::config::{SshConfig, expand};
use crate::ssh::remote::{PromptSlot, SshRemote, SshTarget};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct CloudSsh {
    /// `<data>/<provider>`.
    pub dir: PathBuf,
    pub user: String,
    pub proxy_command: Option<String>,
    pub prompt: PromptSlot,
    conns: tokio::sync::Mutex<HashMap<String, Arc<SshRemote>>>,
}

/// Where a machine stands while trainctl waits to reach it.
pub enum Step {
    /// Still coming up: what is awaited (shown while waiting).
    Wait(String),
    /// The API gives an address.
    Ready { host: String, port: u16 },
    /// It ended or failed for good.
    Ended(String),
}

impl CloudSsh {
    pub fn new(
        provider: &'static str,
        data_dir: &Path,
        user: &str,
        proxy_command: Option<String>,
        prompt: PromptSlot,
    ) -> CloudSsh {
        CloudSsh {
            dir: data_dir.join(provider),
            user: user.to_string(),
            proxy_command,
            prompt,
            conns: Default::default(),
        }
    }

    /// trainctl's key for this provider's machines (`<dir>/id_ed25519`, made once, 0600):
    /// its private key file and its public line.
    pub fn login_key(&self) -> Result<(PathBuf, String)> {
        let file = self.dir.join("id_ed25519");
        let pub_file = self.dir.join("id_ed25519.pub");
        if !file.exists() {
            std::fs::create_dir_all(&self.dir)?;
            let (private, public) = super::aws::new_ed25519("trainctl")?;
            let tmp = self.dir.join(format!("id_ed25519.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            super::aws::write_private(&tmp, private.as_bytes())?;
            std::fs::write(&pub_file, format!("{public}\n"))?;
            // Another process may have made one first: the first stays.
            if std::fs::hard_link(&tmp, &file).is_err() && !file.exists() {
                bail!("could not keep {}", file.display());
            }
            let _ = std::fs::remove_file(&tmp);
        }
        let public = std::fs::read_to_string(&pub_file)
            .with_context(|| format!("reading {}", pub_file.display()))?;
        Ok((file, public.trim().to_string()))
    }

    fn hosts_file(&self, id: &str) -> PathBuf {
        self.dir.join("hosts").join(id)
    }

    fn password_file(&self, id: &str) -> PathBuf {
        self.dir.join("passwords").join(id)
    }

    /// A new password for machine `id` (24 letters and digits), kept 0600 before any API
    /// sees it, so a crash after the launch still has it.
    pub fn new_password(&self, id: &str) -> Result<Secret> {
        if let Some(p) = self.password(id) {
            return Ok(p);
        }
        let mut bytes = [0u8; 32];
        getrandom(&mut bytes)?;
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
        // Mixed classes, as clouds' password rules ask.
        let mut pw: String = "Tc7".into();
        pw.extend(
            bytes[..21]
                .iter()
                .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char),
        );
        let f = self.password_file(id);
        std::fs::create_dir_all(f.parent().context("password dir")?)?;
        let _ = std::fs::remove_file(&f);
        super::aws::write_private(&f, pw.as_bytes())?;
        Ok(Secret::new(pw))
    }

    /// Machine `id`'s password: trainctl's, else `TRAINCTL_SSH_PASSWORD` (a machine the
    /// user made with a password of their own).
    pub fn password(&self, id: &str) -> Option<Secret> {
        std::fs::read_to_string(self.password_file(id))
            .ok()
            .filter(|p| !p.is_empty())
            .map(Secret::new)
            .or_else(|| {
                std::env::var("TRAINCTL_SSH_PASSWORD")
                    .ok()
                    .filter(|p| !p.is_empty())
                    .map(Secret::new)
            })
    }

    /// Forget machine `id`: its connection, pinned host key and password.
    pub async fn forget(&self, id: &str) {
        self.conns.lock().await.remove(id);
        let _ = std::fs::remove_file(self.hosts_file(id));
        let _ = std::fs::remove_file(self.password_file(id));
    }

    pub async fn drop_connection(&self, id: &str) {
        self.conns.lock().await.remove(id);
    }

    /// The provider's id of machine `inst` for a terminate: stored, else found by name
    /// (a launch whose answer was lost). None: the provider holds nothing (and what
    /// trainctl kept for it is forgotten).
    pub async fn provider_id_to_end(
        &self,
        inst: &crate::store::InstanceRecord,
        found: impl std::future::Future<Output = Result<Option<super::Launched>>>,
    ) -> Result<Option<String>> {
        self.drop_connection(&inst.id).await;
        if let Some(p) = &inst.provider_id {
            return Ok(Some(p.clone()));
        }
        match found.await? {
            Some(l) => Ok(Some(l.provider_id)),
            None => {
                self.forget(&inst.id).await;
                Ok(None)
            }
        }
    }

    fn target(&self, id: &str, host: &str, port: u16) -> Result<SshTarget> {
        let (key, _) = self.login_key()?;
        let own = self.hosts_file(id);
        std::fs::create_dir_all(own.parent().context("hosts dir")?)?;
        // First sight only: once a key is pinned for this machine, it is the only one.
        let first_sight = !own.exists();
        let mut t = SshTarget::resolve(
            host,
            Some(&self.user),
            Some(port),
            Some(&key),
            &SshConfig::default(),
            &own,
            first_sight,
        );
        t.policy.user_files.clear();
        t.identities_only = true;
        t.password = self.password(id);
        t.prompt = Some(self.prompt.clone());
        if let Some(c) = &self.proxy_command {
            t.proxy_command = Some(expand(c, &t.hostname, t.port, &t.user));
        }
        Ok(t)
    }

    /// A connection to machine `id` at `host:port` (cached). After a password login,
    /// trainctl's key is installed so the key is used from then on.
    pub async fn connect(&self, id: &str, host: &str, port: u16) -> Result<Arc<SshRemote>> {
        let mut conns = self.conns.lock().await;
        // A cached connection that dropped is made again here, so a machine that went
        // away is found out now (and its provider asked why), not on the next command.
        if let Some(c) = conns.get(id) {
            if c.is_open().await {
                return Ok(c.clone());
            }
            conns.remove(id);
        }
        let t = self.target(id, host, port)?;
        let had_password = t.password.is_some();
        let r = SshRemote::connect(t, None).await?;
        if had_password {
            let (_, public) = self.login_key()?;
            let q = sh_quote(&public);
            let script = format!(
                "umask 077; mkdir -p \"$HOME/.ssh\" && touch \"$HOME/.ssh/authorized_keys\" && \
                 (grep -qxF {q} \"$HOME/.ssh/authorized_keys\" || printf '%s\\n' {q} >> \"$HOME/.ssh/authorized_keys\")"
            );
            let out = r.exec(&script).await?;
            if !out.success() {
                tracing::warn!("{id}: installing trainctl's key failed; the password stays in use");
            }
        }
        let r = Arc::new(r);
        conns.insert(id.to_string(), r.clone());
        Ok(r)
    }

    /// Wait until machine `id` answers SSH: `poll` asks the provider's API where it stands;
    /// once it gives an address, the port and the SSH banner are awaited, then a login,
    /// with backoff (1 s doubling to 10 s), bounded by `limit`. Returns `user@host:port`.
    pub async fn reach<F, Fut>(&self, id: &str, limit: Duration, mut poll: F) -> Result<String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Step>>,
    {
        let started = Instant::now();
        let mut wait = Duration::from_secs(1);
        let mut waiting_for;
        let mut said = String::new();
        loop {
            waiting_for = match poll().await? {
                Step::Ended(why) => bail!("{id} ended before it could be reached: {why}"),
                Step::Wait(what) => what,
                // Through a proxy command, the proxy does the connecting.
                Step::Ready { host, port } => match if self.proxy_command.is_some() {
                    Ok(())
                } else {
                    ssh_banner(&host, port).await
                } {
                    Err(why) => format!("SSH on {host}:{port} ({why})"),
                    Ok(()) => match self.connect(id, &host, port).await {
                        Ok(_) => return Ok(format!("{}@{host}:{port}", self.user)),
                        // A password or key the machine has not installed yet while it
                        // boots is waited for; a host key refused is never waited out.
                        Err(e)
                            if error_kind(&e).is_some_and(|k| {
                                !matches!(k, ErrorKind::LostConnection | ErrorKind::Auth)
                            }) =>
                        {
                            return Err(e);
                        }
                        Err(e) => format!("a login on {host}:{port} ({e:#})"),
                    },
                },
            };
            if started.elapsed() > limit {
                bail!(
                    "{id} not reachable after {} s: still waiting for {waiting_for}",
                    limit.as_secs()
                );
            }
            // Said when what is awaited changes (shown headless too: main's filter lets
            // this module's info through), not at every poll.
            if waiting_for != said {
                tracing::info!("{id}: waiting for {waiting_for}");
                said = waiting_for.clone();
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    /// A remote for a machine whose address (`user@host:port`) is stored.
    pub async fn remote(&self, id: &str, address: Option<&str>) -> Result<Arc<dyn Remote>> {
        let (host, port) = address
            .and_then(split_address)
            .with_context(|| format!("{id} has no address yet"))?;
        let r: Arc<dyn Remote> = self.connect(id, &host, port).await?;
        Ok(r)
    }
}

/// The name prefix of this store's machines at a provider (`tc-<owner tag>-`), for the
/// provider data directory `dir`.
pub fn name_prefix(dir: &Path) -> Result<String> {
    Ok(format!("tc-{}-", owner_tag(&owner(dir, None)?)))
}

/// What the provider says of a machine whose launch never answered: found by its name
/// (still coming up) or not there at all.
pub fn unanswered(found: Option<super::Launched>) -> super::Observed {
    match found {
        Some(_) => super::Observed::Pending,
        None => super::Observed::Gone,
    }
}

/// A machine of this store the provider lists (`name` is its name at the provider).
pub fn listed(prefix: &str, name: Option<&str>, l: super::Launched) -> Option<super::Listed> {
    Some(super::Listed {
        id: name?.strip_prefix(prefix)?.to_string(),
        provider_id: l.provider_id,
        region: l.region,
        instance_type: l.instance_type,
        spot: false,
        launched_ms: None,
        hourly: l.hourly,
        batch_on: None,
    })
}

/// Wait until the provider confirms machine `pid` gone: `still` says its status while it
/// is there (None: gone). Bounded by `limit`; polled 0.5 s doubling to 5 s.
pub async fn confirm_gone<F, Fut>(
    provider: &str,
    pid: &str,
    limit: Duration,
    mut still: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>>>,
{
    let deadline = Instant::now() + limit;
    let mut wait = Duration::from_millis(500);
    while let Some(status) = still().await? {
        if Instant::now() > deadline {
            bail!(
                "{provider} still reports {pid} as {status} after {} s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

/// `user@host:port` (or `host:port`, `host`) as host and port (22 when absent).
pub fn split_address(a: &str) -> Option<(String, u16)> {
    let hp = a.rsplit_once('@').map_or(a, |(_, h)| h);
    if hp.is_empty() {
        return None;
    }
    Some(match hp.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.parse().ok()?),
        _ => (hp.to_string(), 22),
    })
}

/// The port open and an SSH banner (`SSH-`) read within 5 s.
async fn ssh_banner(host: &str, port: u16) -> std::result::Result<(), String> {
    use tokio::io::AsyncReadExt;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)
            .await
            .map_err(|e| format!("no banner: {e}"))?;
        if &buf != b"SSH-" {
            return Err("not an SSH server".to_string());
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| Err("no banner within 5 s".into()))
}

/// This store's owner name for provider data directory `dir`: `configured`, else made once
/// (`<user>@<host>-<random>`, kept in `<dir>/owner`).
pub fn owner(dir: &Path, configured: Option<&str>) -> Result<String> {
    if let Some(o) = configured {
        return Ok(o.to_string());
    }
    let f = dir.join("owner");
    if let Ok(o) = std::fs::read_to_string(&f)
        && !o.trim().is_empty()
    {
        return Ok(o.trim().to_string());
    }
    std::fs::create_dir_all(dir)?;
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let mut rand = [0u8; 16];
    getrandom(&mut rand)?;
    let rand = blake3::hash(&rand).to_hex();
    let o: String = format!("{user}@{host}-{}", &rand[..8])
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "@._-".contains(*c))
        .collect();
    // Another process may have made it first: the file wins.
    let tmp = dir.join(format!("owner.{}", std::process::id()));
    std::fs::write(&tmp, &o)?;
    if std::fs::hard_link(&tmp, &f).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return Ok(std::fs::read_to_string(&f)?.trim().to_string());
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(o)
}

/// Random bytes from the kernel.
pub fn getrandom(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// A short tag of this store's owner for names the clouds show (no tags on Lambda or
/// CanopyWave): machines are named `tc-<tag>-<trainctl id>`.
pub fn owner_tag(owner: &str) -> String {
    blake3::hash(owner.as_bytes()).to_hex()[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_address("ubuntu@1.2.3.4:2222"),
            Some(("1.2.3.4".into(), 2222))
        );
        assert_eq!(split_address("1.2.3.4"), Some(("1.2.3.4".into(), 22)));
        assert_eq!(split_address("root@h"), Some(("h".into(), 22)));
        assert_eq!(split_address(""), None);
    }
}
