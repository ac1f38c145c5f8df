//! Contract servers for the HTTP GPU clouds: each serves its API's documented request and
//! response shapes on 127.0.0.1, checks the `Authorization` header and request bodies,
//! moves machines through their states with delays, answers 429 and each error envelope on
//! demand, and points every machine at a real test sshd. Every request is recorded (to
//! check what was sent, and that no API key leaked anywhere it should not be).

use super::{Sshd, TestUser};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub authorization: Option<String>,
    pub body: Value,
    pub at: Instant,
}

/// An answer given once instead of the API's own, to the next request whose path starts
/// with `path` (`Retry-After` when set).
#[derive(Debug, Clone)]
pub struct Fault {
    pub path: String,
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

type Handler = dyn Fn(&Seen) -> (u16, Value) + Send + Sync;

/// A tiny HTTP/1.1 server (one request per connection) calling `handler` after faults and
/// the key check; shared by the contract servers.
struct Http {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
}

impl Http {
    fn start(key: &str, unauthorized: Value, handler: Arc<Handler>) -> Http {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let faults: Arc<Mutex<Vec<Fault>>> = Arc::new(Mutex::new(Vec::new()));
        let (seen2, faults2, key) = (seen.clone(), faults.clone(), key.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (seen, faults, handler, key, unauthorized) = (
                    seen2.clone(),
                    faults2.clone(),
                    handler.clone(),
                    key.clone(),
                    unauthorized.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve(conn, &key, &unauthorized, &seen, &faults, &*handler);
                });
            }
        });
        Http { port, seen, faults }
    }
}

fn serve(
    mut c: std::net::TcpStream,
    key: &str,
    unauthorized: &Value,
    seen: &Mutex<Vec<Seen>>,
    faults: &Mutex<Vec<Fault>>,
    handler: &Handler,
) -> std::io::Result<()> {
    use std::io::Write;
    let Some((head, buf, head_end)) = super::read_request(&mut c)? else {
        return Ok(());
    };
    let line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
    let req = Seen {
        method,
        path: path.to_string(),
        query,
        authorization: super::header(&head, "authorization").map(str::to_string),
        body,
        at: Instant::now(),
    };
    seen.lock().unwrap().push(req.clone());
    let fault = {
        let mut f = faults.lock().unwrap();
        f.iter()
            .position(|x| req.path.starts_with(&x.path))
            .map(|i| f.remove(i))
    };
    let (status, doc, retry_after) = if let Some(f) = fault {
        (f.status, f.body, f.retry_after)
    } else if req.authorization.as_deref() != Some(&format!("Bearer {key}")) {
        (401, unauthorized.clone(), None)
    } else {
        let (s, d) = handler(&req);
        (s, d, None)
    };
    let text = doc.to_string();
    let mut resp = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        text.len()
    );
    if let Some(r) = retry_after {
        resp.push_str(&format!("Retry-After: {r}\r\n"));
    }
    resp.push_str("\r\n");
    resp.push_str(&text);
    c.write_all(resp.as_bytes())
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// The machines of a contract server: each a real sshd of its own, at a made-up public
/// address (`192.0.2.N`, a documentation range) that the pool's `proxy_command` turns
/// into the sshd's port on 127.0.0.1: nothing leaves the loopback.
pub struct MachinePool {
    dir: super::TempDir,
    sshds: BTreeMap<String, Sshd>,
    n: u32,
}

impl MachinePool {
    fn new() -> MachinePool {
        let dir = super::TempDir::new("trainctl-pool");
        std::fs::write(dir.path().join("proxy.py"), super::PROXY_PY).unwrap();
        std::fs::write(dir.path().join("map"), "").unwrap();
        MachinePool {
            dir,
            sshds: BTreeMap::new(),
            n: 0,
        }
    }

    fn proxy_command(&self) -> String {
        format!(
            "python3 {} {} %h",
            self.dir.path().join("proxy.py").display(),
            self.dir.path().join("map").display()
        )
    }

    /// Boot machine `id`: root logging in with `keys`, or (with `password`) `user`
    /// logging in with that password. Returns its address.
    fn boot(
        &mut self,
        id: &str,
        keys: &[String],
        password: Option<(&super::TestUser, &str)>,
    ) -> String {
        let sshd = match password {
            Some((user, pw)) => {
                user.set_password(pw);
                Sshd::start_password_machine_as(user)
            }
            None => {
                let s = Sshd::start_home();
                let f = s.dir.path().join("authorized_keys");
                let mut ak = std::fs::read_to_string(&f).unwrap();
                for k in keys {
                    ak.push_str(k.trim());
                    ak.push('\n');
                }
                std::fs::write(&f, ak).unwrap();
                s
            }
        };
        self.n += 1;
        let ip = format!("192.0.2.{}", self.n);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("map"))
            .unwrap();
        writeln!(
            f,
            "{ip} {} {} {id}",
            sshd.port,
            sshd.dir.path().join("home").display()
        )
        .unwrap();
        self.sshds.insert(id.to_string(), sshd);
        ip
    }

    /// Machine `id` loses its tools (PATH holds `sh` alone): logins work, setup fails.
    fn break_tools(&self, id: &str) {
        let Some(sshd) = self.sshds.get(id) else {
            return;
        };
        let bin = sshd.dir.path().join("minbin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink("/bin/sh", bin.join("sh")).unwrap();
        let cfg = sshd.dir.path().join("sshd_config");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("SetEnv ") {
                    format!(
                        "SetEnv HOME={} PATH={}\n",
                        sshd.dir.path().join("home").display(),
                        bin.display()
                    )
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&cfg, text).unwrap();
        sshd.reload();
    }

    /// Every machine stops (the server is going away).
    fn shut_down(&mut self) {
        self.sshds.clear();
    }

    /// The machine is gone (its sshd stops; its address answers nothing).
    fn kill(&mut self, id: &str) {
        self.sshds.remove(id);
    }
}

/// A machine that boots wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// It never lets trainctl in (the launch's key was not installed).
    Login,
    /// Logins work, but it has no tools: setup fails.
    Tools,
}

/// A machine of a contract server.
#[derive(Debug, Clone)]
struct Machine {
    id: String,
    name: String,
    region: String,
    instance_type: String,
    status: String,
    since: Instant,
    /// Its public address once booted.
    ip: Option<String>,
}

/// Lambda Cloud's v1 API (`/instance-types`, `/instances`, `/instances/{id}`,
/// `/instance-operations/launch|terminate`, `/ssh-keys`), its `{"error": {"code",
/// "message", "suggestion"}}` envelope, booting → active after `boot`, terminating →
/// terminated after `shutdown`. Each machine booted is a new [`Sshd::start_home`] that
/// accepts the SSH key the launch named.
pub struct LambdaApi {
    http: Http,
    state: Arc<Mutex<LambdaState>>,
    proxy_command: String,
}

struct LambdaState {
    machines: Vec<Machine>,
    keys: Vec<(String, String, String)>,
    /// Type → regions with capacity now (types absent: every region has it).
    capacity: BTreeMap<String, Vec<String>>,
    pool: MachinePool,
    boot: Duration,
    shutdown: Duration,
    n: u64,
    /// What is wrong with machines booted from now on.
    broken: Option<Broken>,
    /// Prices that moved since the shipped catalog (type -> cents per hour).
    prices: BTreeMap<String, i64>,
}

const LAMBDA_REGIONS: &[&str] = &["us-east-1", "us-west-1", "us-south-1"];

impl LambdaApi {
    pub fn start(key: &str) -> LambdaApi {
        let state = Arc::new(Mutex::new(LambdaState {
            machines: Vec::new(),
            keys: Vec::new(),
            capacity: BTreeMap::new(),
            pool: MachinePool::new(),
            boot: Duration::from_millis(600),
            shutdown: Duration::from_millis(400),
            n: 0,
            broken: None,
            prices: BTreeMap::new(),
        }));
        let proxy_command = state.lock().unwrap().pool.proxy_command();
        let st = state.clone();
        let handler: Arc<Handler> = Arc::new(move |r: &Seen| lambda_route(&st, r));
        let http = Http::start(
            key,
            json!({"error": {"code": "global/invalid-api-key",
                "message": "API key was invalid, expired, or deleted.",
                "suggestion": "Check your API key or create a new one, then try again."}}),
            handler,
        );
        LambdaApi {
            http,
            state,
            proxy_command,
        }
    }

    /// The `proxy_command` that reaches this API's machines.
    pub fn proxy_command(&self) -> String {
        self.proxy_command.clone()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.http.port)
    }

    /// Only `regions` have capacity for `ty` from now on (empty: none).
    pub fn set_capacity(&self, ty: &str, regions: &[&str]) {
        self.state
            .lock()
            .unwrap()
            .capacity
            .insert(ty.into(), regions.iter().map(|r| r.to_string()).collect());
    }

    pub fn fail_next(&self, path: &str, status: u16, body: Value, retry_after: Option<u64>) {
        self.http.faults.lock().unwrap().push(Fault {
            path: format!("/api/v1{path}"),
            status,
            body,
            retry_after,
        });
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.http.seen.lock().unwrap().clone()
    }

    /// `METHOD path` of every request so far.
    pub fn calls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path.trim_start_matches("/api/v1")))
            .collect()
    }

    /// (id, name, status) of every machine ever launched.
    pub fn machines(&self) -> Vec<(String, String, String)> {
        let mut st = self.state.lock().unwrap();
        advance(&mut st);
        st.machines
            .iter()
            .map(|m| (m.id.clone(), m.name.clone(), m.status.clone()))
            .collect()
    }

    /// Lambda charges `cents` an hour for `ty` from now on.
    pub fn set_price(&self, ty: &str, cents: i64) {
        self.state.lock().unwrap().prices.insert(ty.into(), cents);
    }

    /// What is wrong with machines booted from now on.
    pub fn break_new_machines(&self, how: Broken) {
        self.state.lock().unwrap().broken = Some(how);
    }
}

impl Drop for LambdaApi {
    /// The server's thread keeps its state: the machines are stopped here.
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pool
            .shut_down();
    }
}

/// Statuses that move with time.
fn advance(st: &mut LambdaState) {
    let (boot, shutdown) = (st.boot, st.shutdown);
    let mut booted = Vec::new();
    for m in st.machines.iter_mut() {
        if m.status == "booting" && m.since.elapsed() >= boot {
            m.status = "active".into();
            m.since = Instant::now();
            booted.push(m.id.clone());
        } else if m.status == "terminating" && m.since.elapsed() >= shutdown {
            m.status = "terminated".into();
            m.since = Instant::now();
        }
    }
    for id in booted {
        // cloud-init's part: the launch's SSH keys become the login user's.
        let keys: Vec<String> = match st.broken {
            Some(Broken::Login) => Vec::new(),
            _ => st.keys.iter().map(|k| k.2.clone()).collect(),
        };
        let ip = st.pool.boot(&id, &keys, None);
        if st.broken == Some(Broken::Tools) {
            st.pool.break_tools(&id);
        }
        if let Some(m) = st.machines.iter_mut().find(|m| m.id == id) {
            m.ip = Some(ip);
        }
    }
    let gone: Vec<String> = st
        .machines
        .iter()
        .filter(|m| m.status == "terminated" || m.status == "preempted")
        .map(|m| m.id.clone())
        .collect();
    for id in gone {
        st.pool.kill(&id);
    }
}

fn lambda_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn lambda_instance(m: &Machine) -> Value {
    let cat = crate::provider::lambda::catalog();
    let o = cat.iter().find(|o| o.instance_type == m.instance_type);
    let mut v = json!({
        "id": m.id,
        "name": m.name,
        "status": m.status,
        "region": {"name": m.region, "description": m.region},
        "instance_type": {
            "name": m.instance_type,
            "description": m.instance_type,
            "price_cents_per_hour": o.map_or(0, |o| o.hourly.0 / 10_000),
        },
        "ssh_key_names": [],
        "file_system_names": [],
        "hostname": format!("{}.cloud.lambda.test", m.id),
        "is_reserved": false,
    });
    if let Some(ip) = m.ip.as_deref().filter(|_| m.status == "active") {
        v["ip"] = json!(ip);
        v["private_ip"] = json!("10.0.0.2");
    }
    v
}

fn lambda_route(state: &Mutex<LambdaState>, r: &Seen) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    advance(&mut st);
    let path = r.path.trim_start_matches("/api/v1");
    match (r.method.as_str(), path) {
        ("GET", "/instance-types") => {
            let mut data = serde_json::Map::new();
            for o in crate::provider::lambda::catalog() {
                let regions: Vec<String> = st
                    .capacity
                    .get(&o.instance_type)
                    .cloned()
                    .unwrap_or_else(|| LAMBDA_REGIONS.iter().map(|r| r.to_string()).collect());
                data.insert(
                    o.instance_type.clone(),
                    json!({
                        "instance_type": {
                            "name": o.instance_type,
                            "description": format!("{}x {}", o.gpus, o.gpu),
                            "gpu_description": o.gpu,
                            "price_cents_per_hour": st.prices.get(&o.instance_type).copied().unwrap_or(o.hourly.0 / 10_000),
                            "specs": {"vcpus": o.vcpus, "memory_gib": o.memory_gib,
                                      "storage_gib": 512, "gpus": o.gpus},
                        },
                        "regions_with_capacity_available":
                            regions.iter().map(|r| json!({"name": r, "description": r})).collect::<Vec<_>>(),
                    }),
                );
            }
            (200, json!({"data": data}))
        }
        ("GET", "/instances") => (
            200,
            json!({"data": st.machines.iter()
                .filter(|m| m.status != "terminated")
                .map(lambda_instance).collect::<Vec<_>>()}),
        ),
        ("GET", p) if p.starts_with("/instances/") => {
            let id = &p["/instances/".len()..];
            match st.machines.iter().find(|m| m.id == id) {
                Some(m) => (200, json!({"data": lambda_instance(m)})),
                None => (
                    404,
                    lambda_error(
                        "global/object-does-not-exist",
                        "Specified instance does not exist.",
                    ),
                ),
            }
        }
        ("GET", "/ssh-keys") => (
            200,
            json!({"data": st.keys.iter()
                .map(|(id, n, p)| json!({"id": id, "name": n, "public_key": p}))
                .collect::<Vec<_>>()}),
        ),
        ("POST", "/ssh-keys") => {
            let (Some(name), Some(public)) =
                (r.body["name"].as_str(), r.body["public_key"].as_str())
            else {
                return (
                    400,
                    lambda_error(
                        "global/invalid-parameters",
                        "name and public_key are required",
                    ),
                );
            };
            if st.keys.iter().any(|(_, n, _)| n == name) {
                return (
                    400,
                    lambda_error("global/invalid-parameters", "SSH key name already in use"),
                );
            }
            st.n += 1;
            let id = format!("key{}", st.n);
            st.keys.push((id.clone(), name.into(), public.into()));
            (
                200,
                json!({"data": {"id": id, "name": name, "public_key": public}}),
            )
        }
        ("POST", "/instance-operations/launch") => {
            let b = &r.body;
            let (Some(region), Some(ty)) =
                (b["region_name"].as_str(), b["instance_type_name"].as_str())
            else {
                return (
                    400,
                    lambda_error(
                        "global/invalid-parameters",
                        "region_name and instance_type_name are required",
                    ),
                );
            };
            let keys: Vec<&str> = b["ssh_key_names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            if keys.len() != 1 || !st.keys.iter().any(|(_, n, _)| n == keys[0]) {
                return (
                    400,
                    lambda_error(
                        "global/invalid-parameters",
                        "Exactly one existing SSH key must be specified",
                    ),
                );
            }
            if !crate::provider::lambda::catalog()
                .iter()
                .any(|o| o.instance_type == ty)
            {
                return (
                    400,
                    lambda_error("global/invalid-parameters", "Invalid instance type"),
                );
            }
            let has = st
                .capacity
                .get(ty)
                .map_or(LAMBDA_REGIONS.contains(&region), |r| {
                    r.iter().any(|x| x == region)
                });
            if !has {
                return (
                    400,
                    json!({"error": {"code": "instance-operations/launch/insufficient-capacity",
                        "message": "Not enough capacity to fulfill launch request.",
                        "suggestion": "Choose an instance type with more availability, or try again later."}}),
                );
            }
            st.n += 1;
            let id = format!("0920582c7ff041399e34823a0be62{:03}", st.n);
            st.machines.push(Machine {
                id: id.clone(),
                name: b["name"].as_str().unwrap_or_default().into(),
                region: region.into(),
                instance_type: ty.into(),
                status: "booting".into(),
                since: Instant::now(),
                ip: None,
            });
            (200, json!({"data": {"instance_ids": [id]}}))
        }
        ("POST", "/instance-operations/terminate") => {
            let ids: Vec<String> = r.body["instance_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect();
            let mut out = Vec::new();
            for id in &ids {
                let Some(m) = st
                    .machines
                    .iter_mut()
                    .find(|m| &m.id == id && m.status != "terminated")
                else {
                    return (
                        404,
                        lambda_error(
                            "global/object-does-not-exist",
                            "Specified instance does not exist.",
                        ),
                    );
                };
                m.status = "terminating".into();
                m.since = Instant::now();
                out.push(lambda_instance(m));
            }
            (200, json!({"data": {"terminated_instances": out}}))
        }
        _ => (
            404,
            lambda_error("global/object-does-not-exist", "No such endpoint"),
        ),
    }
}

/// CanopyWave's API (`/projects`, `/instances`, `/instances/<id>`,
/// `/instance-operations/launch|terminate`): `{"data": ...}` answers, `{"error": "..."}`
/// errors, BUILD → ACTIVE after `boot` (the address appearing a little later, under
/// `ip_field`), DELETING → gone after `shutdown`. Each machine booted is a real sshd whose
/// login user (one per server, [`CanopyWaveApi::user`]) takes the password the launch sent.
pub struct CanopyWaveApi {
    http: Http,
    state: Arc<Mutex<CanopyState>>,
    proxy_command: String,
}

struct CanopyState {
    machines: Vec<CanopyMachine>,
    pool: MachinePool,
    /// The machines' login user (taken and removed when the server is dropped).
    user: Option<TestUser>,
    flavors: Vec<String>,
    /// Flavors without capacity now.
    sold_out: Vec<String>,
    ip_field: String,
    n: u64,
}

struct CanopyMachine {
    m: Machine,
    password: String,
    project: String,
    flavor: String,
}

pub const CANOPY_PROJECT: &str = "lab@example.org";
pub const CANOPY_REGION: &str = "KEF-3";

impl CanopyWaveApi {
    /// A server whose machines' address comes under `ip_field` (`publicIp`, `floating_ip`...).
    pub fn start(key: &str, ip_field: &str, flavors: &[&str]) -> CanopyWaveApi {
        let state = Arc::new(Mutex::new(CanopyState {
            machines: Vec::new(),
            pool: MachinePool::new(),
            user: Some(TestUser::create()),
            flavors: flavors.iter().map(|f| f.to_string()).collect(),
            sold_out: Vec::new(),
            ip_field: ip_field.to_string(),
            n: 0,
        }));
        let proxy_command = state.lock().unwrap().pool.proxy_command();
        let st = state.clone();
        let handler: Arc<Handler> = Arc::new(move |r: &Seen| canopy_route(&st, r));
        let http = Http::start(key, json!({"error": "Unauthorized"}), handler);
        CanopyWaveApi {
            http,
            state,
            proxy_command,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.http.port)
    }

    pub fn proxy_command(&self) -> String {
        self.proxy_command.clone()
    }

    /// The machines' login user.
    pub fn user(&self) -> String {
        self.state
            .lock()
            .unwrap()
            .user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default()
    }

    /// Change the machines' password (the user changed it, or the image did): a login
    /// must then use the key trainctl installed.
    pub fn change_password(&self, pw: &str) {
        if let Some(u) = &self.state.lock().unwrap().user {
            u.set_password(pw);
        }
    }

    pub fn sell_out(&self, flavor: &str) {
        self.state.lock().unwrap().sold_out.push(flavor.to_string());
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.http.seen.lock().unwrap().clone()
    }

    /// (id, name, status, flavor) of every machine ever launched; gone ones say DELETED.
    pub fn machines(&self) -> Vec<(String, String, String, String)> {
        let mut st = self.state.lock().unwrap();
        canopy_advance(&mut st);
        st.machines
            .iter()
            .map(|c| {
                (
                    c.m.id.clone(),
                    c.m.name.clone(),
                    c.m.status.clone(),
                    c.flavor.clone(),
                )
            })
            .collect()
    }
}

impl Drop for CanopyWaveApi {
    /// The machines stop and their login user is removed.
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.pool.shut_down();
        st.user.take();
    }
}

const CANOPY_BOOT: Duration = Duration::from_millis(700);
const CANOPY_IP_LATE: Duration = Duration::from_millis(300);
const CANOPY_SHUTDOWN: Duration = Duration::from_millis(400);

fn canopy_advance(st: &mut CanopyState) {
    let mut booted = Vec::new();
    for c in st.machines.iter_mut() {
        if c.m.status == "BUILD" && c.m.since.elapsed() >= CANOPY_BOOT {
            c.m.status = "ACTIVE".into();
            c.m.since = Instant::now();
            booted.push((c.m.id.clone(), c.password.clone()));
        } else if c.m.status == "DELETING" && c.m.since.elapsed() >= CANOPY_SHUTDOWN {
            c.m.status = "DELETED".into();
        }
    }
    for (id, pw) in booted {
        let CanopyState { pool, user, .. } = st;
        let Some(user) = user.as_ref() else {
            continue;
        };
        let ip = pool.boot(&id, &[], Some((user, &pw)));
        if let Some(c) = st.machines.iter_mut().find(|c| c.m.id == id) {
            c.m.ip = Some(ip);
        }
    }
    let gone: Vec<String> = st
        .machines
        .iter()
        .filter(|c| c.m.status == "DELETED")
        .map(|c| c.m.id.clone())
        .collect();
    for id in gone {
        st.pool.kill(&id);
    }
}

fn canopy_instance(c: &CanopyMachine, ip_field: &str) -> Value {
    let mut v = json!({
        "flavor": c.flavor,
        "id": c.m.id,
        "launchedAt": "2026-11-26T12:00:00.000000",
        "name": c.m.name,
        "paymentMode": null,
        "publicIp": null,
        "region": c.m.region,
        "role": "worker",
        "status": c.m.status,
    });
    // The address comes a little after ACTIVE, as on the real service.
    if c.m.status == "ACTIVE" && c.m.since.elapsed() >= CANOPY_IP_LATE {
        v[ip_field] = json!(c.m.ip);
    }
    v
}

fn canopy_route(state: &Mutex<CanopyState>, r: &Seen) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    canopy_advance(&mut st);
    let path = r.path.trim_start_matches("/api/v1");
    let bad = |m: &str| (400, json!({"error": m}));
    let project_ok = |p: Option<&str>| p == Some(CANOPY_PROJECT);
    match (r.method.as_str(), path) {
        ("GET", "/projects") => (200, json!({"data": [CANOPY_PROJECT]})),
        ("GET", "/instances") => {
            if !project_ok(r.query.get("project").map(String::as_str)) {
                return bad("project is required");
            }
            let ip_field = st.ip_field.clone();
            (
                200,
                json!({"data": st.machines.iter()
                .filter(|c| c.m.status != "DELETED")
                .map(|c| canopy_instance(c, &ip_field)).collect::<Vec<_>>()}),
            )
        }
        ("GET", p) if p.starts_with("/instances/") => {
            if !project_ok(r.query.get("project").map(String::as_str))
                || !r.query.contains_key("region")
            {
                return bad("region and project are required");
            }
            let id = &p["/instances/".len()..];
            let ip_field = st.ip_field.clone();
            match st
                .machines
                .iter()
                .find(|c| c.m.id == id && c.m.status != "DELETED")
            {
                Some(c) => (200, json!({"data": canopy_instance(c, &ip_field)})),
                None => (404, json!({"error": "Instance not found"})),
            }
        }
        ("POST", "/instance-operations/launch") => {
            let b = &r.body;
            for k in ["region", "project", "name", "flavor", "image", "password"] {
                if b[k].as_str().is_none_or(str::is_empty) {
                    return bad(&format!("{k} is required"));
                }
            }
            if !project_ok(b["project"].as_str()) {
                return (403, json!({"error": "no access to this project"}));
            }
            let pw = b["password"].as_str().unwrap();
            let strong = pw.len() >= 12
                && pw.chars().any(|c| c.is_ascii_uppercase())
                && pw.chars().any(|c| c.is_ascii_lowercase())
                && pw.chars().any(|c| c.is_ascii_digit());
            if !strong {
                return bad("password is too weak");
            }
            let flavor = b["flavor"].as_str().unwrap();
            if !st.flavors.iter().any(|f| f == flavor) {
                return bad("flavor not found");
            }
            if st.sold_out.iter().any(|f| f == flavor) {
                return bad("Insufficient capacity for this flavor in the region");
            }
            st.n += 1;
            let id = format!("9bc56d2b-411b-47c3-b93a-691c39310{:03}", st.n);
            st.machines.push(CanopyMachine {
                m: Machine {
                    id: id.clone(),
                    name: b["name"].as_str().unwrap().into(),
                    region: b["region"].as_str().unwrap().into(),
                    instance_type: flavor.into(),
                    status: "BUILD".into(),
                    since: Instant::now(),
                    ip: None,
                },
                password: pw.into(),
                project: b["project"].as_str().unwrap().into(),
                flavor: flavor.into(),
            });
            (200, json!({"data": id}))
        }
        ("POST", "/instance-operations/terminate") => {
            let b = &r.body;
            let Some(id) = b["id"].as_str() else {
                return bad("id is required");
            };
            match st
                .machines
                .iter_mut()
                .find(|c| c.m.id == id && c.m.status != "DELETED")
            {
                Some(c) if project_ok(b["project"].as_str()) && c.project == CANOPY_PROJECT => {
                    c.m.status = "DELETING".into();
                    c.m.since = Instant::now();
                    (200, json!({"data": id}))
                }
                _ => (404, json!({"error": "Instance not found"})),
            }
        }
        _ => (404, json!({"error": "Not found"})),
    }
}

/// RunPod's GraphQL API (`POST /graphql`, `{"query", "variables"}`): `gpuTypes`, `myself {
/// pods }`, `pod`, `podFindAndDeployOnDemand`, `podRentInterruptable` (a bid per GPU),
/// `podStop`, `podResume`, `podBidResume`, `podTerminate`; errors as GraphQL `errors` with
/// HTTP 200 (capacity) or HTTP 401 (key). A pod boots after `boot` into a real sshd where
/// root logs in with the `PUBLIC_KEY` the pod was given; its runtime then maps port 22 to
/// a public address.
pub struct RunPodApi {
    http: Http,
    state: Arc<Mutex<RunPodState>>,
    proxy_command: String,
}

struct RunPodState {
    pods: Vec<Pod>,
    pool: MachinePool,
    sold_out: Vec<String>,
    n: u64,
}

struct Pod {
    m: Machine,
    gpus: u64,
    cost: f64,
    spot: bool,
    public_key: String,
    last_change: String,
    port: u16,
}

impl Drop for RunPodApi {
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pool
            .shut_down();
    }
}

const RUNPOD_BOOT: Duration = Duration::from_millis(600);

impl RunPodApi {
    pub fn start(key: &str) -> RunPodApi {
        let state = Arc::new(Mutex::new(RunPodState {
            pods: Vec::new(),
            pool: MachinePool::new(),
            sold_out: Vec::new(),
            n: 0,
        }));
        let proxy_command = state.lock().unwrap().pool.proxy_command();
        let st = state.clone();
        let handler: Arc<Handler> = Arc::new(move |r: &Seen| runpod_route(&st, r));
        let http = Http::start(
            key,
            json!({"errors": [{"message": "Unauthorized"}]}),
            handler,
        );
        RunPodApi {
            http,
            state,
            proxy_command,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/graphql", self.http.port)
    }

    pub fn proxy_command(&self) -> String {
        self.proxy_command.clone()
    }

    /// No capacity for GPU `gpu_type_id` from now on.
    pub fn sell_out(&self, gpu_type_id: &str) {
        self.state.lock().unwrap().sold_out.push(gpu_type_id.into());
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.http.seen.lock().unwrap().clone()
    }

    /// (pod id, name, desiredStatus, spot) of every pod ever made.
    pub fn pods(&self) -> Vec<(String, String, String, bool)> {
        let mut st = self.state.lock().unwrap();
        runpod_advance(&mut st);
        st.pods
            .iter()
            .map(|p| (p.m.id.clone(), p.m.name.clone(), p.m.status.clone(), p.spot))
            .collect()
    }

    /// RunPod takes spot pod `id` back: it exits, its machine is gone.
    pub fn reclaim(&self, id: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(p) = st.pods.iter_mut().find(|p| p.m.id == id) {
            p.m.status = "EXITED".into();
            p.last_change = "Exited by Runpod: spot instance interrupted".into();
            p.m.ip = None;
        }
        st.pool.kill(id);
    }
}

fn runpod_advance(st: &mut RunPodState) {
    let mut booted = Vec::new();
    for p in st.pods.iter_mut() {
        if p.m.status == "RUNNING"
            && p.m.ip.is_none()
            && p.m.since.elapsed() >= RUNPOD_BOOT
            && p.last_change != "stopped"
        {
            booted.push((p.m.id.clone(), p.public_key.clone()));
        }
    }
    for (id, key) in booted {
        let ip = st.pool.boot(&id, &[key], None);
        if let Some(p) = st.pods.iter_mut().find(|p| p.m.id == id) {
            p.m.ip = Some(ip);
            p.last_change = "Rented by User".into();
        }
    }
}

fn runpod_pod(p: &Pod) -> Value {
    let runtime = match (&p.m.ip, p.m.status.as_str()) {
        (Some(ip), "RUNNING") => json!({
            "uptimeInSeconds": p.m.since.elapsed().as_secs(),
            "ports": [
                {"ip": "100.65.3.4", "isIpPublic": false, "privatePort": 22, "publicPort": 22, "type": "tcp"},
                {"ip": ip, "isIpPublic": true, "privatePort": 22, "publicPort": p.port, "type": "tcp"},
            ],
        }),
        _ => Value::Null,
    };
    json!({
        "id": p.m.id,
        "name": p.m.name,
        "desiredStatus": p.m.status,
        "lastStatusChange": p.last_change,
        "costPerHr": p.cost,
        "gpuCount": p.gpus,
        "runtime": runtime,
    })
}

fn gql_error(msg: &str) -> (u16, Value) {
    (200, json!({"data": null, "errors": [{"message": msg}]}))
}

fn runpod_route(state: &Mutex<RunPodState>, r: &Seen) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    runpod_advance(&mut st);
    if r.method != "POST" || r.path != "/graphql" {
        return (404, json!({"errors": [{"message": "not found"}]}));
    }
    let q = r.body["query"].as_str().unwrap_or_default().to_string();
    let input = r.body["variables"]["input"].clone();
    let cat = crate::provider::runpod::catalog();
    if q.contains("gpuTypes") {
        let types: Vec<Value> = cat
            .iter()
            .map(|g| {
                let usd = |m: crate::model::Money| m.0 as f64 / 1e6;
                json!({"id": g.gpu_type_id, "displayName": g.name, "memoryInGb": g.memory_gib,
                       "securePrice": usd(g.price), "communityPrice": usd(g.price) * 0.8,
                       "secureSpotPrice": g.spot_price.map(usd), "communitySpotPrice": g.spot_price.map(usd)})
            })
            .collect();
        return (200, json!({"data": {"gpuTypes": types}}));
    }
    if q.contains("podFindAndDeployOnDemand") || q.contains("podRentInterruptable") {
        let spot = q.contains("podRentInterruptable");
        let Some(g) = cat
            .iter()
            .find(|g| Some(g.gpu_type_id.as_str()) == input["gpuTypeId"].as_str())
        else {
            return gql_error("Invalid gpuTypeId");
        };
        let gpus = input["gpuCount"].as_u64().unwrap_or(0);
        if gpus == 0 || input["imageName"].as_str().is_none_or(str::is_empty) {
            return gql_error("gpuCount and imageName are required");
        }
        if !input["ports"]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .any(|p| p.trim() == "22/tcp")
        {
            return gql_error("the test machine needs port 22/tcp exposed");
        }
        let Some(key) = input["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["key"] == "PUBLIC_KEY")
            .and_then(|e| e["value"].as_str())
        else {
            return gql_error("the test machine needs PUBLIC_KEY");
        };
        let cost = if spot {
            let Some(bid) = input["bidPerGpu"].as_f64() else {
                return gql_error("bidPerGpu is required");
            };
            let min = g.spot_price.map_or(0.0, |m| m.0 as f64 / 1e6);
            if bid < min {
                return gql_error(&format!("Your bid is below the minimum bid price ({min})"));
            }
            bid * gpus as f64
        } else {
            g.price.0 as f64 / 1e6 * gpus as f64
        };
        if st.sold_out.iter().any(|s| s == &g.gpu_type_id) {
            return gql_error(
                "There are no longer any instances available with the requested specifications. Please refresh and try again.",
            );
        }
        st.n += 1;
        let id = format!("50qynxzilsx{:03}", st.n);
        let port = 40000 + st.n as u16;
        st.pods.push(Pod {
            m: Machine {
                id: id.clone(),
                name: input["name"].as_str().unwrap_or_default().into(),
                region: String::new(),
                instance_type: g.gpu_type_id.clone(),
                status: "RUNNING".into(),
                since: Instant::now(),
                ip: None,
            },
            gpus,
            cost,
            spot,
            public_key: key.into(),
            last_change: "Rented by User".into(),
            port,
        });
        let field = if spot {
            "podRentInterruptable"
        } else {
            "podFindAndDeployOnDemand"
        };
        return (200, json!({"data": {field: {"id": id, "costPerHr": cost}}}));
    }
    let pod_id = input["podId"].as_str().unwrap_or_default().to_string();
    let live = |p: &&mut Pod| p.m.id == pod_id && p.m.status != "TERMINATED";
    if q.contains("podTerminate") {
        let Some(p) = st.pods.iter_mut().find(|p| live(p)) else {
            return gql_error("pod not found");
        };
        p.m.status = "TERMINATED".into();
        st.pool.kill(&pod_id);
        return (200, json!({"data": {"podTerminate": null}}));
    }
    if q.contains("podStop") {
        let Some(p) = st.pods.iter_mut().find(|p| live(p)) else {
            return gql_error("pod not found");
        };
        p.m.status = "EXITED".into();
        p.last_change = "stopped".into();
        return (
            200,
            json!({"data": {"podStop": {"id": pod_id, "desiredStatus": "EXITED"}}}),
        );
    }
    if q.contains("podResume") || q.contains("podBidResume") {
        let Some(p) = st.pods.iter_mut().find(|p| live(p)) else {
            return gql_error("pod not found");
        };
        p.m.status = "RUNNING".into();
        p.last_change = "Resumed by User".into();
        let field = if q.contains("podBidResume") {
            "podBidResume"
        } else {
            "podResume"
        };
        return (
            200,
            json!({"data": {field: {"id": pod_id, "desiredStatus": "RUNNING"}}}),
        );
    }
    if q.contains("myself") {
        let pods: Vec<Value> = st
            .pods
            .iter()
            .filter(|p| p.m.status != "TERMINATED")
            .map(runpod_pod)
            .collect();
        return (200, json!({"data": {"myself": {"pods": pods}}}));
    }
    if q.contains("pod(") {
        let pod = st
            .pods
            .iter()
            .find(|p| p.m.id == pod_id && p.m.status != "TERMINATED")
            .map(runpod_pod);
        return (200, json!({"data": {"pod": pod}}));
    }
    gql_error("unknown operation")
}
