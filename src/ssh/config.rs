//! `~/.ssh/config`, the way OpenSSH users expect: `Host` blocks with patterns (`*`, `?`,
//! `!negation`), the first value obtained for a directive wins, `IdentityFile` accumulates.
//!
//! Honoured: `Host`, `HostName`, `User`, `Port`, `IdentityFile`, `IdentitiesOnly`,
//! `ProxyCommand`, `ProxyJump`, `ServerAliveInterval`, `ServerAliveCountMax`,
//! `UserKnownHostsFile`. `StrictHostKeyChecking no` is never honoured (trainctl does not
//! accept unknown keys without being told). Other directives and `Match` blocks are ignored.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostConfig {
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Vec<String>,
    pub identities_only: Option<bool>,
    pub proxy_command: Option<String>,
    pub proxy_jump: Option<String>,
    pub server_alive_interval: Option<u64>,
    pub server_alive_count_max: Option<usize>,
    pub user_known_hosts_files: Vec<String>,
}

#[derive(Debug, Clone)]
struct Block {
    patterns: Vec<String>,
    /// (directive lowercased, value) in file order.
    entries: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct SshConfig {
    blocks: Vec<Block>,
    /// The file it was read from (handed to `ssh -F` for ProxyJump hops).
    path: Option<PathBuf>,
}

/// `*` and `?` glob match, as ssh_config patterns.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut any = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if glob_match(neg, host) {
                return false;
            }
        } else if glob_match(p, host) {
            any = true;
        }
    }
    any
}

/// Split a config line into the directive and its value (`Key value`, `Key=value`).
fn split_line(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let idx = line.find(|c: char| c.is_whitespace() || c == '=')?;
    let key = line[..idx].to_ascii_lowercase();
    let rest = line[idx..].trim_start_matches(|c: char| c.is_whitespace() || c == '=');
    let value = rest.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some((key, value.to_string()))
}

impl SshConfig {
    pub fn parse(text: &str) -> SshConfig {
        // Directives before any Host line apply to every host.
        let mut blocks = vec![Block {
            patterns: vec!["*".into()],
            entries: Vec::new(),
        }];
        let mut in_match = false;
        for line in text.lines() {
            let Some((key, value)) = split_line(line) else {
                continue;
            };
            match key.as_str() {
                "host" => {
                    in_match = false;
                    blocks.push(Block {
                        patterns: value.split_whitespace().map(str::to_string).collect(),
                        entries: Vec::new(),
                    });
                }
                "match" => in_match = true,
                _ if in_match => {}
                _ => {
                    if let Some(b) = blocks.last_mut() {
                        b.entries.push((key, value));
                    }
                }
            }
        }
        SshConfig { blocks, path: None }
    }

    /// `~/.ssh/config`, or empty when there is none.
    pub fn load_default() -> SshConfig {
        let path = home().join(".ssh/config");
        Self::load(&path)
    }

    pub fn load(path: &Path) -> SshConfig {
        match std::fs::read_to_string(path) {
            Ok(t) => SshConfig {
                path: Some(path.to_path_buf()),
                ..Self::parse(&t)
            },
            Err(_) => SshConfig::default(),
        }
    }

    /// The file this configuration was read from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The settings for `alias`: first value wins, identity and known-hosts files accumulate.
    pub fn resolve(&self, alias: &str) -> HostConfig {
        let mut h = HostConfig::default();
        for b in self
            .blocks
            .iter()
            .filter(|b| host_matches(&b.patterns, alias))
        {
            for (k, v) in &b.entries {
                match k.as_str() {
                    "hostname" if h.hostname.is_none() => h.hostname = Some(v.clone()),
                    "user" if h.user.is_none() => h.user = Some(v.clone()),
                    "port" if h.port.is_none() => h.port = v.parse().ok(),
                    "identityfile" => h.identity_files.push(v.clone()),
                    "identitiesonly" if h.identities_only.is_none() => {
                        h.identities_only = Some(v.eq_ignore_ascii_case("yes"))
                    }
                    "proxycommand" if h.proxy_command.is_none() => {
                        h.proxy_command = Some(v.clone())
                    }
                    "proxyjump" if h.proxy_jump.is_none() => h.proxy_jump = Some(v.clone()),
                    "serveraliveinterval" if h.server_alive_interval.is_none() => {
                        h.server_alive_interval = v.parse().ok()
                    }
                    "serveralivecountmax" if h.server_alive_count_max.is_none() => {
                        h.server_alive_count_max = v.parse().ok()
                    }
                    "userknownhostsfile" if h.user_known_hosts_files.is_empty() => {
                        h.user_known_hosts_files =
                            v.split_whitespace().map(str::to_string).collect()
                    }
                    _ => {}
                }
            }
        }
        h
    }
}

pub fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// Expand `~` and the `%h %p %r %u %%` tokens of ssh_config values.
pub fn expand(value: &str, host: &str, port: u16, user: &str) -> String {
    let local_user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let mut out = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('h') => out.push_str(host),
                Some('p') => out.push_str(&port.to_string()),
                Some('r') => out.push_str(user),
                Some('u') => out.push_str(&local_user),
                Some('d') => out.push_str(&home().to_string_lossy()),
                Some('%') => out.push('%'),
                Some(o) => {
                    out.push('%');
                    out.push(o);
                }
                None => out.push('%'),
            }
        } else {
            out.push(c);
        }
    }
    if let Some(rest) = out.strip_prefix("~/") {
        return home().join(rest).to_string_lossy().into_owned();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_wins_patterns_and_negation() {
        let c = SshConfig::parse(
            "User global\n\
             Host gpu-*  !gpu-bad\n  HostName 10.0.0.%h\n  Port=2222\n  IdentityFile ~/.ssh/gpu\n\
             Host *\n  User fallback\n  Port 22\n  IdentityFile ~/.ssh/id_ed25519\n  ServerAliveInterval 15\n\
             Match host foo\n  User ignored\n",
        );
        let h = c.resolve("gpu-1");
        assert_eq!(h.user.as_deref(), Some("global"));
        assert_eq!(h.port, Some(2222));
        assert_eq!(h.hostname.as_deref(), Some("10.0.0.%h"));
        assert_eq!(h.identity_files, vec!["~/.ssh/gpu", "~/.ssh/id_ed25519"]);
        assert_eq!(h.server_alive_interval, Some(15));
        let bad = c.resolve("gpu-bad");
        assert_eq!(bad.port, Some(22));
        assert!(glob_match("g?u-*", "gpu-12"));
        assert!(!glob_match("gpu", "gpu-1"));
    }

    #[test]
    fn tokens_expand() {
        assert_eq!(expand("nc %h %p %%", "box", 2222, "me"), "nc box 2222 %");
        assert!(expand("~/.ssh/id", "h", 22, "u").ends_with("/.ssh/id"));
    }
}
