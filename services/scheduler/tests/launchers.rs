//! Worker launchers against real things: the process launcher with real child processes (a
//! `/bin/sh` stand-in for `twinbridge worker` that records the SIGTERM it gets), the ECS launcher
//! against a moto server, the Kubernetes launcher against an in-test API server that records the
//! requests it receives. The end-to-end run with real `twinbridge worker` processes is in
//! `services/twinbridge/tests/launcher_process.rs`.
#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{Compatibility, ContainerDefinition, NetworkMode, TaskField};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use twinbridge_config::{
    Config, EcsLauncherConfig, KubernetesLauncherConfig, Secret, WorkloadKind,
};
use twinbridge_scheduler::launcher::ecs::{EcsLauncher, STARTED_BY};
use twinbridge_scheduler::launcher::kubernetes::KubernetesLauncher;
use twinbridge_scheduler::launcher::process::{ProcessLauncher, ProcessSettings};
use twinbridge_scheduler::launcher::{Launcher, LauncherError};
use twinbridge_test_support::{free_port, MotoServer};

// ---------------------------------------------------------------- process

/// A worker stand-in: on SIGTERM it writes `term` to `<dir>/<its listen address>` and exits 0.
const GRACEFUL: &str = r#"trap 'kill $! 2>/dev/null; echo term > "$MARKS/$TWINBRIDGE_WORKER__LISTEN"; exit 0' TERM
sleep 300 &
wait"#;

/// A worker stand-in that ignores SIGTERM.
const STUBBORN: &str = "trap '' TERM; exec sleep 300";

fn process_launcher(
    script: &str,
    marks: &Path,
    first_port: u16,
    grace: Duration,
) -> ProcessLauncher {
    let mut config = Config::default();
    let p = &mut config.scheduler.launcher.process;
    p.program = Some(PathBuf::from("/bin/sh"));
    p.args = vec!["-c".into(), script.into()];
    p.env.insert("MARKS".into(), marks.display().to_string());
    p.first_port = first_port;
    p.stop_grace = grace;
    ProcessLauncher::new(ProcessSettings::from_config(&config).unwrap())
}

fn alive(pid: u32) -> bool {
    // A reaped process is gone from /proc; a zombie is not alive either.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn wait_gone(pid: u32, within: Duration) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < within, "pid {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn process_launcher_restarts_dead_workers_stops_surplus_and_shuts_down_gracefully() {
    let marks = tempfile::tempdir().unwrap();
    let base = free_port().min(60_000);
    let launcher = process_launcher(GRACEFUL, marks.path(), base, Duration::from_secs(5));
    assert_eq!(launcher.kind(), "process");

    // Three workers start, each on its own port.
    let s = launcher.reconcile(3).await.unwrap();
    assert_eq!((s.desired, s.running, s.starting, s.stopped), (3, 0, 3, 0));
    let pids: Vec<u32> = launcher
        .pids()
        .await
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(pids.len(), 3);
    for pid in &pids {
        assert!(alive(*pid), "worker {pid} is not running");
    }
    // Let the shells install their trap.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A round with nothing to do changes nothing.
    let s = launcher.reconcile(3).await.unwrap();
    assert_eq!((s.running, s.starting, s.stopped), (3, 0, 0));
    assert_eq!(
        launcher.pids().await,
        pids.iter().map(|p| Some(*p)).collect::<Vec<_>>()
    );

    // kill -9 the worker of slot 1: the next round restarts that slot with a new process.
    kill(Pid::from_raw(pids[1] as i32), Signal::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = launcher.reconcile(3).await.unwrap();
    assert_eq!((s.running, s.starting, s.stopped), (2, 1, 1));
    let now = launcher.pids().await;
    assert_eq!(now[0], Some(pids[0]));
    assert_eq!(now[2], Some(pids[2]));
    let restarted = now[1].unwrap();
    assert_ne!(restarted, pids[1]);
    assert!(alive(restarted));
    assert!(!alive(pids[1]));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Shrinking to one stops the surplus (slots 1 and 2) with SIGTERM: they exit on their own.
    let s = launcher.reconcile(1).await.unwrap();
    assert_eq!((s.running, s.starting, s.stopped), (1, 0, 2));
    for pid in [restarted, pids[2]] {
        wait_gone(pid, Duration::from_secs(2)).await;
    }
    for slot in [1u16, 2] {
        let mark = marks.path().join(format!("127.0.0.1:{}", base + slot));
        assert_eq!(
            std::fs::read_to_string(&mark).unwrap_or_default().trim(),
            "term",
            "slot {slot} was not stopped with SIGTERM ({})",
            mark.display()
        );
    }
    assert!(alive(pids[0]));
    assert!(!marks.path().join(format!("127.0.0.1:{base}")).exists());

    // Shutdown: the last worker gets SIGTERM too.
    launcher.shutdown().await;
    wait_gone(pids[0], Duration::from_secs(2)).await;
    assert_eq!(
        std::fs::read_to_string(marks.path().join(format!("127.0.0.1:{base}")))
            .unwrap()
            .trim(),
        "term"
    );
    assert!(launcher.pids().await.is_empty());
}

#[tokio::test]
async fn process_launcher_kills_a_worker_that_ignores_sigterm_after_the_grace() {
    let marks = tempfile::tempdir().unwrap();
    let launcher = process_launcher(STUBBORN, marks.path(), 0, Duration::from_millis(500));
    launcher.reconcile(1).await.unwrap();
    let pid = launcher.pids().await[0].unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    launcher.shutdown().await;
    let took = start.elapsed();
    assert!(!alive(pid), "the stubborn worker survived");
    assert!(
        took >= Duration::from_millis(450),
        "killed before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}

#[tokio::test]
async fn process_launcher_names_a_program_it_cannot_start() {
    let mut config = Config::default();
    config.scheduler.launcher.process.program = Some(PathBuf::from("/nonexistent/twinbridge"));
    let launcher = ProcessLauncher::new(ProcessSettings::from_config(&config).unwrap());
    let e = launcher.reconcile(1).await.unwrap_err();
    assert!(matches!(e, LauncherError::Spawn { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/twinbridge"), "{e}");
}

// ---------------------------------------------------------------- in the scheduler

/// A worker stand-in that records its start and its SIGTERM in `$MARKS`.
const RECORDING: &str = r#"echo up > "$MARKS/started-$$"
trap 'kill $! 2>/dev/null; echo term > "$MARKS/term-$$"; exit 0' TERM
sleep 300 &
wait"#;

fn marked(dir: &Path, prefix: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix(prefix)?.parse().ok()
        })
        .collect();
    pids.sort_unstable();
    pids
}

async fn fleet_launcher(admin: u16) -> Value {
    let fleet: Value = reqwest::get(format!("http://127.0.0.1:{admin}/v1/fleet"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    fleet["launcher"].clone()
}

#[tokio::test]
async fn only_the_leader_launches_and_a_stopping_leader_stops_its_workers() {
    let redis = twinbridge_test_support::RedisServer::start().await.unwrap();
    let options = twinbridge_store::redis_store::RedisStoreOptions {
        urls: vec![redis.url()],
        prefix: twinbridge_test_support::unique_prefix("launch"),
        ..Default::default()
    };
    let sim = twinbridge_platform_sim::spawn(twinbridge_platform_sim::SimOptions {
        generate: 5,
        ..twinbridge_platform_sim::SimOptions::for_tests()
    })
    .await
    .unwrap();
    let replica = |marks: &Path, shutdown: tokio_util::sync::CancellationToken| {
        let mut config = Config::default();
        config.platform.url = sim.url();
        config.platform.app_key = Some(Secret::new(sim.app_key()));
        let admin = free_port();
        config.scheduler.listen = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
        config.scheduler.discovery_interval = Duration::from_secs(3600);
        let l = &mut config.scheduler.launcher;
        l.min_workers = 2;
        l.interval = Duration::from_millis(200);
        l.process.program = Some(PathBuf::from("/bin/sh"));
        l.process.args = vec!["-c".into(), RECORDING.into()];
        l.process
            .env
            .insert("MARKS".into(), marks.display().to_string());
        l.process.stop_grace = Duration::from_secs(3);
        let task = tokio::spawn(twinbridge_scheduler::run(
            config,
            twinbridge_store::StoreOptions::Redis(options.clone()),
            shutdown,
        ));
        (admin, task)
    };
    let wait_marks = |dir: PathBuf, prefix: &'static str, n: usize| async move {
        let start = Instant::now();
        while marked(&dir, prefix).len() < n {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{prefix}: {:?}",
                marked(&dir, prefix)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        marked(&dir, prefix)
    };

    // A leads and starts min_workers = 2 workers.
    let (marks_a, marks_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let stop_a = tokio_util::sync::CancellationToken::new();
    let (admin_a, a) = replica(marks_a.path(), stop_a.clone());
    let started = wait_marks(marks_a.path().to_path_buf(), "started-", 2).await;
    assert_eq!(started.len(), 2);

    // B follows: it launches nothing.
    let stop_b = tokio_util::sync::CancellationToken::new();
    let (admin_b, b) = replica(marks_b.path(), stop_b.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(marked(marks_b.path(), "started-").is_empty());
    assert_eq!(
        marked(marks_a.path(), "started-"),
        started,
        "A started no more"
    );
    let la = fleet_launcher(admin_a).await;
    assert_eq!(la["kind"], "process", "{la}");
    assert_eq!(la["leading"], true, "{la}");
    assert_eq!(la["last"]["desired"], 2, "{la}");
    assert_eq!(la["last"]["running"], 2, "{la}");
    let lb = fleet_launcher(admin_b).await;
    assert_eq!(lb["leading"], false, "{lb}");
    assert_eq!(lb["last"], Value::Null, "{lb}");

    // A stops: its workers get SIGTERM and exit; B takes the lead and starts its own.
    stop_a.cancel();
    tokio::time::timeout(Duration::from_secs(15), a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(marked(marks_a.path(), "term-"), started);
    for pid in &started {
        assert!(!alive(*pid), "worker {pid} outlived its scheduler");
    }
    let taken_over = wait_marks(marks_b.path().to_path_buf(), "started-", 2).await;
    stop_b.cancel();
    tokio::time::timeout(Duration::from_secs(15), b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(marked(marks_b.path(), "term-"), taken_over);
}

// ---------------------------------------------------------------- ECS

const CLUSTER: &str = "tb-fleet";

/// The network of the Fargate tasks (moto checks that subnets exist).
struct Network {
    subnet: String,
    security_group: String,
}

/// One EC2 query-protocol call to moto; the value of the first `<field>` of the answer.
async fn ec2(moto: &MotoServer, query: &str, field: &str) -> String {
    let body = reqwest::Client::new()
        .post(moto.endpoint())
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/ec2/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("{query}&Version=2016-11-15"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open = format!("<{field}>");
    let start = body.find(&open).map(|i| i + open.len());
    let value = start.and_then(|s| body[s..].split_once('<').map(|(v, _)| v.to_string()));
    value.unwrap_or_else(|| panic!("no {field} in {body}"))
}

async fn network(moto: &MotoServer) -> Network {
    let vpc = ec2(moto, "Action=CreateVpc&CidrBlock=10.0.0.0%2F16", "vpcId").await;
    // moto's awsvpc tasks need DNS hostnames in their VPC.
    let dns = format!("Action=ModifyVpcAttribute&VpcId={vpc}&EnableDnsHostnames.Value=true");
    assert_eq!(ec2(moto, &dns, "requestId").await, "request-id");
    Network {
        subnet: ec2(
            moto,
            &format!("Action=CreateSubnet&VpcId={vpc}&CidrBlock=10.0.1.0%2F24"),
            "subnetId",
        )
        .await,
        security_group: ec2(
            moto,
            &format!(
                "Action=CreateSecurityGroup&VpcId={vpc}&GroupName=tb-worker&GroupDescription=tb"
            ),
            "groupId",
        )
        .await,
    }
}

fn ecs_config(moto: &MotoServer, net: &Network, cluster: &str) -> EcsLauncherConfig {
    EcsLauncherConfig {
        cluster: cluster.into(),
        task_definition: "tb-worker".into(),
        container_name: "worker".into(),
        subnets: vec![net.subnet.clone()],
        security_groups: vec![net.security_group.clone()],
        assign_public_ip: false,
        environment: BTreeMap::from([
            (
                "TWINBRIDGE_STORE__PREFIX".to_string(),
                "fleet-a".to_string(),
            ),
            ("TWINBRIDGE_LOG__FORMAT".to_string(), "json".to_string()),
        ]),
        tags: BTreeMap::from([("fleet".to_string(), "a".to_string())]),
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.endpoint()),
        access_key_id: Some("test".into()),
        secret_access_key: Some(Secret::new("test")),
        ..EcsLauncherConfig::default()
    }
}

async fn ecs_client(moto: &MotoServer) -> aws_sdk_ecs::Client {
    let shared =
        twinbridge_aws::sdk_config(&twinbridge_aws::AwsAccess::stand_in(moto.endpoint())).await;
    aws_sdk_ecs::Client::new(&shared)
}

/// A moto with a network, a cluster and a Fargate task definition whose tasks stay where they are.
async fn ecs_stand_in() -> (MotoServer, Network, aws_sdk_ecs::Client) {
    let moto = MotoServer::start().await.unwrap();
    let (status, body) = moto
        .call(
            "ecs",
            "POST",
            "/moto-api/state-manager/set-transition",
            r#"{"model_name":"ecs::task","transition":{"progression":"manual","times":1000000}}"#,
        )
        .await
        .unwrap();
    assert!(status < 300, "{status} {body}");
    let net = network(&moto).await;
    let client = ecs_client(&moto).await;
    client
        .create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .unwrap();
    client
        .register_task_definition()
        .family("tb-worker")
        .requires_compatibilities(Compatibility::Fargate)
        .network_mode(NetworkMode::Awsvpc)
        .cpu("256")
        .memory("512")
        .container_definitions(
            ContainerDefinition::builder()
                .name("worker")
                .image("twinbridge:test")
                .memory(512)
                .command("worker")
                .build(),
        )
        .send()
        .await
        .unwrap();
    (moto, net, client)
}

async fn our_tasks(client: &aws_sdk_ecs::Client) -> Vec<aws_sdk_ecs::types::Task> {
    let arns = client
        .list_tasks()
        .cluster(CLUSTER)
        .started_by(STARTED_BY)
        .send()
        .await
        .unwrap()
        .task_arns()
        .to_vec();
    if arns.is_empty() {
        return Vec::new();
    }
    client
        .describe_tasks()
        .cluster(CLUSTER)
        .set_tasks(Some(arns))
        .include(TaskField::Tags)
        .send()
        .await
        .unwrap()
        .tasks()
        .to_vec()
}

fn is_live(t: &aws_sdk_ecs::types::Task) -> bool {
    t.desired_status() == Some("RUNNING") && t.last_status() != Some("STOPPED")
}

#[tokio::test]
async fn ecs_launcher_runs_and_stops_fargate_tasks_on_moto() {
    let (moto, net, client) = ecs_stand_in().await;
    let launcher = EcsLauncher::new(&ecs_config(&moto, &net, CLUSTER)).await;
    assert_eq!(launcher.kind(), "ecs");

    let s = launcher.reconcile(3).await.unwrap();
    assert_eq!((s.desired, s.starting + s.running, s.stopped), (3, 3, 0));
    let tasks = our_tasks(&client).await;
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    for t in &tasks {
        assert!(is_live(t), "{t:?}");
        assert_eq!(t.started_by(), Some(STARTED_BY));
        assert!(
            t.task_definition_arn()
                .unwrap()
                .contains("task-definition/tb-worker:1"),
            "{t:?}"
        );
        let overrides = t.overrides().unwrap().container_overrides();
        assert_eq!(overrides.len(), 1, "{t:?}");
        assert_eq!(overrides[0].name(), Some("worker"));
        let env: BTreeMap<&str, &str> = overrides[0]
            .environment()
            .iter()
            .map(|kv| (kv.name().unwrap(), kv.value().unwrap()))
            .collect();
        assert_eq!(env.get("TWINBRIDGE_STORE__PREFIX"), Some(&"fleet-a"));
        assert_eq!(env.get("TWINBRIDGE_LOG__FORMAT"), Some(&"json"));
        let tags: Vec<(&str, &str)> = t
            .tags()
            .iter()
            .map(|tag| (tag.key().unwrap(), tag.value().unwrap()))
            .collect();
        assert!(tags.contains(&("fleet", "a")), "{tags:?}");
    }

    // Nothing to do: no new tasks.
    let s = launcher.reconcile(3).await.unwrap();
    assert_eq!((s.starting + s.running, s.stopped), (3, 0));
    assert_eq!(our_tasks(&client).await.len(), 3);

    // Down to one: two are stopped with a reason, one stays.
    let s = launcher.reconcile(1).await.unwrap();
    assert_eq!((s.starting + s.running, s.stopped), (1, 2));
    let tasks = our_tasks(&client).await;
    let (live, stopped): (Vec<_>, Vec<_>) = tasks.iter().partition(|t| is_live(t));
    assert_eq!((live.len(), stopped.len()), (1, 2), "{tasks:?}");
    for t in &stopped {
        assert!(
            t.stopped_reason()
                .unwrap_or_default()
                .contains("surplus worker"),
            "{t:?}"
        );
        assert!(
            t.created_at() >= live[0].created_at(),
            "the newest are stopped first"
        );
    }

    // A task that dies (stopped by someone else) is replaced in the next round.
    client
        .stop_task()
        .cluster(CLUSTER)
        .task(live[0].task_arn().unwrap())
        .reason("test: the task crashed")
        .send()
        .await
        .unwrap();
    let s = launcher.reconcile(1).await.unwrap();
    assert_eq!((s.starting + s.running, s.stopped), (1, 0));
    let live: Vec<_> = our_tasks(&client)
        .await
        .into_iter()
        .filter(is_live)
        .collect();
    assert_eq!(live.len(), 1);

    // Tasks of another family or not started by the scheduler are not counted.
    client
        .run_task()
        .cluster(CLUSTER)
        .task_definition("tb-worker")
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .started_by("someone-else")
        .network_configuration(
            aws_sdk_ecs::types::NetworkConfiguration::builder()
                .awsvpc_configuration(
                    aws_sdk_ecs::types::AwsVpcConfiguration::builder()
                        .subnets(&net.subnet)
                        .security_groups(&net.security_group)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let s = launcher.reconcile(1).await.unwrap();
    assert_eq!((s.starting + s.running, s.stopped), (1, 0));
}

#[tokio::test]
async fn ecs_launcher_errors_name_the_operation_and_the_cluster() {
    let (moto, net, _client) = ecs_stand_in().await;
    let launcher = EcsLauncher::new(&ecs_config(&moto, &net, "no-such-cluster")).await;
    let e = launcher.reconcile(2).await.unwrap_err();
    assert!(matches!(e, LauncherError::Ecs { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("no-such-cluster"), "{text}");
    assert!(text.contains("ListTasks"), "{text}");
    assert!(
        text.contains("ClusterNotFoundException: Cluster not found"),
        "{text}"
    );

    // A task definition that does not exist fails RunTask with its reason.
    let mut c = ecs_config(&moto, &net, CLUSTER);
    c.task_definition = "no-such-family".into();
    let e = EcsLauncher::new(&c).await.reconcile(1).await.unwrap_err();
    assert!(e.to_string().contains("RunTask"), "{e}");
}

// ---------------------------------------------------------------- Kubernetes

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    content_type: Option<String>,
    body: Option<Value>,
}

#[derive(Default)]
struct ApiServer {
    replicas: Mutex<i64>,
    forbidden: Mutex<bool>,
    seen: Mutex<Vec<Seen>>,
}

fn scale_json(name: &str, ns: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "7"},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "selector": "app=twinbridge-worker"},
    })
}

/// A stand-in for the API server's `scale` subresource of `tb/workers` (StatefulSet and
/// Deployment), recording every request.
async fn api_server() -> (Arc<ApiServer>, String) {
    let state = Arc::new(ApiServer::default());
    let st = state.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let st = st.clone();
            async move {
                st.seen.lock().unwrap().push(Seen {
                    method: method.clone(),
                    path: uri.path().to_string(),
                    content_type: headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from),
                    body: serde_json::from_slice(&body).ok(),
                });
                if *st.forbidden.lock().unwrap() {
                    let status = json!({
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure",
                        "message": "statefulsets.apps \"workers\" is forbidden: User \"system:serviceaccount:tb:scheduler\" cannot get resource \"statefulsets/scale\"",
                        "reason": "Forbidden", "code": 403,
                    });
                    return (StatusCode::FORBIDDEN, axum::Json(status)).into_response();
                }
                let known = [
                    "/apis/apps/v1/namespaces/tb/statefulsets/workers/scale",
                    "/apis/apps/v1/namespaces/tb/deployments/workers/scale",
                ];
                if !known.contains(&uri.path()) {
                    return (StatusCode::NOT_FOUND, "not found").into_response();
                }
                if method == Method::PATCH {
                    let Some(n) = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|b| b["spec"]["replicas"].as_i64())
                    else {
                        return (StatusCode::UNPROCESSABLE_ENTITY, "bad patch").into_response();
                    };
                    *st.replicas.lock().unwrap() = n;
                }
                let n = *st.replicas.lock().unwrap();
                axum::Json(scale_json("workers", "tb", n)).into_response()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (state, url)
}

async fn kube_launcher(url: &str, workload: WorkloadKind) -> KubernetesLauncher {
    KubernetesLauncher::new(&KubernetesLauncherConfig {
        namespace: "tb".into(),
        workload,
        name: "workers".into(),
        api_url: Some(url.into()),
        ..KubernetesLauncherConfig::default()
    })
    .await
    .unwrap()
}

fn take(state: &ApiServer) -> Vec<Seen> {
    std::mem::take(&mut *state.seen.lock().unwrap())
}

#[tokio::test]
async fn kubernetes_launcher_patches_the_statefulset_scale_only_when_it_differs() {
    let (state, url) = api_server().await;
    *state.replicas.lock().unwrap() = 2;
    let launcher = kube_launcher(&url, WorkloadKind::StatefulSet).await;
    assert_eq!(launcher.kind(), "kubernetes");
    let path = "/apis/apps/v1/namespaces/tb/statefulsets/workers/scale";

    let s = launcher.reconcile(5).await.unwrap();
    assert_eq!((s.desired, s.running, s.starting, s.stopped), (5, 2, 3, 0));
    let seen = take(&state);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].method.clone(), seen[0].path.as_str()),
        (Method::GET, path)
    );
    assert_eq!(seen[1].method, Method::PATCH);
    assert_eq!(seen[1].path, path);
    assert_eq!(
        seen[1].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(seen[1].body, Some(json!({"spec": {"replicas": 5}})));
    assert_eq!(*state.replicas.lock().unwrap(), 5);

    // Already at the desired size: read, no patch.
    let s = launcher.reconcile(5).await.unwrap();
    assert_eq!((s.running, s.starting, s.stopped), (5, 0, 0));
    let seen = take(&state);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, Method::GET);

    // Scaling down.
    let s = launcher.reconcile(1).await.unwrap();
    assert_eq!((s.running, s.stopped), (1, 4));
    let seen = take(&state);
    assert_eq!(seen[1].body, Some(json!({"spec": {"replicas": 1}})));
}

#[tokio::test]
async fn kubernetes_launcher_scales_a_deployment() {
    let (state, url) = api_server().await;
    let launcher = kube_launcher(&url, WorkloadKind::Deployment).await;
    launcher.reconcile(3).await.unwrap();
    let seen = take(&state);
    let paths: Vec<(Method, &str)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.as_str()))
        .collect();
    let path = "/apis/apps/v1/namespaces/tb/deployments/workers/scale";
    assert_eq!(paths, vec![(Method::GET, path), (Method::PATCH, path)]);
    assert_eq!(seen[1].body, Some(json!({"spec": {"replicas": 3}})));
}

#[tokio::test]
async fn kubernetes_launcher_turns_a_403_into_a_clear_error() {
    let (state, url) = api_server().await;
    *state.forbidden.lock().unwrap() = true;
    let launcher = kube_launcher(&url, WorkloadKind::StatefulSet).await;
    let e = launcher.reconcile(2).await.unwrap_err();
    assert!(matches!(e, LauncherError::Kubernetes { .. }), "{e:?}");
    let text = e.to_string();
    for want in [
        "forbidden",
        "403",
        "tb/workers",
        "statefulsets/scale",
        "patch",
    ] {
        assert!(text.contains(want), "`{want}` missing in: {text}");
    }
    assert_eq!(take(&state).len(), 1, "no patch after a failed read");

    // An API server that is not there is an error too, not a hang.
    let gone = format!("http://127.0.0.1:{}", free_port());
    let e = kube_launcher(&gone, WorkloadKind::StatefulSet)
        .await
        .reconcile(1)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tb/workers"), "{e}");
}
