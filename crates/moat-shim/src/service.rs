//! The task service: containerd's task API v2 on moat-oci's commands.
//! One shim serves every container of a pod (or one container outside
//! Kubernetes); each keeps its first process and its exec'd processes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use crate::exits::exits;
use crate::runtime::Runtime;
use crate::stdio::{ChildStdio, ConsoleSocket, Io, Paths};

fn status(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

fn failed(e: impl Into<anyhow::Error>) -> ttrpc::Error {
    status(Code::FAILED_PRECONDITION, format!("{:#}", e.into()))
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// One process: a container's first, or an exec'd one.
struct Proc {
    pid: i32,
    paths: Paths,
    io: Arc<Mutex<Io>>,
    started: bool,
    exit: Option<(u32, Timestamp)>,
    /// An exec's runtime-spec process (JSON) until it starts.
    spec: Vec<u8>,
}

impl Proc {
    fn new(paths: Paths) -> Proc {
        Proc {
            pid: 0,
            paths,
            io: Arc::default(),
            started: false,
            exit: None,
            spec: Vec::new(),
        }
    }

    fn status(&self) -> Status {
        match (&self.exit, self.started) {
            (Some(_), _) => Status::STOPPED,
            (None, true) => Status::RUNNING,
            (None, false) => Status::CREATED,
        }
    }
}

struct Container {
    bundle: PathBuf,
    rt: Runtime,
    init: Proc,
    execs: HashMap<String, Proc>,
    /// The rootfs the shim mounted from containerd's snapshot.
    mounted: Option<PathBuf>,
}

struct Shared {
    containers: Mutex<HashMap<String, Container>>,
    changed: Condvar,
    publisher: RemotePublisher,
    namespace: String,
    base: PathBuf,
    exit: Arc<ExitSignal>,
}

pub struct Service {
    s: Arc<Shared>,
}

impl Service {
    pub fn new(
        publisher: RemotePublisher,
        namespace: &str,
        base: &Path,
        exit: Arc<ExitSignal>,
    ) -> Service {
        // Subscribe to exits before any child exists.
        let _ = exits();
        Service {
            s: Arc::new(Shared {
                containers: Mutex::default(),
                changed: Condvar::new(),
                publisher,
                namespace: namespace.to_string(),
                base: base.to_path_buf(),
                exit,
            }),
        }
    }
}

impl Shared {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = containerd_shim::Context::default();
        if let Err(e) = self.publisher.publish(ctx, topic, &self.namespace, event) {
            log::warn!("publishing {topic}: {e}");
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap()
    }
}

fn container<'a>(
    map: &'a mut HashMap<String, Container>,
    id: &str,
) -> TtrpcResult<&'a mut Container> {
    map.get_mut(id)
        .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id:?} does not exist")))
}

fn process<'a>(c: &'a mut Container, id: &str, exec_id: &str) -> TtrpcResult<&'a mut Proc> {
    if exec_id.is_empty() {
        return Ok(&mut c.init);
    }
    c.execs.get_mut(exec_id).ok_or_else(|| {
        status(
            Code::NOT_FOUND,
            format!("process {exec_id:?} of container {id:?} does not exist"),
        )
    })
}

/// Starts a moat-oci command that makes a process (`create`, `exec`) with
/// its stdio; returns the process's pid (from `pid_file`) and its Io.
fn make_process(
    rt: &Runtime,
    cmd: &str,
    id: &str,
    paths: &Paths,
    mut args: Vec<OsString>,
    pid_file: &Path,
) -> anyhow::Result<(i32, Io)> {
    let _ = std::fs::remove_file(pid_file);
    args.splice(0..0, [OsString::from("--pid-file"), pid_file.into()]);
    let io = if paths.terminal {
        let console = ConsoleSocket::new()?;
        args.splice(
            0..0,
            [OsString::from("--console-socket"), console.path().into()],
        );
        let running = rt.spawn(cmd, id, &args, ChildStdio::default())?;
        let master = console.receive(|| running.ended());
        running.finish()?;
        Io::terminal(paths, master?)?
    } else {
        let (io, child) = Io::plain(paths)?;
        rt.run(cmd, id, &args, child)?;
        io
    };
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| anyhow::anyhow!("reading the pid file {}: {e}", pid_file.display()))?;
    let pid = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("pid file {} holds {text:?}", pid_file.display()))?;
    Ok((pid, io))
}

/// Waits for `pid` in the background; records its exit and tells
/// containerd (TaskExit) once its output is drained.
fn watch(s: &Arc<Shared>, id: &str, exec_id: &str, pid: i32, io: Arc<Mutex<Io>>) {
    let (s, id, exec_id) = (Arc::clone(s), id.to_string(), exec_id.to_string());
    std::thread::spawn(move || {
        let code = exits().wait(pid) as u32;
        io.lock().unwrap().drain(Duration::from_secs(2));
        let at = now();
        {
            let mut map = s.lock();
            if let Some(c) = map.get_mut(&id) {
                if let Ok(p) = process(c, &id, &exec_id) {
                    if p.pid == pid {
                        p.exit = Some((code, at.clone()));
                    }
                }
            }
        }
        s.changed.notify_all();
        let ev = TaskExit {
            container_id: id.clone(),
            id: if exec_id.is_empty() { id } else { exec_id },
            pid: pid as u32,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        s.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev));
    });
}

/// Mounts containerd's snapshot mounts on `bundle/rootfs`.
fn mount_rootfs(bundle: &Path, req: &CreateTaskRequest) -> anyhow::Result<Option<PathBuf>> {
    if req.rootfs.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| anyhow::anyhow!("making {}: {e}", target.display()))?;
    for m in &req.rootfs {
        containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()),
            Some(m.source.as_str()),
            &m.options,
            &target,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "mounting the {} rootfs on {}: {e}",
                m.type_,
                target.display()
            )
        })?;
    }
    Ok(Some(target))
}

pub fn unmount(target: &Path) {
    let _ = rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH);
}

impl Service {
    fn create_task(&self, req: &CreateTaskRequest) -> anyhow::Result<i32> {
        let bundle = PathBuf::from(&req.bundle);
        let mut rt = Runtime::new(&self.s.base, &self.s.namespace);
        if let Some(o) = req.options.as_ref() {
            rt.config = crate::options::config_path(&o.type_url, &o.value)?;
        }
        let paths = Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mounted = mount_rootfs(&bundle, req)?;
        let made = (|| {
            let work = rt.work_dir(&req.id)?;
            let args = vec![
                OsString::from("--bundle"),
                bundle.clone().into(),
                req.id.clone().into(),
            ];
            let pid_file = work.join("init.pid");
            make_process(&rt, "create", &req.id, &paths, args, &pid_file)
        })();
        let (pid, io) = match made {
            Ok(v) => v,
            Err(e) => {
                if let Some(m) = &mounted {
                    unmount(m);
                }
                rt.forget(&req.id);
                return Err(e);
            }
        };
        let mut init = Proc::new(paths);
        init.pid = pid;
        init.io = Arc::new(Mutex::new(io));
        let io = Arc::clone(&init.io);
        self.s.lock().insert(
            req.id.clone(),
            Container {
                bundle,
                rt,
                init,
                execs: HashMap::new(),
                mounted,
            },
        );
        watch(&self.s, &req.id, "", pid, io);
        // TaskOOM: kills by the kernel's OOM killer in the container's
        // memory group (the group of its first process).
        let shared = Arc::clone(&self.s);
        let id = req.id.clone();
        crate::oom::watch(pid, move || {
            let ev = TaskOOM {
                container_id: id.clone(),
                ..Default::default()
            };
            shared.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev));
        });
        Ok(pid)
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> anyhow::Result<i32> {
        let (rt, paths, spec) = {
            let mut map = self.s.lock();
            let c = container(&mut map, id)?;
            let rt = c.rt.clone();
            let p = process(c, id, exec_id)?;
            if p.started {
                anyhow::bail!("process {exec_id:?} of container {id:?} was already started");
            }
            (rt, p.paths.clone(), std::mem::take(&mut p.spec))
        };
        let work = rt.work_dir(id)?;
        let spec_file = work.join(format!("exec-{exec_id}.json"));
        std::fs::write(&spec_file, &spec)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", spec_file.display()))?;
        let args = vec![
            OsString::from("--process"),
            spec_file.clone().into(),
            "--detach".into(),
            id.into(),
        ];
        let pid_file = work.join(format!("exec-{exec_id}.pid"));
        let r = make_process(&rt, "exec", id, &paths, args, &pid_file);
        let _ = std::fs::remove_file(&spec_file);
        let (pid, io) = r?;
        let io = Arc::new(Mutex::new(io));
        {
            let mut map = self.s.lock();
            let c = container(&mut map, id)?;
            let p = process(c, id, exec_id)?;
            p.pid = pid;
            p.started = true;
            p.io = Arc::clone(&io);
        }
        watch(&self.s, id, exec_id, pid, io);
        Ok(pid)
    }
}

impl Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        if self.s.lock().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {:?} already exists", req.id),
            ));
        }
        let pid = self.create_task(&req).map_err(failed)?;
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid: pid as u32,
            ..Default::default()
        };
        self.s
            .publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        if !req.exec_id.is_empty() {
            let pid = self.start_exec(&req.id, &req.exec_id).map_err(failed)?;
            let ev = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            };
            self.s
                .publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
            return Ok(StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        let (rt, pid) = {
            let mut map = self.s.lock();
            let c = container(&mut map, &req.id)?;
            (c.rt.clone(), c.init.pid)
        };
        rt.run(
            "start",
            &req.id,
            &[req.id.clone().into()],
            ChildStdio::default(),
        )
        .map_err(failed)?;
        if let Some(c) = self.s.lock().get_mut(&req.id) {
            c.init.started = true;
        }
        let ev = TaskStart {
            container_id: req.id.clone(),
            pid: pid as u32,
            ..Default::default()
        };
        self.s.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let mut map = self.s.lock();
        let c = container(&mut map, &req.id)?;
        let bundle = c.bundle.display().to_string();
        let root = c.rt.root.clone();
        let p = process(c, &req.id, &req.exec_id)?;
        let mut st = p.status();
        // A running container may be frozen (Pause): moat-oci's record says.
        if req.exec_id.is_empty() && st == Status::RUNNING {
            if let Ok(rec) = moat_oci::state::load(&root, &req.id) {
                if moat_oci::state::status(&rec) == "paused" {
                    st = Status::PAUSED;
                }
            }
        }
        let (exit_status, exited_at) = match &p.exit {
            Some((code, at)) => (*code, Some(at.clone()).into()),
            None => (0, None.into()),
        };
        Ok(StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid as u32,
            status: st.into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let rt = {
            let mut map = self.s.lock();
            container(&mut map, &req.id)?.rt.clone()
        };
        let rec = moat_oci::state::load(&rt.root, &req.id).map_err(failed)?;
        let processes = rec
            .cgroup
            .pids()
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let rt = container(&mut self.s.lock(), &req.id)?.rt.clone();
        rt.run(
            "pause",
            &req.id,
            &[req.id.clone().into()],
            ChildStdio::default(),
        )
        .map_err(failed)?;
        let ev = TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.s
            .publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let rt = container(&mut self.s.lock(), &req.id)?.rt.clone();
        rt.run(
            "resume",
            &req.id,
            &[req.id.clone().into()],
            ChildStdio::default(),
        )
        .map_err(failed)?;
        let ev = TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        };
        self.s
            .publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let (rt, pid, exited) = {
            let mut map = self.s.lock();
            let c = container(&mut map, &req.id)?;
            let rt = c.rt.clone();
            let p = process(c, &req.id, &req.exec_id)?;
            (rt, p.pid, p.exit.is_some())
        };
        if exited || pid <= 0 {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        if req.exec_id.is_empty() {
            let mut args: Vec<OsString> = Vec::new();
            if req.all {
                args.push("--all".into());
            }
            args.push(req.id.clone().into());
            args.push(req.signal.to_string().into());
            rt.run("kill", &req.id, &args, ChildStdio::default())
                .map_err(failed)?;
            return Ok(Empty::new());
        }
        let p =
            rustix::process::Pid::from_raw(pid).ok_or_else(|| failed(anyhow::anyhow!("no pid")))?;
        let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
            .map_err(|_| status(Code::NOT_FOUND, "process already finished"))?;
        let sig = rustix::process::Signal::from_named_raw(req.signal as i32).ok_or_else(|| {
            status(
                Code::INVALID_ARGUMENT,
                format!("signal {} cannot be sent", req.signal),
            )
        })?;
        rustix::process::pidfd_send_signal(&fd, sig)
            .map_err(|e| failed(anyhow::anyhow!("signalling process {:?}: {e}", req.exec_id)))?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        {
            let mut map = self.s.lock();
            let c = container(&mut map, &req.id)?;
            if c.init.exit.is_some() {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "container {:?} has stopped: exec needs a running container",
                        req.id
                    ),
                ));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!(
                        "process {:?} of container {:?} already exists",
                        req.exec_id, req.id
                    ),
                ));
            }
            let mut p = Proc::new(Paths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.spec = req
                .spec
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            c.execs.insert(req.exec_id.clone(), p);
        }
        let ev = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.s
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let io = {
            let mut map = self.s.lock();
            let c = container(&mut map, &req.id)?;
            Arc::clone(&process(c, &req.id, &req.exec_id)?.io)
        };
        io.lock()
            .unwrap()
            .resize(req.width, req.height)
            .map_err(|e| failed(anyhow::anyhow!("resizing the terminal: {e}")))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let io = {
            let mut map = self.s.lock();
            let c = container(&mut map, &req.id)?;
            Arc::clone(&process(c, &req.id, &req.exec_id)?.io)
        };
        if req.stdin {
            io.lock().unwrap().close_stdin();
        }
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut map = self.s.lock();
        loop {
            let c = container(&mut map, &req.id)?;
            let p = process(c, &req.id, &req.exec_id)?;
            if let Some((code, at)) = &p.exit {
                return Ok(WaitResponse {
                    exit_status: *code,
                    exited_at: Some(at.clone()).into(),
                    ..Default::default()
                });
            }
            map = self.s.changed.wait(map).unwrap();
        }
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut map = self.s.lock();
            let c = container(&mut map, &req.id)?;
            let p = process(c, &req.id, &req.exec_id)?;
            if p.started && p.exit.is_none() {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("process {:?} is running: kill it first", req.exec_id),
                ));
            }
            let (code, at) = p.exit.clone().unwrap_or((0, now()));
            let pid = p.pid;
            c.execs.remove(&req.exec_id);
            return Ok(DeleteResponse {
                pid: pid as u32,
                exit_status: code,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        let (rt, pid) = {
            let mut map = self.s.lock();
            let c = container(&mut map, &req.id)?;
            if c.init.started && c.init.exit.is_none() {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {:?} is running: kill it first", req.id),
                ));
            }
            (c.rt.clone(), c.init.pid)
        };
        let args = [OsString::from("--force"), req.id.clone().into()];
        rt.run("delete", &req.id, &args, ChildStdio::default())
            .map_err(failed)?;
        // A created container's first process was killed: wait for its exit.
        let mut map = self.s.lock();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while map.get(&req.id).is_some_and(|c| c.init.exit.is_none()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            map = self.s.changed.wait_timeout(map, left).unwrap().0;
        }
        let c = map.remove(&req.id).ok_or_else(|| {
            status(
                Code::NOT_FOUND,
                format!("container {:?} does not exist", req.id),
            )
        })?;
        drop(map);
        if let Some(m) = &c.mounted {
            unmount(m);
        }
        rt.forget(&req.id);
        let (code, at) = c.init.exit.clone().unwrap_or((137, now()));
        let ev = TaskDelete {
            container_id: req.id.clone(),
            pid: pid as u32,
            exit_status: code,
            exited_at: Some(at.clone()).into(),
            id: req.id.clone(),
            ..Default::default()
        };
        self.s
            .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let pid = {
            let mut map = self.s.lock();
            container(&mut map, &req.id)?.init.pid
        };
        let cg = containerd_shim::cgroup::get_cgroup(pid as u32).map_err(failed)?;
        let metrics = containerd_shim::cgroup::collect_metrics(&cg).map_err(failed)?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics)).map_err(failed)?;
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.s.lock().get(&req.id).map_or(0, |c| c.init.pid as u32);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.s.lock().is_empty() {
            self.s.exit.signal();
        }
        Ok(Empty::new())
    }
}
