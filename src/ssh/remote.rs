//! The SSH remote (russh): one connection per machine, multiplexing a channel per command;
//! host keys verified against `~/.ssh/known_hosts` (hashed entries too) and trainctl's own
//! file; agent keys first, then key files. A dropped connection is re-opened with jittered
//! backoff and the operation retried.

use super::config::{HostConfig, SshConfig, expand, home};
use crate::remote::{
    ConnectionLost, ExecOutput, Fetched, Remote, Streamed, is_connection_lost, retry_lost, sh_quote,
};
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use russh::ChannelMsg;
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// What a person is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// The passphrase of this key file.
    KeyPassphrase(PathBuf),
    /// The login password of `user@host:port`.
    Password(String),
}

impl Asked {
    /// The popup's title.
    pub fn title(&self) -> &'static str {
        match self {
            Asked::KeyPassphrase(_) => "SSH key passphrase",
            Asked::Password(_) => "SSH password",
        }
    }

    /// What it is for (a key file, `user@host:port`).
    pub fn subject(&self) -> String {
        match self {
            Asked::KeyPassphrase(p) => p.display().to_string(),
            Asked::Password(who) => who.clone(),
        }
    }
}

/// Asks a person for a key's passphrase or a login password (the cockpit registers one;
/// headless there is none). The answer is never stored.
pub struct PassphraseRequest {
    pub asked: Asked,
    /// `None`: the person declined.
    pub reply: tokio::sync::oneshot::Sender<Option<String>>,
}

impl std::fmt::Debug for PassphraseRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PassphraseRequest({})", self.asked.subject())
    }
}

/// Where passphrase questions go, shared by the engine and the SSH provider.
pub type PromptSlot = Arc<Mutex<Option<mpsc::Sender<PassphraseRequest>>>>;

async fn ask(slot: &PromptSlot, asked: Asked) -> Option<String> {
    let tx = slot.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send(PassphraseRequest { asked, reply }).await.ok()?;
    tokio::time::timeout(Duration::from_secs(300), answer)
        .await
        .ok()?
        .ok()
        .flatten()
}

/// Passwords a person typed this session, by `user@host:port`: a reconnect does not ask
/// again. In memory only, never written anywhere.
fn typed_passwords() -> &'static Mutex<HashMap<String, crate::ssh::Secret>> {
    static TYPED: std::sync::OnceLock<Mutex<HashMap<String, crate::ssh::Secret>>> =
        std::sync::OnceLock::new();
    TYPED.get_or_init(Default::default)
}

/// How host keys are trusted.
#[derive(Debug, Clone)]
pub struct HostKeyPolicy {
    /// The user's files, read only (`~/.ssh/known_hosts`, `UserKnownHostsFile`).
    pub user_files: Vec<PathBuf>,
    /// trainctl's own file: read, and written when a first-seen key is accepted.
    pub own_file: PathBuf,
    /// Accept and record a key never seen before (a flag or config option, never a default).
    pub accept_new: bool,
}

/// Everything needed to reach one machine.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// What the user wrote (an ssh_config alias or an address).
    pub alias: String,
    pub hostname: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    pub identities_only: bool,
    pub proxy_command: Option<String>,
    pub keepalive: Option<Duration>,
    pub keepalive_max: usize,
    pub policy: HostKeyPolicy,
    /// Where to ask for a key's passphrase, if anyone can answer.
    pub prompt: Option<PromptSlot>,
    /// A login password, tried (as `password`, then `keyboard-interactive`) after every
    /// key was refused: the GPU clouds that create a machine with a password.
    pub password: Option<crate::ssh::Secret>,
}

impl SshTarget {
    /// Resolve `alias` through the ssh config; explicit `user`/`port` win over the file.
    pub fn resolve(
        alias: &str,
        user: Option<&str>,
        port: Option<u16>,
        identity: Option<&Path>,
        ssh_config: &SshConfig,
        own_known_hosts: &Path,
        accept_new: bool,
    ) -> SshTarget {
        let h: HostConfig = ssh_config.resolve(alias);
        let local_user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let user = user
            .map(str::to_string)
            .or(h.user.clone())
            .unwrap_or(local_user);
        let port = port.or(h.port).unwrap_or(22);
        let hostname = h
            .hostname
            .as_deref()
            .map_or_else(|| alias.to_string(), |n| expand(n, alias, port, &user));
        let mut identity_files: Vec<PathBuf> =
            identity.map(Path::to_path_buf).into_iter().collect();
        identity_files.extend(
            h.identity_files
                .iter()
                .map(|f| PathBuf::from(expand(f, &hostname, port, &user))),
        );
        if identity_files.is_empty() {
            for d in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                identity_files.push(home().join(".ssh").join(d));
            }
        }
        let proxy_command = match (&h.proxy_command, &h.proxy_jump) {
            (Some(c), _) if c != "none" => Some(expand(c, &hostname, port, &user)),
            (_, Some(j)) if j != "none" => {
                Some(proxy_jump_command(j, &hostname, port, ssh_config.source()))
            }
            _ => None,
        };
        let mut user_files: Vec<PathBuf> = h
            .user_known_hosts_files
            .iter()
            .map(|f| PathBuf::from(expand(f, &hostname, port, &user)))
            .collect();
        if user_files.is_empty() {
            user_files.push(home().join(".ssh/known_hosts"));
        }
        SshTarget {
            alias: alias.to_string(),
            hostname,
            port,
            user,
            identity_files,
            identities_only: h.identities_only.unwrap_or(false),
            proxy_command,
            keepalive: h
                .server_alive_interval
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
            keepalive_max: h.server_alive_count_max.unwrap_or(3),
            policy: HostKeyPolicy {
                user_files,
                own_file: own_known_hosts.to_path_buf(),
                accept_new,
            },
            prompt: None,
            password: None,
        }
    }
}

/// ProxyJump as the ProxyCommand OpenSSH itself makes of it: `ssh -W host:port` through the
/// last hop, earlier hops with `-J`, the same ssh_config file (`-F`), and never a prompt on
/// the terminal (`BatchMode`): the hop's host key is checked by OpenSSH against the user's
/// known_hosts. Hops are `[user@]host[:port]` or `ssh://[user@]host[:port]`.
pub fn proxy_jump_command(jumps: &str, host: &str, port: u16, config: Option<&Path>) -> String {
    let hops: Vec<&str> = jumps
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let mut cmd = String::from("ssh -o BatchMode=yes");
    if let Some(f) = config {
        cmd.push_str(&format!(" -F {}", sh_quote(&f.to_string_lossy())));
    }
    let Some((last, before)) = hops.split_last() else {
        return cmd;
    };
    if !before.is_empty() {
        cmd.push_str(&format!(" -J {}", sh_quote(&before.join(","))));
    }
    let spec = last.strip_prefix("ssh://").unwrap_or(last);
    let (user, rest) = match spec.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, spec),
    };
    // `host:port`, `[v6]:port`, or a bare name or address.
    let (jhost, jport) = if let Some(r) = rest.strip_prefix('[') {
        match r.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (rest, None),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => (h, Some(p)),
            _ => (rest, None),
        }
    };
    if let Some(u) = user {
        cmd.push_str(&format!(" -l {}", sh_quote(u)));
    }
    if let Some(p) = jport.filter(|p| p.parse::<u16>().is_ok()) {
        cmd.push_str(&format!(" -p {p}"));
    }
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    cmd.push_str(&format!(" -W {} {}", sh_quote(&target), sh_quote(jhost)));
    cmd
}

/// The handler russh calls with the server's key.
struct Verifier {
    host: String,
    port: u16,
    policy: HostKeyPolicy,
    refusal: Arc<Mutex<Option<(crate::remote::ErrorKind, String)>>>,
    /// The fingerprint of the key accepted.
    seen: Arc<Mutex<Option<String>>>,
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl Verifier {
    fn verify(&self, key: &PublicKey) -> Result<bool, (crate::remote::ErrorKind, String)> {
        let files = self
            .policy
            .user_files
            .iter()
            .chain(std::iter::once(&self.policy.own_file));
        for f in files {
            if !f.exists() {
                continue;
            }
            match russh::keys::check_known_hosts_path(&self.host, self.port, key, f) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(russh::keys::Error::KeyChanged { line }) => {
                    return Err((
                        crate::remote::ErrorKind::HostKeyChanged,
                        format!(
                            "HOST KEY CHANGED for {}:{} (now {}; {} line {line} has another). This may be an attack; \
                         if the machine was rebuilt, delete that line and connect again",
                            self.host,
                            self.port,
                            fingerprint(key),
                            f.display()
                        ),
                    ));
                }
                Err(_) => {}
            }
        }
        if self.policy.accept_new {
            russh::keys::known_hosts::learn_known_hosts_path(
                &self.host,
                self.port,
                key,
                &self.policy.own_file,
            )
            .map_err(|e| {
                (
                    crate::remote::ErrorKind::HostKeyUnknown,
                    format!(
                        "recording the host key in {}: {e}",
                        self.policy.own_file.display()
                    ),
                )
            })?;
            tracing::info!(
                "accepted new host key {} for {}:{}",
                fingerprint(key),
                self.host,
                self.port
            );
            return Ok(true);
        }
        Err((
            crate::remote::ErrorKind::HostKeyUnknown,
            format!(
                "unknown host key for {}:{} ({}). Check the fingerprint, then accept it with \
                 --accept-new-host-key (or accept_new_host_keys = true for this provider); it is recorded in {}",
                self.host,
                self.port,
                fingerprint(key),
                self.policy.own_file.display()
            ),
        ))
    }
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some((
                crate::remote::ErrorKind::HostKeyUnknown,
                "host certificates are not supported; add the host key to known_hosts".into(),
            ));
            return Ok(false);
        };
        match self.verify(key) {
            Ok(ok) => {
                if ok {
                    *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint(key));
                }
                Ok(ok)
            }
            Err(why) => {
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

type Conn = Arc<client::Handle<Verifier>>;

/// `fut`, or None once the connection is closed (checked every 250 ms).
async fn watch<T>(conn: &Conn, fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            v = &mut fut => return Some(v),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if conn.is_closed() {
                    return None;
                }
            }
        }
    }
}

/// The most of a command's streamed output gathered before it goes to the reader.
const STREAM_PIECE: usize = 1 << 20;

/// Room in a chunk being gathered: a packet more than a piece, so it never grows (copies).
const HELD_ROOM: usize = STREAM_PIECE + MAX_PACKET as usize;
const _: () = assert!(HELD_ROOM <= crate::remote::STREAM_CHUNK_MAX);

/// What a command reads on stdin.
enum Stdin<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// Chunks as they are produced (a tar archive being built).
    Stream(mpsc::Receiver<Vec<u8>>),
}

/// The checksum a machine reported for a file it is about to send.
#[derive(Debug, PartialEq)]
enum RemoteSum {
    Blake3(String),
    Sha256(String),
    None,
}

impl RemoteSum {
    /// `b3 HEX…` or `sha256 HEX…` (the tool's `  -` suffix ignored), else none.
    fn parse(line: &str) -> RemoteSum {
        let mut w = line.split_whitespace();
        let kind = w.next().unwrap_or("");
        let hex = w
            .next()
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase);
        match (kind, hex) {
            ("b3", Some(h)) => RemoteSum::Blake3(h),
            ("sha256", Some(h)) => RemoteSum::Sha256(h),
            _ => RemoteSum::None,
        }
    }
}

pub struct SshRemote {
    target: SshTarget,
    conn: tokio::sync::Mutex<Option<Conn>>,
    root: String,
    execs: std::sync::atomic::AtomicU64,
    sent: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicU64,
    /// Bytes of every command's output (stdout and stderr) received so far.
    output: std::sync::atomic::AtomicU64,
    /// A session channel opened right after connecting, for the first command: the
    /// server's work of opening one (tens of ms) overlaps what the caller does meanwhile.
    spare: std::sync::Mutex<Option<SpareChannel>>,
}

type SpareChannel = (
    Conn,
    tokio::task::JoinHandle<Result<russh::Channel<client::Msg>, russh::Error>>,
);

/// Start opening a channel on `conn` in the background.
fn spare_channel(conn: &Conn) -> SpareChannel {
    let c = conn.clone();
    (
        conn.clone(),
        tokio::spawn(async move { c.channel_open_session().await }),
    )
}

impl std::fmt::Debug for SshRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SshRemote({}@{}:{})",
            self.target.user, self.target.hostname, self.target.port
        )
    }
}

/// How much of the connection's incoming bytes one read takes.
const READ_BUFFER: usize = 256 << 10;

/// The largest packet the server may send us.
const MAX_PACKET: u32 = 65_535;

/// Connect and authenticate; the connection and the fingerprint of the host key accepted.
async fn open_connection(t: &SshTarget) -> Result<(Conn, String)> {
    // Throughput: a large window and packets, AES-GCM first (hardware AES where there
    // is some), no Nagle delay on small command round trips.
    let mut preferred = russh::Preferred::default();
    let mut ciphers: Vec<russh::cipher::Name> = preferred.cipher.to_vec();
    ciphers.sort_by_key(|c| *c != russh::cipher::AES_256_GCM);
    preferred.cipher = std::borrow::Cow::Owned(ciphers);
    let config = Arc::new(client::Config {
        keepalive_interval: Some(t.keepalive.unwrap_or(Duration::from_secs(15))),
        keepalive_max: t.keepalive_max,
        window_size: 16 << 20,
        maximum_packet_size: MAX_PACKET,
        // russh widens the window as packets arrive, not as they are read: this bound on
        // the packets a channel holds unread is what bounds the memory of a slow reader
        // (a follow parsing a large log); 1 024 let 64 MiB pile up.
        channel_buffer_size: 128,
        nodelay: true,
        preferred,
        ..Default::default()
    });
    let refusal = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        host: t.hostname.clone(),
        port: t.port,
        policy: t.policy.clone(),
        refusal: refusal.clone(),
        seen: seen.clone(),
    };
    // What the ProxyCommand printed on stderr (its last 2 KB), to explain a failed hop.
    let mut proxy_said: Option<tokio::task::JoinHandle<Vec<u8>>> = None;
    let connected = match &t.proxy_command {
        Some(cmd) => {
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting ProxyCommand `{cmd}`"))?;
            let stream = tokio::io::join(
                tokio::io::BufReader::with_capacity(
                    READ_BUFFER,
                    child.stdout.take().context("ProxyCommand stdout")?,
                ),
                child.stdin.take().context("ProxyCommand stdin")?,
            );
            if let Some(mut err) = child.stderr.take() {
                proxy_said = Some(tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut tail = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = err.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        tail.extend_from_slice(&buf[..n]);
                        let extra = tail.len().saturating_sub(2048);
                        tail.drain(..extra);
                    }
                    tail
                }));
            }
            // The proxy lives as long as the connection's task holds the stream.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            client::connect_stream(config, stream, verifier).await
        }
        None => {
            let addr = (t.hostname.as_str(), t.port);
            let connect = async {
                let socket = tokio::net::TcpStream::connect(addr).await?;
                if let Err(e) = socket.set_nodelay(true) {
                    tracing::debug!("set_nodelay: {e}");
                }
                // russh reads each packet with two reads of the stream (its first block,
                // then the rest): through a buffer, one system call brings several packets
                // (a GiB followed took 61 000 `recvfrom`s, most of them 16 bytes long).
                let stream = tokio::io::BufReader::with_capacity(READ_BUFFER, socket);
                client::connect_stream(config, stream, verifier).await
            };
            tokio::time::timeout(Duration::from_secs(20), connect)
                .await
                .map_err(|_| anyhow!("connecting to {}:{} timed out", t.hostname, t.port))?
        }
    };
    let mut handle = match connected {
        Ok(h) => h,
        Err(e) => {
            if let Some((kind, why)) = refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(crate::remote::classified(kind, why));
            }
            if let Some(said) = proxy_said {
                let said = tokio::time::timeout(Duration::from_secs(2), said)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let said = crate::sanitize::sanitize_line(said.trim_ascii());
                if !said.is_empty() {
                    let msg = format!(
                        "connecting to {}:{} through `{}`: {e}; the proxy said: {said}",
                        t.hostname,
                        t.port,
                        t.proxy_command.as_deref().unwrap_or_default()
                    );
                    // The hop is OpenSSH, another program: its words are the only account
                    // of why it refused, so they are classified here, once, at the border.
                    let lower = said.to_lowercase();
                    let kind = if lower.contains("host key") {
                        Some(crate::remote::ErrorKind::HostKeyChanged)
                    } else if lower.contains("permission denied") {
                        Some(crate::remote::ErrorKind::Auth)
                    } else {
                        None
                    };
                    return Err(match kind {
                        Some(k) => crate::remote::classified(k, msg),
                        None => anyhow!(msg),
                    });
                }
            }
            return Err(anyhow!("connecting to {}:{}: {e}", t.hostname, t.port));
        }
    };
    authenticate(&mut handle, t).await?;
    let fp = seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_default();
    Ok((Arc::new(handle), fp))
}

/// The RSA signature hash the server prefers (None for other key types or old servers).
async fn rsa_hash(handle: &client::Handle<Verifier>) -> Option<HashAlg> {
    handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten()
}

async fn authenticate(handle: &mut client::Handle<Verifier>, t: &SshTarget) -> Result<()> {
    let mut tried = Vec::new();
    // ssh-agent keys first (unless IdentitiesOnly).
    if !t.identities_only
        && std::env::var_os("SSH_AUTH_SOCK").is_some()
        && let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await
    {
        let ids = agent.request_identities().await.unwrap_or_default();
        for id in ids {
            let russh::keys::agent::AgentIdentity::PublicKey { key, comment } = id else {
                continue;
            };
            let hash = rsa_hash(handle).await;
            match handle
                .authenticate_publickey_with(&t.user, key, hash, &mut agent)
                .await
            {
                Ok(r) if r.success() => return Ok(()),
                _ => tried.push(format!("agent key {comment}")),
            }
        }
    }
    for path in &t.identity_files {
        if !path.exists() {
            continue;
        }
        let key = match russh::keys::load_secret_key(path, None) {
            Ok(k) => k,
            Err(russh::keys::Error::KeyIsEncrypted) => {
                let someone_to_ask = t
                    .prompt
                    .as_ref()
                    .filter(|s| s.lock().unwrap_or_else(|p| p.into_inner()).is_some());
                let Some(slot) = someone_to_ask else {
                    return Err(crate::remote::classified(
                        crate::remote::ErrorKind::PassphraseNeeded,
                        format!(
                            "{} is protected by a passphrase: add it to ssh-agent (`ssh-add {}`) so trainctl can use it",
                            path.display(),
                            path.display()
                        ),
                    ));
                };
                let mut unlocked = None;
                for _ in 0..3 {
                    let Some(pass) = ask(slot, Asked::KeyPassphrase(path.clone())).await else {
                        break;
                    };
                    match russh::keys::load_secret_key(path, Some(&pass)) {
                        Ok(k) => {
                            unlocked = Some(k);
                            break;
                        }
                        Err(e) => tracing::warn!("{}: {e}", path.display()),
                    }
                }
                match unlocked {
                    Some(k) => k,
                    None => {
                        return Err(crate::remote::classified(
                            crate::remote::ErrorKind::PassphraseNeeded,
                            format!(
                                "{} is protected by a passphrase and none that works was given (or add it to ssh-agent)",
                                path.display()
                            ),
                        ));
                    }
                }
            }
            Err(e) => {
                tried.push(format!("{} (unreadable: {e})", path.display()));
                continue;
            }
        };
        let hash = rsa_hash(handle).await;
        let r = handle
            .authenticate_publickey(&t.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await?;
        if r.success() {
            return Ok(());
        }
        tried.push(path.display().to_string());
    }
    if let Some(pw) = &t.password {
        if password_login(handle, &t.user, pw).await? {
            return Ok(());
        }
        tried.push("a password".into());
    } else if !handle.is_closed() {
        // No key let us in and no password is known: one typed this session, else ask
        // the person at the cockpit (masked), three tries.
        let who = format!("{}@{}:{}", t.user, t.hostname, t.port);
        let known = typed_passwords()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&who)
            .cloned();
        if let Some(pw) = known
            && password_login(handle, &t.user, &pw).await?
        {
            return Ok(());
        }
        let someone_to_ask = t
            .prompt
            .as_ref()
            .filter(|s| s.lock().unwrap_or_else(|p| p.into_inner()).is_some());
        // Only a server that takes passwords is worth asking one for.
        let takes_passwords = someone_to_ask.is_some()
            && match handle.authenticate_none(&t.user).await? {
                russh::client::AuthResult::Success => return Ok(()),
                russh::client::AuthResult::Failure {
                    remaining_methods, ..
                } => remaining_methods.iter().any(|m| {
                    matches!(
                        m,
                        russh::MethodKind::Password | russh::MethodKind::KeyboardInteractive
                    )
                }),
            };
        if let Some(slot) = someone_to_ask.filter(|_| takes_passwords) {
            for _ in 0..3 {
                let Some(pw) = ask(slot, Asked::Password(who.clone())).await else {
                    break;
                };
                let pw = crate::ssh::Secret::new(pw);
                if password_login(handle, &t.user, &pw).await? {
                    typed_passwords()
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(who, pw);
                    return Ok(());
                }
                if handle.is_closed() {
                    break;
                }
            }
            tried.push("a typed password".into());
        }
    }
    // A connection cut during authentication looks like refused keys; it is not final.
    if handle.is_closed() {
        bail!(
            "{}@{}:{}: the connection dropped during authentication",
            t.user,
            t.hostname,
            t.port
        );
    }
    Err(crate::remote::classified(
        crate::remote::ErrorKind::Auth,
        format!(
            "{}@{}:{} refused every key (tried: {})",
            t.user,
            t.hostname,
            t.port,
            if tried.is_empty() {
                "none found".into()
            } else {
                tried.join(", ")
            }
        ),
    ))
}

/// Log in with a password: the `password` method, else `keyboard-interactive` answering
/// each hidden prompt with it (servers that take passwords only through PAM). The password
/// never appears in a message.
async fn password_login(
    handle: &mut client::Handle<Verifier>,
    user: &str,
    pw: &crate::ssh::Secret,
) -> Result<bool> {
    use russh::MethodKind;
    use russh::client::AuthResult;
    match handle.authenticate_password(user, pw.expose()).await? {
        AuthResult::Success => return Ok(true),
        // The server takes passwords and this one is wrong: keyboard-interactive would
        // check the same password again (and spend another of the server's tries).
        AuthResult::Failure {
            remaining_methods, ..
        } if remaining_methods.contains(&MethodKind::Password)
            || !remaining_methods.contains(&MethodKind::KeyboardInteractive) =>
        {
            return Ok(false);
        }
        AuthResult::Failure { .. } => {}
    }
    use client::KeyboardInteractiveAuthResponse as K;
    let mut answer = handle
        .authenticate_keyboard_interactive_start(user, None)
        .await?;
    let mut answered = false;
    // A server asks a few rounds at most (the password, then perhaps nothing more).
    for _ in 0..4 {
        match answer {
            K::Success => return Ok(true),
            K::Failure { .. } => return Ok(false),
            K::InfoRequest { prompts, .. } => {
                let hidden = prompts.iter().any(|p| !p.echo);
                // Asked for a password again after it was given: it was wrong.
                if hidden && answered {
                    return Ok(false);
                }
                answered |= hidden;
                let replies = prompts
                    .iter()
                    .map(|p| {
                        if p.echo {
                            String::new()
                        } else {
                            pw.expose().to_string()
                        }
                    })
                    .collect();
                answer = handle
                    .authenticate_keyboard_interactive_respond(replies)
                    .await?;
            }
        }
    }
    Ok(false)
}

impl SshRemote {
    /// Connect (verifying the host key, authenticating) and learn the remote home.
    /// `root` overrides trainctl's directory there (default `$HOME/.trainctl`).
    pub async fn connect(target: SshTarget, root: Option<&str>) -> Result<SshRemote> {
        let (conn, host_key) = open_connection(&target).await?;
        let spare = spare_channel(&conn);
        let mut r = SshRemote {
            target,
            conn: tokio::sync::Mutex::new(Some(conn)),
            root: String::new(),
            execs: Default::default(),
            sent: Default::default(),
            received: Default::default(),
            output: Default::default(),
            spare: std::sync::Mutex::new(Some(spare)),
        };
        r.root = match root {
            // An absolute root needs nothing from the machine.
            Some(p) if p.starts_with('/') => p.trim_end_matches('/').to_string(),
            Some(p) => format!("{}/{}", r.home(&host_key).await?, p.trim_end_matches('/')),
            None => format!("{}/.trainctl", r.home(&host_key).await?),
        };
        Ok(r)
    }

    /// The remote home directory: remembered per user, address and host key beside
    /// trainctl's known_hosts (a command costs a login shell's start, ~0.1 s on many
    /// machines, and every CLI run connects anew), else asked and remembered. A machine
    /// rebuilt at the same address has another host key, so it is asked again.
    async fn home(&self, host_key: &str) -> Result<String> {
        let cache = self.target.policy.own_file.with_file_name("ssh-homes.json");
        let key = format!(
            "{}@{}:{} {host_key}",
            self.target.user, self.target.hostname, self.target.port
        );
        let read = || -> BTreeMap<String, String> {
            std::fs::read(&cache)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        };
        if !host_key.is_empty()
            && let Some(h) = read().get(&key)
            && h.starts_with('/')
        {
            return Ok(h.clone());
        }
        let out = self
            .exec_raw("printf %s \"$HOME\"", Stdin::Empty, None)
            .await?;
        let home = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if home.is_empty() || !home.starts_with('/') {
            bail!(
                "{}: could not learn the remote home directory",
                self.target.alias
            );
        }
        if !host_key.is_empty() {
            let mut all = read();
            all.insert(key, home.clone());
            let wrote = serde_json::to_vec(&all)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(crate::model::write_whole(&cache, &b)?));
            if let Err(e) = wrote {
                tracing::debug!("remembering the home of {}: {e:#}", self.target.alias);
            }
        }
        Ok(home)
    }

    /// Run `script` with a tar archive of `rels` on its stdin, built while it is sent (and,
    /// with a trailer, padded to a whole tar record and followed by the mark line and the
    /// trailer). Returns what was sent, the output and the trailer's bytes.
    async fn put_tar(
        &self,
        local_root: &Path,
        rels: &[String],
        script: &str,
        total: std::sync::Arc<std::sync::atomic::AtomicU64>,
        trailer: Option<crate::remote::Trailer>,
    ) -> Result<(Vec<Fetched>, ExecOutput, Vec<u8>)> {
        let root = local_root.to_path_buf();
        let list = rels.to_vec();
        // The archive is built while it is sent: memory stays at a few chunks.
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        let packer = tokio::task::spawn_blocking(move || {
            crate::remote::pack::pack(&root, &list, &total, tx, trailer)
        });
        let ran = self.exec_raw(script, Stdin::Stream(rx), None).await;
        let packed = packer.await?;
        // A lost connection also stops the packer (its channel closes): report the cause.
        let out = ran?;
        let (files, tail) = packed?;
        Ok((files, out, tail))
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Whether the connection is open now (it is re-opened on the next use otherwise).
    pub async fn is_open(&self) -> bool {
        self.conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| !c.is_closed())
    }

    /// The live connection, re-opened with jittered backoff when it dropped.
    async fn handle(&self, fresh: bool) -> Result<Conn> {
        let mut guard = self.conn.lock().await;
        if !fresh
            && let Some(c) = guard.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        *guard = None;
        let mut delay = 200u64;
        let mut last = None;
        for attempt in 0..6 {
            match open_connection(&self.target).await {
                Ok((c, _)) => {
                    *guard = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => {
                    // A key problem will not fix itself (here or at a ProxyJump hop): say so now.
                    if crate::remote::is_final(&e) {
                        return Err(e);
                    }
                    tracing::warn!("reconnect {} attempt {attempt}: {e:#}", self.target.alias);
                    last = Some(e);
                }
            }
            let jitter = (crate::model::now_ms() as u64 * 7919) % (delay / 2 + 1);
            tokio::time::sleep(Duration::from_millis(delay + jitter)).await;
            delay = (delay * 2).min(5000);
        }
        Err(last.unwrap_or_else(|| anyhow!("cannot reach {}", self.target.alias)))
    }

    /// Bytes sent to commands' stdin so far (file uploads).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of files downloaded so far (`get`).
    pub fn bytes_received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes of command output (stdout and stderr) received so far.
    pub fn output_bytes(&self) -> u64 {
        self.output.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Commands run on this machine so far (each is one round trip).
    pub fn exec_count(&self) -> u64 {
        self.execs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Run `script` under `sh -c`, with optional stdin, streaming stdout to `sink` when given.
    /// Retried once on a fresh connection when the channel cannot be opened.
    async fn exec_raw(
        &self,
        script: &str,
        stdin: Stdin<'_>,
        sink: Option<&mpsc::Sender<Vec<u8>>>,
    ) -> Result<ExecOutput> {
        let began = std::time::Instant::now();
        let (conn, mut channel) = self.start(script).await?;
        match stdin {
            Stdin::Empty => {}
            Stdin::Bytes(data) => self.send(&conn, &channel, data).await?,
            Stdin::Stream(mut rx) => {
                while let Some(chunk) = rx.recv().await {
                    self.send(&conn, &channel, &chunk).await?;
                }
            }
        }
        self.step(&conn, channel.eof()).await?;
        let mut out = ExecOutput::default();
        let mut status = None;
        let mut stopped_by_reader = false;
        // Streamed output goes to the sink in pieces of up to a MiB: what has already
        // arrived is gathered (one wake-up of the reader per piece, not per SSH packet),
        // and whatever is held goes out before waiting for more.
        let mut held: Vec<u8> = Vec::new();
        loop {
            use futures_util::FutureExt;
            let msg = match channel.wait().now_or_never() {
                Some(msg) => msg,
                None => {
                    if let Some(s) = sink
                        && !held.is_empty()
                        && s.send(std::mem::take(&mut held)).await.is_err()
                    {
                        stopped_by_reader = true;
                        break;
                    }
                    watch(&conn, channel.wait()).await.flatten()
                }
            };
            let Some(msg) = msg else { break };
            let Some(data) = self.absorb(msg, &mut out.stderr, &mut status) else {
                continue;
            };
            match sink {
                Some(s) => {
                    if held.capacity() == 0 {
                        held = crate::bufpool::take(HELD_ROOM);
                    }
                    held.extend_from_slice(&data);
                    if held.len() >= STREAM_PIECE {
                        // A full chunk ends at its last line end; the part of a line
                        // after it (a small copy) starts the next one.
                        let mut next = Vec::new();
                        let whole = crate::remote::line_aligned_len(&held);
                        if whole > 0 && whole < held.len() {
                            next = crate::bufpool::take(HELD_ROOM);
                            next.extend_from_slice(&held[whole..]);
                            held.truncate(whole);
                        }
                        if s.send(std::mem::replace(&mut held, next)).await.is_err() {
                            stopped_by_reader = true;
                            break;
                        }
                    }
                }
                None => out.stdout.extend_from_slice(&data),
            }
        }
        if stopped_by_reader {
            let _ = channel.close().await;
        } else if let Some(s) = sink
            && !held.is_empty()
            && s.send(held).await.is_err()
        {
            stopped_by_reader = true;
        }
        if stopped_by_reader {
            status = status.or(Some(0));
        }
        out.status = status.ok_or_else(|| self.lost(None))?;
        tracing::debug!(
            "{}: `{}` exited {} after {} ms",
            self.target.alias,
            script.chars().take(60).collect::<String>(),
            out.status,
            began.elapsed().as_millis()
        );
        Ok(out)
    }

    /// `script` started under `sh -c` on a session channel (one command counted).
    async fn start(&self, script: &str) -> Result<(Conn, russh::Channel<client::Msg>)> {
        self.execs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let command = format!("sh -c {}", sh_quote(script));
        let (conn, channel) = self.open_channel().await?;
        // A send waiting for window space is not woken when the connection dies: every
        // step also watches the connection itself.
        self.step(&conn, channel.exec(true, command.as_bytes()))
            .await?;
        Ok((conn, channel))
    }

    /// `data` to a command's stdin, counted.
    async fn send(
        &self,
        conn: &Conn,
        channel: &russh::Channel<client::Msg>,
        data: &[u8],
    ) -> Result<()> {
        self.sent
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.step(conn, channel.data(data)).await
    }

    /// One message of a command: output counted, stderr and the exit status kept; its
    /// stdout bytes returned for the caller to route.
    fn absorb(
        &self,
        msg: ChannelMsg,
        stderr: &mut Vec<u8>,
        status: &mut Option<i32>,
    ) -> Option<russh::keys::ssh_encoding::bytes::Bytes> {
        if let ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } = &msg {
            self.output
                .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        match msg {
            ChannelMsg::Data { data } => return Some(data),
            ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => *status = Some(exit_status as i32),
            ChannelMsg::ExitSignal { .. } => *status = status.or(Some(128 + 9)),
            _ => {}
        }
        None
    }

    /// A session channel, on a new connection when the current one cannot open one.
    async fn open_channel(&self) -> Result<(Conn, russh::Channel<client::Msg>)> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((conn, opening)) = spare
            && !conn.is_closed()
            && let Ok(Ok(channel)) = opening.await
        {
            return Ok((conn, channel));
        }
        let mut fresh = false;
        loop {
            let conn = self.handle(fresh).await?;
            match conn.channel_open_session().await {
                Ok(c) => return Ok((conn, c)),
                Err(e) if !fresh => {
                    tracing::warn!("{}: channel failed ({e}); reconnecting", self.target.alias);
                    fresh = true;
                }
                Err(e) => return Err(anyhow!("{}: opening a channel: {e}", self.target.alias)),
            }
        }
    }

    /// The error for a command whose connection went away, with the cause when known.
    fn lost(&self, cause: Option<russh::Error>) -> anyhow::Error {
        let mut msg = format!(
            "{}: the connection dropped before the command ended",
            self.target.alias
        );
        if let Some(e) = cause {
            msg.push_str(&format!(" ({e})"));
        }
        anyhow::Error::new(ConnectionLost(msg))
    }

    /// One step on a channel of `conn`: its failure, or the connection closing under it, is
    /// a lost connection.
    async fn step<T>(
        &self,
        conn: &Conn,
        fut: impl std::future::Future<Output = Result<T, russh::Error>>,
    ) -> Result<T> {
        match watch(conn, fut).await {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(self.lost(Some(e))),
            None => Err(self.lost(None)),
        }
    }

    /// Append the bytes of remote `path` from `part`'s current length up to `size`, written
    /// as they arrive (a dropped connection keeps what came). Retries on a new connection
    /// while it makes progress.
    async fn download_into(&self, path: &str, part: &Path, size: u64) -> Result<()> {
        let q = sh_quote(path);
        let mut stalls = 0;
        loop {
            let have = match tokio::fs::metadata(part).await {
                Ok(m) if m.len() <= size => m.len(),
                Ok(_) => {
                    tokio::fs::remove_file(part).await?;
                    0
                }
                Err(_) => 0,
            };
            if have == size {
                return Ok(());
            }
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(part)
                .await
                .with_context(|| format!("opening {}", part.display()))?;
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(32);
            let writer = tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(chunk) = rx.recv().await {
                    f.write_all(&chunk).await?;
                    n += chunk.len() as u64;
                }
                f.flush().await?;
                f.sync_data().await?;
                anyhow::Ok(n)
            });
            let script = format!("tail -c +{} {q} | head -c {}", have + 1, size - have);
            let res = self.exec_raw(&script, Stdin::Empty, Some(&tx)).await;
            drop(tx);
            let written = writer.await??;
            self.received
                .fetch_add(written, std::sync::atomic::Ordering::Relaxed);
            match res {
                // Complete, or the file shrank on the machine: the checksum will tell.
                Ok(out) => return out.check(&format!("downloading {path}")).map(|_| ()),
                Err(e) if is_connection_lost(&e) => {
                    stalls = if written == 0 { stalls + 1 } else { 0 };
                    if stalls >= 3 {
                        return Err(e.context(format!("downloading {path}")));
                    }
                    tracing::warn!(
                        "{}: connection dropped while downloading {path} at {} of {size} bytes; resuming",
                        self.target.alias,
                        have + written
                    );
                    self.handle(true).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Like `exec_raw`, run once more (`exec_raw` reconnects) if the connection dropped
    /// mid-way. Only for commands that are safe to run twice.
    async fn exec_idempotent(&self, script: &str) -> Result<ExecOutput> {
        retry_lost(2, &self.target.alias, || {
            self.exec_raw(script, Stdin::Empty, None)
        })
        .await
    }
}

/// A command on the machine in conversation (see [`Remote::converse`]).
struct SshConversation<'a> {
    remote: &'a SshRemote,
    conn: Conn,
    channel: russh::Channel<client::Msg>,
    out: ExecOutput,
    status: Option<i32>,
    /// Stdout received past what was read.
    buffered: Vec<u8>,
    closed: bool,
}

impl SshConversation<'_> {
    /// The next message, noting output, status and closing; None once closed.
    async fn next(&mut self) -> Option<()> {
        if self.closed {
            return None;
        }
        let Some(msg) = watch(&self.conn, self.channel.wait()).await.flatten() else {
            self.closed = true;
            return None;
        };
        if matches!(msg, ChannelMsg::Close) {
            self.closed = true;
        }
        if let Some(data) = self
            .remote
            .absorb(msg, &mut self.out.stderr, &mut self.status)
        {
            self.buffered.extend_from_slice(&data);
        }
        Some(())
    }
}

#[async_trait]
impl crate::remote::Conversation for SshConversation<'_> {
    async fn read_until(&mut self, mark: &[u8]) -> Result<Vec<u8>> {
        loop {
            if let Some(answer) = crate::remote::take_through(&mut self.buffered, mark) {
                return Ok(answer);
            }
            if self.next().await.is_none() {
                return Err(match self.status {
                    // The machine's lines, as lines (`check` makes them safe).
                    Some(st) => ExecOutput {
                        status: st,
                        stdout: Vec::new(),
                        stderr: self.out.stderr.clone(),
                    }
                    .check("the command on the machine (ended before answering)")
                    .err()
                    .unwrap_or_else(|| anyhow!("the command ended before answering")),
                    None => self.remote.lost(None),
                });
            }
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.remote.send(&self.conn, &self.channel, data).await
    }

    async fn finish(mut self: Box<Self>) -> Result<ExecOutput> {
        if !self.closed && self.status.is_none() {
            self.remote.step(&self.conn, self.channel.eof()).await?;
        }
        while self.next().await.is_some() {}
        let mut out = std::mem::take(&mut self.out);
        out.stdout = std::mem::take(&mut self.buffered);
        out.status = self.status.ok_or_else(|| self.remote.lost(None))?;
        Ok(out)
    }
}

#[async_trait]
impl Remote for SshRemote {
    async fn converse<'a>(
        &'a self,
        script: &str,
    ) -> Result<Option<Box<dyn crate::remote::Conversation + 'a>>> {
        let (conn, channel) = self.start(script).await?;
        Ok(Some(Box::new(SshConversation {
            remote: self,
            conn,
            channel,
            out: ExecOutput::default(),
            status: None,
            buffered: Vec::new(),
            closed: false,
        })))
    }

    fn root(&self) -> &str {
        &self.root
    }

    async fn exec(&self, script: &str) -> Result<ExecOutput> {
        self.exec_raw(script, Stdin::Empty, None).await
    }

    async fn exec_stream(&self, script: &str, sink: mpsc::Sender<Vec<u8>>) -> Result<i32> {
        Ok(self
            .exec_raw(script, Stdin::Empty, Some(&sink))
            .await?
            .status)
    }

    async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let tmp = format!("{path}.trainctl-part");
        let script = format!(
            "mkdir -p \"$(dirname {p})\" && cat > {t} && chmod {m:o} {t} && mv -f {t} {p}",
            p = sh_quote(path),
            t = sh_quote(&tmp),
            m = mode
        );
        self.exec_raw(&script, Stdin::Bytes(data), None)
            .await?
            .check(&format!("writing {path}"))?;
        Ok(())
    }

    async fn exec_with_stdin(&self, script: &str, data: &[u8]) -> Result<ExecOutput> {
        self.exec_raw(script, Stdin::Bytes(data), None).await
    }

    async fn append_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let script = format!(
            "mkdir -p \"$(dirname {p})\" && cat >> {p}",
            p = sh_quote(path)
        );
        self.exec_raw(&script, Stdin::Bytes(data), None)
            .await?
            .check(&format!("appending to {path}"))?;
        Ok(())
    }

    async fn put_files_counted(
        &self,
        local_root: &Path,
        rels: &[String],
        remote_root: &str,
        total: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Vec<Fetched>> {
        let script = crate::remote::pack::unpack_script(remote_root);
        let (files, out, _) = self.put_tar(local_root, rels, &script, total, None).await?;
        out.check("unpacking files on the machine")?;
        Ok(files)
    }

    async fn put_files_between(
        &self,
        local_root: &Path,
        rels: &[String],
        remote_root: &str,
        before: &str,
        after: &str,
        trailer: crate::remote::Trailer,
    ) -> Result<(Vec<Fetched>, ExecOutput)> {
        // One command: `before`, the archive, then `after` reading what follows it.
        let script =
            crate::remote::pack::between_script(before, !rels.is_empty(), remote_root, after);
        let (files, out, trailer) = self
            .put_tar(local_root, rels, &script, Default::default(), Some(trailer))
            .await?;
        match crate::remote::pack::judge(out)? {
            Some(out) => Ok((files, out)),
            None => Ok((files, self.exec_with_stdin(after, &trailer).await?)),
        }
    }

    async fn get(&self, path: &str, dest: &Path) -> Result<Fetched> {
        let q = sh_quote(path);
        // Size and the machine's own checksum first: BLAKE3 when `b3sum` is there, SHA-256
        // (coreutils) otherwise. Both read the file on stdin so no name is ever printed.
        let info = self
            .exec_idempotent(&format!(
                "[ -f {q} ] || exit 44; wc -c < {q} || exit 1; \
                 if command -v b3sum >/dev/null 2>&1; then echo \"b3 $(b3sum < {q})\"; \
                 elif command -v sha256sum >/dev/null 2>&1; then echo \"sha256 $(sha256sum < {q})\"; \
                 elif command -v shasum >/dev/null 2>&1; then echo \"sha256 $(shasum -a 256 < {q})\"; \
                 else echo none; fi"
            ))
            .await?;
        if info.status == 44 {
            bail!("{path}: no such file on the machine");
        }
        let info = info.check(&format!("reading {path}"))?;
        let text = info.stdout_str();
        let mut lines = text.lines();
        let size: u64 = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("cannot read the size of {path}"))?;
        let expected = RemoteSum::parse(lines.next().unwrap_or(""));
        let parent = dest.parent().context("destination has no parent")?;
        tokio::fs::create_dir_all(parent).await?;
        let part = crate::remote::partial_path(dest)?;
        tokio::fs::create_dir_all(part.parent().unwrap_or(parent)).await?;
        // A partial file from an earlier attempt is resumed; one that does not match in the
        // end is thrown away and the download made once more from the start.
        for from_scratch in [false, true] {
            if from_scratch {
                let _ = tokio::fs::remove_file(&part).await;
            }
            self.download_into(path, &part, size).await?;
            let part2 = part.clone();
            let with_sha = matches!(expected, RemoteSum::Sha256(_));
            let (got, b3, sha) = tokio::task::spawn_blocking(move || {
                crate::remote::local::hash_file_with(&part2, with_sha)
            })
            .await??;
            let matches = got == size
                && match &expected {
                    RemoteSum::Blake3(h) => *h == b3,
                    RemoteSum::Sha256(h) => sha.as_ref() == Some(h),
                    RemoteSum::None => true,
                };
            if matches {
                tokio::fs::rename(&part, dest).await?;
                if let Some(d) = part.parent() {
                    let _ = tokio::fs::remove_dir(d).await;
                }
                return Ok(Fetched { size, blake3: b3 });
            }
            tracing::warn!("{path}: downloaded copy does not match (size {got} vs {size})");
        }
        let _ = tokio::fs::remove_file(&part).await;
        bail!(
            "{path}: the download does not match the file on the machine (did it change while it was copied?); try again"
        )
    }

    async fn stream_file(
        &self,
        path: &str,
        offset: u64,
        complete_if: Option<&str>,
        sink: mpsc::Sender<Vec<u8>>,
    ) -> Result<Streamed> {
        let q = sh_quote(path);
        // One command: whether `complete_if` is there is looked at before the read, and
        // told by the exit status (45) after the bytes.
        let cmd = match complete_if {
            Some(m) => format!(
                "[ -f {q} ] || exit 44; c=0; [ -e {} ] && c=45; {} && exit $c",
                sh_quote(m),
                read_from(&q, offset, false)
            ),
            None => format!("[ -f {q} ] || exit 44; {}", read_from(&q, offset, true)),
        };
        let out = self.exec_raw(&cmd, Stdin::Empty, Some(&sink)).await?;
        streamed(out.status, path, &out.stderr)
    }

    /// One command: the script in a subshell with its output on stderr, a line that ends
    /// it (unguessable: a fresh id) with its exit status, then the file on stdout.
    async fn exec_then_stream(
        &self,
        script: &str,
        path: &str,
        offset: u64,
        sink: mpsc::Sender<Vec<u8>>,
    ) -> Result<(ExecOutput, Streamed)> {
        let q = sh_quote(path);
        let end = crate::model::new_id("--trainctl-end-");
        let cmd = format!(
            "( {script}\n) >&2; printf '\\n{end} %s\\n' \"$?\" >&2\n[ -f {q} ] || exit 44; {}",
            read_from(&q, offset, true)
        );
        let out = self.exec_raw(&cmd, Stdin::Empty, Some(&sink)).await?;
        let marker = format!("\n{end} ");
        let Some(at) = memchr::memmem::find(&out.stderr, marker.as_bytes()) else {
            bail!(
                "the command did not run: {}",
                crate::sanitize::sanitize_line(out.stderr.trim_ascii())
            );
        };
        let rest = &out.stderr[at + marker.len()..];
        let line_end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let status = String::from_utf8_lossy(&rest[..line_end]).trim().parse()?;
        let script_out = ExecOutput {
            status,
            stdout: out.stderr[..at].to_vec(),
            stderr: Vec::new(),
        };
        Ok((script_out, streamed(out.status, path, &rest[line_end..])?))
    }

    async fn read_range(&self, path: &str, offset: u64, max: usize) -> Result<Option<Vec<u8>>> {
        let q = sh_quote(path);
        let max = max.min(64 << 20);
        let out = self
            .exec_idempotent(&format!(
                "[ -f {q} ] || exit 44; {} | head -c {max}",
                read_from(&q, offset, false)
            ))
            .await?;
        match out.status {
            44 => Ok(None),
            0 => Ok(Some(out.stdout)),
            _ => Err(anyhow!(
                "reading {path}: {}",
                crate::sanitize::sanitize_line(out.stderr.trim_ascii())
            )),
        }
    }
}

/// The shell words that write file `q` (quoted) from byte `offset` to its end on stdout
/// (the command's last, run by `exec`, when `last`). A MiB at a time: `tail -c +N`
/// reads and writes 8 KiB at a time, so sshd sent packets of 8 KiB, each with its
/// cost on both ends (measured with OpenSSH's client: 0.1-0.3 s more for a GiB than
/// `cat`). `dd` skips to the offset where it can (GNU's and BusyBox's `skip_bytes`,
/// tried on nothing first); `tail` where it cannot.
fn read_from(q: &str, offset: u64, last: bool) -> String {
    let exec = if last { "exec " } else { "" };
    if offset == 0 {
        return format!("{exec}cat {q}");
    }
    format!(
        "if dd if=/dev/null of=/dev/null iflag=skip_bytes status=none 2>/dev/null; \
         then {exec}dd if={q} bs=1M iflag=skip_bytes skip={offset} status=none; \
         else {exec}tail -c +{} {q}; fi",
        offset + 1
    )
}

/// What a streaming command's exit status says of the file it read (`[ -f F ] || exit
/// 44`, exit 45 when its `complete_if` file was there first; anything else failed, `err`
/// says why).
fn streamed(status: i32, path: &str, err: &[u8]) -> Result<Streamed> {
    match status {
        44 => Ok(Streamed::Missing),
        0 => Ok(Streamed::Read { complete: false }),
        45 => Ok(Streamed::Read { complete: true }),
        _ => Err(anyhow!(
            "reading {path}: {}",
            crate::sanitize::sanitize_line(err.trim_ascii())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_from_any_offset_by_dd_or_else_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a log 'quoted'.txt");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        // A `dd` that knows no `skip_bytes` (an old or minimal one): `tail` reads instead.
        let old_dd = dir.path().join("bin");
        std::fs::create_dir(&old_dd).unwrap();
        std::fs::write(
            old_dd.join("dd"),
            "#!/bin/sh\necho 'dd: invalid input flag' >&2; exit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(old_dd.join("dd"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let path_var = format!("{}:{}", old_dd.display(), std::env::var("PATH").unwrap());
        let q = sh_quote(path.to_str().unwrap());
        for offset in [0u64, 1, 4095, 1 << 20, 2_999_999, 3_000_000] {
            for (last, old) in [(true, false), (false, false), (true, true)] {
                let mut cmd = std::process::Command::new("sh");
                cmd.arg("-c").arg(read_from(&q, offset, last));
                if old {
                    cmd.env("PATH", &path_var);
                }
                let out = cmd.output().unwrap();
                assert!(out.status.success(), "{offset} {old}: {:?}", out);
                assert!(
                    out.stdout == bytes[offset as usize..],
                    "offset {offset} (old dd {old}): {} bytes",
                    out.stdout.len()
                );
            }
        }
    }

    #[test]
    fn proxy_jump_becomes_the_command_openssh_would_run() {
        assert_eq!(
            proxy_jump_command("bastion", "10.0.0.5", 22, None),
            "ssh -o BatchMode=yes -W 10.0.0.5:22 bastion"
        );
        assert_eq!(
            proxy_jump_command(
                "a, ops@b:2222",
                "gpu box",
                2200,
                Some(Path::new("/home/u/.ssh/my config"))
            ),
            "ssh -o BatchMode=yes -F '/home/u/.ssh/my config' -J a -l ops -p 2222 -W 'gpu box:2200' b"
        );
        assert_eq!(
            proxy_jump_command("ssh://me@[::1]:2022", "fe80::1", 22, None),
            "ssh -o BatchMode=yes -l me -p 2022 -W '[fe80::1]:22' ::1"
        );
    }

    #[test]
    fn remote_checksum_lines_are_read_strictly() {
        let h = "a".repeat(64);
        assert_eq!(
            RemoteSum::parse(&format!("b3 {h}  -")),
            RemoteSum::Blake3(h.clone())
        );
        assert_eq!(
            RemoteSum::parse(&format!("sha256 {}  -", h.to_uppercase())),
            RemoteSum::Sha256(h.clone())
        );
        // Anything else (a missing tool, an error text, a short or non-hex value) is none.
        for line in [
            "none",
            "",
            "sha256 ",
            "b3 abc",
            &format!("md5 {h}"),
            &format!("b3 {}", "z".repeat(64)),
        ] {
            assert_eq!(RemoteSum::parse(line), RemoteSum::None, "{line}");
        }
    }
}
